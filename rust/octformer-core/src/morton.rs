//! 3-D Morton ("shuffled") keys with the x bit most significant in each triple.

/// Spread the low 21 bits of `v` so that bit i lands on bit 3i.
#[inline(always)]
pub const fn spread3(v: u32) -> u64 {
    let mut x = (v as u64) & 0x1f_ffff;
    x = (x | (x << 32)) & 0x001f_0000_0000_ffff;
    x = (x | (x << 16)) & 0x001f_0000_ff00_00ff;
    x = (x | (x << 8)) & 0x100f_00f0_0f00_f00f;
    x = (x | (x << 4)) & 0x10c3_0c30_c30c_30c3;
    x = (x | (x << 2)) & 0x1249_2492_4924_9249;
    x
}

/// Inverse of [`spread3`]: gather every third bit starting at bit 0.
#[inline(always)]
pub fn compact3(v: u64) -> u32 {
    let mut x = v & 0x1249_2492_4924_9249;
    x = (x ^ (x >> 2)) & 0x10c3_0c30_c30c_30c3;
    x = (x ^ (x >> 4)) & 0x100f_00f0_0f00_f00f;
    x = (x ^ (x >> 8)) & 0x001f_0000_ff00_00ff;
    x = (x ^ (x >> 16)) & 0x001f_0000_0000_ffff;
    x = (x ^ (x >> 32)) & 0x1f_ffff;
    x as u32
}

const fn spread_table() -> [u64; 2048] {
    let mut t = [0u64; 2048];
    let mut i = 0;
    while i < 2048 {
        t[i] = spread3(i as u32);
        i += 1;
    }
    t
}

/// `spread3` of every 11-bit value: two lookups replace ~15 bit operations per axis.
static SPREAD11: [u64; 2048] = spread_table();

/// [`spread3`] by table lookup (v < 2^21).
#[inline(always)]
pub fn spread3_lut(v: u32) -> u64 {
    SPREAD11[(v & 2047) as usize] | (SPREAD11[((v >> 11) & 1023) as usize] << 33)
}

/// Morton key of integer cell coordinates (each < 2^21): x→3i+2, y→3i+1, z→3i.
#[inline(always)]
pub fn encode(x: u32, y: u32, z: u32) -> u64 {
    (spread3_lut(x) << 2) | (spread3_lut(y) << 1) | spread3_lut(z)
}

const fn spread_table10() -> [u32; 1024] {
    let mut t = [0u32; 1024];
    let mut i = 0;
    while i < 1024 {
        t[i] = spread3(i as u32) as u32;
        i += 1;
    }
    t
}

/// `spread3` of every 10-bit value (fits 30 bits).
static SPREAD10: [u32; 1024] = spread_table10();

/// [`encode`] for coordinates below 2^11 (depth ≤ 11): one lookup per axis, plus the 11th bit.
#[inline(always)]
pub fn encode_small(x: u32, y: u32, z: u32) -> u64 {
    let s = |v: u32| SPREAD10[(v & 1023) as usize] as u64 | (((v >> 10) & 1) as u64) << 30;
    (s(x) << 2) | (s(y) << 1) | s(z)
}

/// Cell coordinates of a Morton key.
#[inline(always)]
pub fn decode(key: u64) -> [u32; 3] {
    [compact3(key >> 2), compact3(key >> 1), compact3(key)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive(x: u32, y: u32, z: u32) -> u64 {
        let mut k = 0u64;
        for i in 0..21 {
            k |= (((x >> i) & 1) as u64) << (3 * i + 2);
            k |= (((y >> i) & 1) as u64) << (3 * i + 1);
            k |= (((z >> i) & 1) as u64) << (3 * i);
        }
        k
    }

    proptest! {
        #[test]
        fn encode_matches_bit_loop(x in 0u32..(1 << 21), y in 0u32..(1 << 21), z in 0u32..(1 << 21)) {
            prop_assert_eq!(encode(x, y, z), naive(x, y, z));
            prop_assert_eq!(decode(encode(x, y, z)), [x, y, z]);
            let (a, b, c) = (x & 2047, y & 2047, z & 2047);
            prop_assert_eq!(encode_small(a, b, c), naive(a, b, c));
        }
    }
}
