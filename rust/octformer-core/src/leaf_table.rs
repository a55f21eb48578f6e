//! Leaf keys to dense ids in first-seen order, by open addressing: the dedup step of
//! the octree build for clouds where many points share a leaf (a dense lidar sweep at
//! depth 10 averages ~18 points per leaf), replacing a sort of every point by a table
//! lookup per point and a sort of the distinct keys only.

/// Slot content meaning "free"; never a packed entry, whose top bit is always clear.
const EMPTY: u64 = u64::MAX;
/// Fibonacci hashing multiplier (2^64 / φ, odd).
const FIB: u64 = 0x9E37_79B9_7F4A_7C15;
/// Keys looked up per block (their hashes computed first so the probes can be prefetched).
pub(crate) const BLOCK_MAX: usize = 2048;
/// How many keys ahead a lookup's bucket is prefetched (8 to 32 timed the same).
const PREFETCH_AHEAD: usize = 16;
/// Slots per bucket: one 64-byte cache line, compared with the key all at once.
const LANES: usize = 8;
/// Fewest buckets a table starts with.
const MIN_BUCKETS: usize = 1 << 9;
/// Which bucket compare [`LeafTable::lookup_block_with`] is compiled with.
const PORTABLE: u8 = 0;
const AVX2: u8 = 1;
const AVX512: u8 = 2;

/// One cache line of slots.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Bucket([u64; LANES]);

/// Open-addressing map from a key of `key_bits` bits to its id (ids 0, 1, .. in the order
/// keys are first seen). Each slot packs `key << id_bits | id`. A key hashes to a bucket
/// (a cache line of [`LANES`] slots) and is stored in the first free slot from that
/// bucket's start on, so a lookup usually reads one line and compares all its slots at
/// once. The table stays at most half full.
pub(crate) struct LeafTable {
    buckets: Vec<Bucket>,
    /// Distinct keys, indexed by id.
    keys: Vec<u64>,
    id_bits: u32,
    /// 64 − log2(bucket count): the home bucket is the top bits of `key · FIB`.
    hash_shift: u32,
}

impl LeafTable {
    /// An empty table for keys of `key_bits` bits and ids below `2^id_bits`
    /// (`key_bits + id_bits` must be below 64), sized for about `expected` keys.
    pub(crate) fn new(key_bits: u32, id_bits: u32, expected: usize) -> Self {
        assert!(key_bits + id_bits < 64, "packed slot needs a clear top bit");
        let mut t = LeafTable {
            buckets: Vec::new(),
            keys: Vec::new(),
            id_bits,
            hash_shift: 64,
        };
        t.resize((4 * expected).div_ceil(LANES).max(MIN_BUCKETS));
        t
    }

    /// Distinct keys seen so far, indexed by id.
    pub(crate) fn keys(&self) -> &[u64] {
        &self.keys
    }

    /// Make room for `extra` more distinct keys at most half full, growing to a quarter
    /// full (so a growing table rehashes about half as often as by doubling).
    fn reserve(&mut self, extra: usize) {
        let keys = self.keys.len() + extra;
        if 2 * keys > LANES * self.buckets.len() {
            self.resize((4 * keys).div_ceil(LANES));
        }
        self.keys.reserve(extra);
    }

    /// Rebuild with at least `buckets` buckets (rounded up to a power of two), which must
    /// hold the keys at most a quarter full.
    fn resize(&mut self, buckets: usize) {
        let log = usize::BITS - (buckets.max(2) - 1).leading_zeros();
        self.buckets = vec![Bucket([EMPTY; LANES]); 1 << log];
        self.hash_shift = 64 - log;
        // the keys go back in id order through the lookups: each is new to the empty
        // table, so it gets its old id (and the quarter-full table needs no resize)
        let keys = std::mem::take(&mut self.keys);
        self.keys.reserve(keys.capacity());
        let mut ids = [0u32; BLOCK_MAX];
        for block in keys.chunks(BLOCK_MAX) {
            self.lookup_block(block, &mut ids[..block.len()]);
        }
    }

    /// The bucket `key` hashes to.
    #[inline(always)]
    fn home(&self, key: u64) -> usize {
        (key.wrapping_mul(FIB) >> self.hash_shift) as usize
    }

