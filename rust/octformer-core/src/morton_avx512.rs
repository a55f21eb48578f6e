//! Morton keys of float32 points at depth ≤ 10 with AVX-512, for the hash build: 16
//! points per step, deinterleaved by permutes, scaled and clamped like the portable
//! quantisation (same float32 operations, in the same order), and spread into keys by
//! shifts and masks in 32-bit lanes instead of three PDEPs per point.

use std::arch::x86_64::*;

/// Whether this CPU runs [`keys_depth10`] (AVX-512F).
pub(crate) fn available() -> bool {
    std::is_x86_feature_detected!("avx512f")
}

/// For axis a: lane j's index into the first two registers of 16 points (0..32), and its
/// index into the third one (the lanes whose coordinate 3j + a lies at 32 or beyond).
const fn deinterleave(a: usize) -> ([i32; 16], [i32; 16], u16) {
    let mut lo = [0i32; 16];
    let mut hi = [0i32; 16];
    let mut in_third = 0u16;
    let mut j = 0;
    while j < 16 {
        let at = 3 * j + a;
        if at < 32 {
            lo[j] = at as i32;
        } else {
            hi[j] = (at - 32) as i32;
            in_third |= 1 << j;
        }
        j += 1;
    }
    (lo, hi, in_third)
}

static AXES: [([i32; 16], [i32; 16], u16); 3] = [deinterleave(0), deinterleave(1), deinterleave(2)];

/// Bits 0..10 of every lane moved to bits 0, 3, 6, .., 27.
#[target_feature(enable = "avx512f")]
#[inline]
fn spread10(v: __m512i) -> __m512i {
    let step = |v: __m512i, shifted: __m512i, mask: i32| {
        _mm512_and_si512(_mm512_or_si512(v, shifted), _mm512_set1_epi32(mask))
    };
    let v = step(v, _mm512_slli_epi32::<16>(v), 0x0300_00FF);
    let v = step(v, _mm512_slli_epi32::<8>(v), 0x0300_F00F);
    let v = step(v, _mm512_slli_epi32::<4>(v), 0x030C_30C3);
    step(v, _mm512_slli_epi32::<2>(v), 0x0924_9249)
}

/// A sample's grid in float32, as the portable quantisation rounds it: origin, inverse
/// cell size, side (`2^depth`) and last cell (`2^depth - 1`).
#[derive(Clone, Copy)]
pub(crate) struct Grid {
    pub origin: [f32; 3],
    pub inv: [f32; 3],
    pub top: f32,
    pub last: f32,
}

impl Grid {
    pub(crate) fn new(bx: &crate::octree::SampleBox, depth: usize) -> Self {
        let side = (1u64 << depth) as f64;
        Grid {
            origin: bx.origin.map(|o| o as f32),
            inv: bx.cell.map(|c| (1.0 / c) as f32),
            top: side as f32,
            last: (side - 1.0) as f32,
        }
    }
}

/// Keys of the points `pts` (x, y, z interleaved) into `out`, 16 points per group, for
/// `out.len() / 16` whole groups: `((p - origin) * inv)` clamped into `[0, last]` and
/// truncated per axis (the `grid`'s values), x bits above y bits above z bits. A group
/// with any scaled value outside `[0, top]` (or not a number) is not written; its index
/// is pushed to `redo` for the portable path, which also reports it.
///
/// # Safety
/// The CPU has AVX-512F ([`available`]); `grid.last < 1024` (depth ≤ 10).
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn keys_depth10(
    pts: &[f32],
    grid: &Grid,
    out: &mut [u64],
    redo: &mut Vec<usize>,
) {
    let Grid {
        origin,
        inv,
        top,
        last,
    } = *grid;
    let groups = out.len() / 16;
    assert!(pts.len() >= groups * 48);
    let zero = _mm512_setzero_ps();
    let (topv, lastv) = (_mm512_set1_ps(top), _mm512_set1_ps(last));
    let load16 = |t: &[i32; 16]| {
        // SAFETY: 16 values
        unsafe { _mm512_loadu_si512(t.as_ptr() as *const __m512i) }
    };
    let idx: [(__m512i, __m512i, u16); 3] = std::array::from_fn(|a| {
        let (lo, hi, third) = &AXES[a];
        (load16(lo), load16(hi), *third)
    });
    for g in 0..groups {
        let p = pts[48 * g..48 * g + 48].as_ptr();
        // SAFETY: 48 values from p (the slice above)
        let (v0, v1, v2) = unsafe {
            (
                _mm512_loadu_ps(p),
                _mm512_loadu_ps(p.add(16)),
                _mm512_loadu_ps(p.add(32)),
            )
        };
        let mut inside: __mmask16 = 0xffff;
        let cell: [__m512i; 3] = std::array::from_fn(|a| {
            let (lo, hi, third) = idx[a];
            let c = _mm512_mask_permutexvar_ps(_mm512_permutex2var_ps(v0, lo, v1), third, hi, v2);
            let t = _mm512_mul_ps(
                _mm512_sub_ps(c, _mm512_set1_ps(origin[a])),
                _mm512_set1_ps(inv[a]),
            );
            inside &= _mm512_cmp_ps_mask::<_CMP_GE_OQ>(t, zero)
                & _mm512_cmp_ps_mask::<_CMP_LE_OQ>(t, topv);
            // maxps returns its second operand for a NaN, like the portable clamp
            _mm512_cvttps_epi32(_mm512_min_ps(_mm512_max_ps(t, zero), lastv))
        });
        if inside != 0xffff {
            redo.push(g);
            continue;
        }
        let key = _mm512_or_si512(
            _mm512_or_si512(
                _mm512_slli_epi32::<2>(spread10(cell[0])),
                _mm512_slli_epi32::<1>(spread10(cell[1])),
            ),
            spread10(cell[2]),
        );
        let dst = out[16 * g..16 * g + 16].as_mut_ptr() as *mut __m512i;
        // SAFETY: 16 u64 at dst (the slice above)
        unsafe {
            _mm512_storeu_si512(dst, _mm512_cvtepu32_epi64(_mm512_castsi512_si256(key)));
            _mm512_storeu_si512(
                dst.add(1),
                _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64::<1>(key)),
            );
        }
    }
}