    /// Looking from bucket `b` on: (bucket, lane, true) where `key` is stored, else
    /// (bucket, lane, false) of the first free slot, where it belongs.
    #[inline(always)]
    fn probe(&self, key: u64, mut b: usize) -> (usize, usize, bool) {
        let mask = self.buckets.len() - 1;
        loop {
            for (l, &s) in self.buckets[b].0.iter().enumerate() {
                if s == EMPTY || s >> self.id_bits == key {
                    return (b, l, s != EMPTY);
                }
            }
            b = (b + 1) & mask;
        }
    }

    /// Store `key` with the next id in the free slot (`b`, `l`); its id.
    #[inline(always)]
    fn insert_at(&mut self, b: usize, l: usize, key: u64) -> u32 {
        let id = self.keys.len() as u64;
        debug_assert!(id < 1 << self.id_bits && self.buckets[b].0[l] == EMPTY);
        self.buckets[b].0[l] = (key << self.id_bits) | id;
        self.keys.push(key);
        id as u32
    }

    /// `ids[i]` = the id of `keys[i]`, inserting keys not seen before (`keys.len()` ≤
    /// [`BLOCK_MAX`], `ids.len() == keys.len()`).
    pub(crate) fn lookup_block(&mut self, keys: &[u64], ids: &mut [u32]) {
        assert!(keys.len() <= BLOCK_MAX && ids.len() == keys.len());
        self.reserve(keys.len());
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512dq") {
            // SAFETY: AVX-512F and DQ detected
            return unsafe { self.lookup_block_avx512(keys, ids) };
        }
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 detected
            return unsafe { self.lookup_block_avx2(keys, ids) };
        }
        self.lookup_block_with::<PORTABLE>(keys, ids)
    }

    /// [`Self::lookup_block_with`] compiled for AVX-512: a bucket is one register, compared
    /// into a mask in one instruction, and the hashes use 64-bit vector multiplies.
    ///
    /// # Safety
    /// AVX-512F and AVX-512DQ must be available.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512dq")]
    unsafe fn lookup_block_avx512(&mut self, keys: &[u64], ids: &mut [u32]) {
        self.lookup_block_with::<AVX512>(keys, ids)
    }

    /// [`Self::lookup_block_with`] compiled for AVX2, comparing a bucket in vector registers.
    ///
    /// # Safety
    /// AVX2 must be available.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn lookup_block_avx2(&mut self, keys: &[u64], ids: &mut [u32]) {
        self.lookup_block_with::<AVX2>(keys, ids)
    }

    /// The lookups, with room reserved; `SIMD` ([`PORTABLE`], [`AVX2`] or [`AVX512`]) only
    /// where the CPU has it.
    #[inline(always)]
    fn lookup_block_with<const SIMD: u8>(&mut self, keys: &[u64], ids: &mut [u32]) {
        let mut home = [0u32; BLOCK_MAX];
        for (h, &k) in home.iter_mut().zip(keys) {
            *h = self.home(k) as u32;
        }
        let nb = self.buckets.len();
        let id_bits = self.id_bits;
        let id_mask = (1u64 << id_bits) - 1;
        for (i, (&key, id)) in keys.iter().zip(ids.iter_mut()).enumerate() {
            if let Some(&h) = home.get(i + PREFETCH_AHEAD) {
                crate::mem::prefetch(self.buckets.as_ptr(), h as usize, nb);
            }
            let b = home[i] as usize;
            // SAFETY: b < 2^(64 − hash_shift) = buckets.len()
            let lanes = unsafe { &self.buckets.get_unchecked(b).0 };
            // SAFETY (both): SIMD is only AVX2 / AVX512 in the functions compiled for them
            let hit = match SIMD {
                AVX512 => unsafe { bucket_matches_avx512(lanes, key, id_bits) },
                AVX2 => unsafe { bucket_matches_avx2(lanes, key, id_bits) },
                _ => bucket_matches(lanes, key, id_bits),
            };
            // a hit in the home bucket is the common, well-predicted case
            *id = if hit != 0 {
                (lanes[hit.trailing_zeros() as usize] & id_mask) as u32
            } else {
                // SAFETY: as above
                let free = match SIMD {
                    AVX512 => unsafe { bucket_free_avx512(lanes) },
                    AVX2 => unsafe { bucket_free_avx2(lanes) },
                    _ => bucket_free(lanes),
                };
                if free != 0 {
                    // a free slot at home: the key was never stored (a key goes to the
                    // first free slot from its home bucket on, and slots are never freed)
                    self.insert_at(b, free.trailing_zeros() as usize, key)
                } else {
                    self.find_or_insert_cold(key, b)
                }
            };
        }
    }

    /// The id of `key`, not in its home bucket `b`, which is full: look on, inserting it
    /// (with the next id) at the first free slot if absent.
    #[cold]
    #[inline(never)]
    fn find_or_insert_cold(&mut self, key: u64, b: usize) -> u32 {
        match self.probe(key, b) {
            (b, l, true) => (self.buckets[b].0[l] & ((1u64 << self.id_bits) - 1)) as u32,
            (b, l, false) => self.insert_at(b, l, key),
        }
    }
}

/// Bit l set where slot l of the bucket holds `key` (at most one does; a free slot never
/// matches, its top bits being set).
#[inline(always)]
fn bucket_matches(lanes: &[u64; LANES], key: u64, id_bits: u32) -> u32 {
    let mut hit = 0u32;
    for (l, &s) in lanes.iter().enumerate() {
        hit |= ((s >> id_bits == key) as u32) << l;
    }
    hit
}

/// Bit l set where slot l of the bucket is free.
#[inline(always)]
fn bucket_free(lanes: &[u64; LANES]) -> u32 {
    let mut free = 0u32;
    for (l, &s) in lanes.iter().enumerate() {
        free |= ((s == EMPTY) as u32) << l;
    }
    free
}

/// [`bucket_free`] in two AVX2 compares.
///
/// # Safety
/// AVX2 must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn bucket_free_avx2(lanes: &[u64; LANES]) -> u32 {
    use std::arch::x86_64::*;
    let e = _mm256_set1_epi64x(EMPTY as i64);
    let p = lanes.as_ptr() as *const __m256i;
    // SAFETY: a bucket is 64 bytes, 64-byte aligned: two aligned 32-byte loads
    let (lo, hi) = unsafe { (_mm256_load_si256(p), _mm256_load_si256(p.add(1))) };
    let m = |v: __m256i| _mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpeq_epi64(v, e))) as u32;
    m(lo) | (m(hi) << 4)
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn bucket_free_avx2(lanes: &[u64; LANES]) -> u32 {
    bucket_free(lanes)
}

/// [`bucket_matches`] in two AVX2 compares (the compiler's own vectorisation of it mixed
/// scalar and vector code and ran ~1.4× slower).
///
/// # Safety
/// AVX2 must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn bucket_matches_avx2(lanes: &[u64; LANES], key: u64, id_bits: u32) -> u32 {
    use std::arch::x86_64::*;
    let k = _mm256_set1_epi64x(key as i64);
    let count = _mm_cvtsi32_si128(id_bits as i32);
    let p = lanes.as_ptr() as *const __m256i;
    // SAFETY: a bucket is 64 bytes, 64-byte aligned: two aligned 32-byte loads
    let (lo, hi) = unsafe { (_mm256_load_si256(p), _mm256_load_si256(p.add(1))) };
    let m = |v: __m256i| {
        let eq = _mm256_cmpeq_epi64(_mm256_srl_epi64(v, count), k);
        _mm256_movemask_pd(_mm256_castsi256_pd(eq)) as u32
    };
    m(lo) | (m(hi) << 4)
}

/// [`bucket_matches`] in one AVX-512 compare.
///
/// # Safety
/// AVX-512F must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn bucket_matches_avx512(lanes: &[u64; LANES], key: u64, id_bits: u32) -> u32 {
    use std::arch::x86_64::*;
    // SAFETY: a bucket is 64 bytes, 64-byte aligned: one aligned load
    let v = unsafe { _mm512_load_si512(lanes.as_ptr() as *const __m512i) };
    let shifted = _mm512_srl_epi64(v, _mm_cvtsi32_si128(id_bits as i32));
    _mm512_cmpeq_epi64_mask(shifted, _mm512_set1_epi64(key as i64)) as u32
}

/// [`bucket_free`] in one AVX-512 compare.
///
/// # Safety
/// AVX-512F must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn bucket_free_avx512(lanes: &[u64; LANES]) -> u32 {
    use std::arch::x86_64::*;
    // SAFETY: as in bucket_matches_avx512
    let v = unsafe { _mm512_load_si512(lanes.as_ptr() as *const __m512i) };
    _mm512_cmpeq_epi64_mask(v, _mm512_set1_epi64(EMPTY as i64)) as u32
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn bucket_matches_avx512(lanes: &[u64; LANES], key: u64, id_bits: u32) -> u32 {
    bucket_matches(lanes, key, id_bits)
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn bucket_free_avx512(lanes: &[u64; LANES]) -> u32 {
    bucket_free(lanes)
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn bucket_matches_avx2(lanes: &[u64; LANES], key: u64, id_bits: u32) -> u32 {
    bucket_matches(lanes, key, id_bits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// The ids a first-seen-order map assigns (the oracle).
    fn oracle(keys: &[u64]) -> (Vec<u32>, Vec<u64>) {
        let mut map = HashMap::new();
        let mut distinct = Vec::new();
        let ids = keys
            .iter()
            .map(|&k| {
                *map.entry(k).or_insert_with(|| {
                    distinct.push(k);
                    distinct.len() as u32 - 1
                })
            })
            .collect();
        (ids, distinct)
    }

    /// Ids by the table with the bucket compare `simd` (None where this CPU lacks it), fed
    /// in blocks of `block` keys.
    fn table_ids(
        keys: &[u64],
        key_bits: u32,
        block: usize,
        simd: u8,
    ) -> Option<(Vec<u32>, Vec<u64>)> {
        #[cfg(target_arch = "x86_64")]
        let available = match simd {
            AVX512 => {
                std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512dq")
            }
            AVX2 => std::is_x86_feature_detected!("avx2"),
            _ => true,
        };
        #[cfg(not(target_arch = "x86_64"))]
        let available = simd == PORTABLE;
        if !available {
            return None;
        }
        let mut t = LeafTable::new(key_bits, 20, 0);
        let mut ids = vec![0u32; keys.len()];
        for (k, i) in keys.chunks(block).zip(ids.chunks_mut(block)) {
            t.reserve(k.len());
            match simd {
                // SAFETY (both): availability checked above
                #[cfg(target_arch = "x86_64")]
                AVX512 => unsafe { t.lookup_block_avx512(k, i) },
                #[cfg(target_arch = "x86_64")]
                AVX2 => unsafe { t.lookup_block_avx2(k, i) },
                _ => t.lookup_block_with::<PORTABLE>(k, i),
            }
        }
        Some((ids, t.keys().to_vec()))
    }

    proptest! {
        #[test]
        fn ids_are_first_seen_order(
            raw in prop::collection::vec(0u64..1 << 30, 0..20_000),
            spread in 1u64..40_000,
            block in 1usize..=BLOCK_MAX,
        ) {
            // few distinct keys (many repeats, runs) up to all distinct
            let keys: Vec<u64> = raw.iter().map(|&r| r % spread * 7919 % (1 << 30)).collect();
            let want = oracle(&keys);
            for simd in [PORTABLE, AVX2, AVX512] {
                if let Some(got) = table_ids(&keys, 30, block, simd) {
                    prop_assert_eq!(&got, &want, "simd {}", simd);
                }
            }
        }
    }

    #[test]
    fn growth_keeps_ids_and_top_keys() {
        // enough distinct keys for several rehashes, including the largest key_bits allow
        let key_bits = 63 - 20;
        let mut next = crate::testing::xorshift(7);
        let keys: Vec<u64> = (0..300_000)
            .map(|i| {
                if i % 3 == 0 {
                    (1 << key_bits) - 1
                } else {
                    next() >> (64 - key_bits)
                }
            })
            .collect();
        let want = oracle(&keys);
        for simd in [PORTABLE, AVX2, AVX512] {
            if let Some(got) = table_ids(&keys, key_bits, BLOCK_MAX, simd) {
                assert_eq!(got, want, "simd {simd}");
            }
        }
    }
}
