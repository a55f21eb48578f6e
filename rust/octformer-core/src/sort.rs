//! Stable LSD radix sort on a bit range of a 64-bit key, parallel with rayon.
//!
//! Stability makes the output unique, so the result never depends on how many
//! threads ran it (a determinism guarantee, not an accident).

pub(crate) use crate::mem::vec_for_overwrite;
use crate::mem::vec_with_capacity_for_overwrite;
use crate::mem::{SendPtr, prefetch};
use rayon::prelude::*;

const DIGIT_BITS: u32 = 11;
/// Below this many items a single chunk is used (thread start-up would dominate).
const PARALLEL_MIN: usize = 1 << 16;

/// Items that carry a 64-bit radix key.
pub trait RadixKey: Copy + Send + Sync + Default {
    fn radix_key(&self) -> u64;
}

impl RadixKey for u64 {
    #[inline(always)]
    fn radix_key(&self) -> u64 {
        *self
    }
}

impl RadixKey for (u64, u32) {
    #[inline(always)]
    fn radix_key(&self) -> u64 {
        self.0
    }
}

/// Bits of the leading (most significant) digit in the hybrid sort.
const TOP_BITS: u32 = 11;

/// Sort `data` stably by bits `lo..hi` of each item's key (bits outside are ignored).
///
/// Wide keys take one most-significant-digit scatter over the whole array (the only pass
/// that streams through DRAM), then sort each of its ≤ 2048 buckets in cache by LSD
/// passes; buckets are independent, so threads split them without synchronisation.
pub fn radix_sort<T: RadixKey>(data: &mut Vec<T>, lo: u32, hi: u32) {
    radix_sort_spare(data, lo, hi);
}

/// [`radix_sort`] that hands back its other buffer (`data.len()` items of unspecified
/// content, capacity `data.capacity()`) when it allocated one, so a caller that needs a
/// second array of that size can reuse memory that is already faulted in.
pub fn radix_sort_spare<T: RadixKey>(data: &mut Vec<T>, lo: u32, hi: u32) -> Option<Vec<T>> {
    let n = data.len();
    let hi = hi.min(64);
    if n < 2 || hi <= lo {
        return None;
    }
    if n < 1 << 14 {
        // cache-resident already: serial passes with small count arrays
        small_lsd(data, lo, hi, &mut Vec::new());
        return None;
    }
    if !is_hybrid(lo, hi) {
        return lsd_sort(data, lo, hi);
    }
    let top_bits = hybrid_top_bits(lo, hi);
    let top = hi - top_bits;
    let chunks = chunk_count(n);
    let mask = (1usize << top_bits) - 1;
    let (chunk_len, hists) = chunk_histograms(data, chunks, top, mask);
    // SAFETY: `hists` are the histograms of exactly those chunks of `data`
    Some(unsafe {
        hybrid_from_hists(
            data,
            &hists,
            chunk_len,
            top,
            mask,
            |b, scratch| small_lsd(b, lo, top, scratch),
            |_, _, _| {},
        )
    })
}

/// Whether keys in bits `lo..hi` of ≥ 2^14 items take the hybrid (leading digit, then
/// buckets in cache) path rather than plain LSD passes.
pub(crate) fn is_hybrid(lo: u32, hi: u32) -> bool {
    hi > lo + 2 * DIGIT_BITS
}

/// Bits of the hybrid sort's leading digit for keys in bits `lo..hi` (`hi − lo` > 22).
///
/// Keys of up to 28 bits get a wider leading digit (≤ 15 bits), leaving ≤ 13 bits per
/// bucket, which the in-cache sort covers in one pass for buckets of ≥ 2048 items
/// (FlatFormer window keys: 27 bits at 1M tokens, ~10% less sort time than 11 bits).
pub(crate) fn hybrid_top_bits(lo: u32, hi: u32) -> u32 {
    if hi - lo <= 28 {
        (hi - lo - 13).max(TOP_BITS)
    } else {
        TOP_BITS
    }
}

/// The hybrid sort after its leading-digit histograms: `hists[c]` counts the digit
/// `(key >> top) & mask` of items `c·chunk_len..` of `data` (one histogram per
/// contiguous chunk, in order). Scatters by that digit into a new buffer (capacity
/// `data.capacity()`), sorts every bucket in cache with `sort_bucket(bucket, scratch)`
/// (also called on buckets of one item),
/// then calls `visit(first position, sorted bucket, old buffer)` on every bucket (empty
/// ones skipped) while it is still in cache; the old buffer (`data.len()` items) is free
/// scratch by then and buckets are visited concurrently, so `visit` may only write
/// elements of it that no other bucket writes. `data` ends up sorted; the old buffer is
/// returned.
///
/// # Safety
/// `hists` must be exactly those histograms (the scatter writes where they say).
pub(crate) unsafe fn hybrid_from_hists<T: RadixKey>(
    data: &mut Vec<T>,
    hists: &[Vec<u32>],
    chunk_len: usize,
    top: u32,
    mask: usize,
    sort_bucket: impl Fn(&mut [T], &mut Vec<T>) + Sync,
    visit: impl Fn(usize, &mut [T], SendPtr<T>) + Sync,
) -> Vec<T> {
    let n = data.len();
    // SAFETY: the scatter below writes every index 0..n exactly once
    let mut buf: Vec<T> = unsafe { vec_with_capacity_for_overwrite(n, data.capacity()) };
    let starts = scatter_with_hists(data, &mut buf, hists, chunk_len, top, mask, false)
        .expect("a scatter that may not skip always runs");
    // split the scattered array into its buckets and sort each in cache
    let mut buckets: Vec<(usize, &mut [T])> = Vec::with_capacity(mask + 1);
    let mut rest: &mut [T] = &mut buf[..];
    for b in 0..=mask {
        let (head, tail) = rest.split_at_mut(starts[b + 1] - starts[b]);
        if !head.is_empty() {
            buckets.push((starts[b], head));
        }
        rest = tail;
    }
    let old = SendPtr(data.as_mut_ptr());
    let run = |(k0, bucket): &mut (usize, &mut [T]), scratch: &mut Vec<T>| {
        sort_bucket(bucket, scratch);
        visit(*k0, bucket, old);
    };
    if hists.len() == 1 {
        let mut scratch = Vec::new();
        buckets.iter_mut().for_each(|b| run(b, &mut scratch));
    } else {
        buckets
            .par_iter_mut()
            .for_each_init(Vec::new, |scratch, b| run(b, scratch));
    }
    std::mem::replace(data, buf)
}

/// Serial LSD sort of a cache-resident slice by bits `lo..hi`, digits of ≤ 10 to 16 bits.
pub(crate) fn small_lsd<T: RadixKey>(data: &mut [T], lo: u32, hi: u32, scratch: &mut Vec<T>) {
    small_lsd_then(data, lo, hi, scratch, None::<fn(T) -> T>);
}

/// [`small_lsd`], then every item replaced by `f(item)`; where the sort ends in `scratch`,
/// `f` is applied as the items are copied back (one pass instead of two).
pub(crate) fn small_lsd_map<T: RadixKey>(
    data: &mut [T],
    lo: u32,
    hi: u32,
    scratch: &mut Vec<T>,
    f: impl Fn(T) -> T,
) {
    small_lsd_then(data, lo, hi, scratch, Some(f));
}

/// `data` = `f` of `src` item by item (a plain copy without `f`).
#[inline(always)]
fn copy_mapped<T: Copy>(data: &mut [T], src: &[T], f: &Option<impl Fn(T) -> T>) {
    match f {
        Some(f) => {
            for (d, &v) in data.iter_mut().zip(src) {
                *d = f(v);
            }
        }
        None => data.copy_from_slice(src),
    }
}

/// `f` on every item of `data` in place (nothing without `f`).
#[inline(always)]
fn map_in_place<T: Copy>(data: &mut [T], f: &Option<impl Fn(T) -> T>) {
    if let Some(f) = f {
        for v in data.iter_mut() {
            *v = f(*v);
        }
    }
}

fn small_lsd_then<T: RadixKey>(
    data: &mut [T],
    lo: u32,
    hi: u32,
    scratch: &mut Vec<T>,
    f: Option<impl Fn(T) -> T>,
) {
    let n = data.len();
    if n < 2 || hi <= lo {
        map_in_place(data, &f);
        return;
    }
    if n <= 64 {
        let mask = if hi - lo >= 64 {
            u64::MAX
        } else {
            (1u64 << (hi - lo)) - 1
        };
        data.sort_by_key(|v| (v.radix_key() >> lo) & mask);
        map_in_place(data, &f);
        return;
    }
    // uninitialised on purpose: every pass writes the whole destination before reading it
    #[allow(clippy::uninit_vec)]
    if scratch.len() < n {
        scratch.reserve(n - scratch.len());
        // SAFETY: T is Copy (no drop); every pass below writes all n entries of the
        // destination before anything reads them
        unsafe { scratch.set_len(n) };
    }
    let scratch = &mut scratch[..n];
    // as few passes of at most 10 bits as cover the range, digits of near-equal width;
    // the histograms of every pass come from one read of the input
    // wider digits for larger slices: one pass with a 64 KiB count table beats two
    let max_width = match n {
        0..2048 => 10,
        2048..16384 => 13,
        _ => 16,
    };
    let passes = (hi - lo).div_ceil(max_width) as usize;
    let width = (hi - lo).div_ceil(passes as u32);
    let digits = 1usize << width;
    let mut counts_buf = vec![0u32; passes * digits];
    let mut counts: Vec<&mut [u32]> = counts_buf.chunks_exact_mut(digits).collect();
    let mut masks = [0usize; 7];
    for (p, m) in masks[..passes].iter_mut().enumerate() {
        *m = (1usize << width.min(hi - lo - p as u32 * width)) - 1;
    }
    if passes == 1 && n >= INTERLEAVE_MIN {
        one_pass_interleaved(data, scratch, lo, masks[0], &f);
        return;
    }
    if passes == 1 {
        // the common case in the hybrid sort's buckets (≥ 2048 items, ≤ 13 bits left):
        // the count slice in registers (the generic loop reloads it through `counts`)
        let (c0, m0) = (&mut *counts[0], masks[0]);
        for v in data.iter() {
            c0[(v.radix_key() >> lo) as usize & m0] += 1;
        }
    } else if passes == 2 {
        let (c0, c1) = counts.split_at_mut(1);
        let (c0, c1) = (&mut *c0[0], &mut *c1[0]);
        let (m0, m1) = (masks[0], masks[1]);
        for v in data.iter() {
            let k = v.radix_key() >> lo;
            c0[k as usize & m0] += 1;
            c1[(k >> width) as usize & m1] += 1;
        }
    } else {
        for v in data.iter() {
            let k = v.radix_key() >> lo;
            for (p, c) in counts[..passes].iter_mut().enumerate() {
                c[((k >> (p as u32 * width)) as usize) & masks[p]] += 1;
            }
        }
    }
    let mut src_is_data = true;
    for (p, count) in counts[..passes].iter_mut().enumerate() {
        let shift = lo + p as u32 * width;
        let (src, dst): (&[T], &mut [T]) = if src_is_data {
            (&*data, &mut *scratch)
        } else {
            (&*scratch, &mut *data)
        };
        if counting_pass(src, dst, &mut count[..=masks[p]], shift) {
            src_is_data = !src_is_data;
        }
    }
    if src_is_data {
        map_in_place(data, &f);
    } else {
        copy_mapped(data, scratch, &f);
    }
}

/// One stable counting-sort pass of `src` into `dst` by the digit
/// `(key >> shift) & (count.len() - 1)`, given that digit's histogram in `count` (a power
/// of two entries; turned into write positions). Returns false, moving nothing, when every
/// item has the same digit (the pass would change nothing).
#[inline(always)]
pub(crate) fn counting_pass<T: RadixKey>(
    src: &[T],
    dst: &mut [T],
    count: &mut [u32],
    shift: u32,
) -> bool {
    let n = src.len();
    debug_assert!(dst.len() == n && count.len().is_power_of_two());
    if count.iter().any(|&c| c as usize == n) {
        return false;
    }
    let mask = count.len() - 1;
    let mut run = 0u32;
    for c in count.iter_mut() {
        let t = *c;
        *c = run;
        run += t;
    }
    for v in src {
        let b = ((v.radix_key() >> shift) as usize) & mask;
        // SAFETY: b ≤ mask < count.len(), and the prefix sums of a histogram of `src` keep
        // every position below n = dst.len()
        unsafe {
            let at = count.get_unchecked_mut(b);
            *dst.get_unchecked_mut(*at as usize) = *v;
            *at += 1;
        }
    }
    true
}

/// From this many items [`small_lsd`]'s one-pass case counts and moves four quarters
/// interleaved.
const INTERLEAVE_MIN: usize = 1 << 14;

/// One stable counting-sort pass of `data` by the digit `(key >> shift) & mask`, via
/// `scratch` (same length) and back. The four quarters of `data` are counted and moved
/// interleaved, each with its own count table, so the increments form four independent
/// chains: neighbouring items mostly share a digit, and with one table every increment
/// waits on the previous item's store. Needs `data.len()` > 3 · ⌈len / 4⌉ (len ≥ 13).
/// With `f`, the items copied back are `f(item)`.
fn one_pass_interleaved<T: RadixKey>(
    data: &mut [T],
    scratch: &mut [T],
    shift: u32,
    mask: usize,
    f: &Option<impl Fn(T) -> T>,
) {
    let n = data.len();
    let q = n.div_ceil(4);
    assert!(n > 3 * q && scratch.len() == n && n <= u32::MAX as usize);
    let digits = mask + 1;
    let digit = |v: &T| ((v.radix_key() >> shift) as usize) & mask;
    let (p01, p23) = data.split_at(2 * q);
    let (p0, p1) = p01.split_at(q);
    let (p2, p3) = p23.split_at(q);
    let common = p3.len(); // the last quarter is the shortest
    let mut table = vec![0u32; 4 * digits];
    {
        let (c01, c23) = table.split_at_mut(2 * digits);
        let (c0, c1) = c01.split_at_mut(digits);
        let (c2, c3) = c23.split_at_mut(digits);
        for (((a, b), c), d) in p0.iter().zip(p1).zip(p2).zip(p3) {
            c0[digit(a)] += 1;
            c1[digit(b)] += 1;
            c2[digit(c)] += 1;
            c3[digit(d)] += 1;
        }
        for ((a, b), c) in p0[common..].iter().zip(&p1[common..]).zip(&p2[common..]) {
            c0[digit(a)] += 1;
            c1[digit(b)] += 1;
            c2[digit(c)] += 1;
        }
    }
    let total = |x: usize| (0..4).map(|t| table[t * digits + x]).sum::<u32>();
    if (0..digits).any(|x| total(x) as usize == n) {
        // every item has the same digit: the pass would change nothing
        map_in_place(data, f);
        return;
    }
    // digit-major, quarter-minor starts: quarters keep their input order (stable)
    let mut run = 0u32;
    for x in 0..digits {
        for t in 0..4 {
            let e = &mut table[t * digits + x];
            let k = *e;
            *e = run;
            run += k;
        }
    }
    let (c01, c23) = table.split_at_mut(2 * digits);
    let (c0, c1) = c01.split_at_mut(digits);
    let (c2, c3) = c23.split_at_mut(digits);
    let dst = SendPtr(scratch.as_mut_ptr());
    let put = |c: &mut [u32], v: &T| {
        let at = &mut c[digit(v)];
        assert!((*at as usize) < n);
        // SAFETY: the starts partition 0..n (counts of exactly these items), so every
        // position is written once; in bounds by the assert
        unsafe { *dst.0.add(*at as usize) = *v };
        *at += 1;
    };
    for (((a, b), c), d) in p0.iter().zip(p1).zip(p2).zip(p3) {
        put(c0, a);
        put(c1, b);
        put(c2, c);
        put(c3, d);
    }
    for ((a, b), c) in p0[common..].iter().zip(&p1[common..]).zip(&p2[common..]) {
        put(c0, a);
        put(c1, b);
        put(c2, c);
    }
    copy_mapped(data, scratch, f);
}

/// Plain parallel LSD sort (narrow keys or small inputs).
fn lsd_sort<T: RadixKey>(data: &mut Vec<T>, lo: u32, hi: u32) -> Option<Vec<T>> {
    let n = data.len();
    let hi = hi.min(64);
    if n < 2 || hi <= lo {
        return None;
    }
    if n < 64 {
        let mask = if hi - lo >= 64 {
            u64::MAX
        } else {
            (1u64 << (hi - lo)) - 1
        };
        data.sort_by_key(|v| (v.radix_key() >> lo) & mask);
        return None;
    }
    let chunks = chunk_count(n);
    // SAFETY: buf is only read after a pass that wrote all of it (a skipped pass swaps nothing)
    let mut buf: Vec<T> = unsafe { vec_with_capacity_for_overwrite(n, data.capacity()) };
    let mut shift = lo;
    while shift < hi {
        let bits = DIGIT_BITS.min(hi - shift);
        let mask = ((1u64 << bits) - 1) as usize;
        if scatter_pass(data, &mut buf, shift, mask, chunks, true).is_some() {
            std::mem::swap(data, &mut buf);
        }
        shift += bits;
    }
    Some(buf)
}

/// Chunks a one-thread caller may split its histograms into, so that
/// [`hybrid_from_hists`]' scatter interleaves them.
pub(crate) const SERIAL_CHUNKS: usize = 4;

/// How many chunks to split `n` items into for the parallel passes.
pub(crate) fn chunk_count(n: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    if n < PARALLEL_MIN || threads == 1 {
        1
    } else {
        threads * 2
    }
}

/// One stable counting-sort pass of `src` into `dst` by the digit `(key >> shift) & mask`,
/// with per-chunk histograms so chunks scatter in parallel. Returns the bucket starts
/// (mask + 2 entries, the last = n), or `None` without writing when `skip_trivial` and every
/// item has the same digit.
fn scatter_pass<T: RadixKey>(
    src: &[T],
    dst: &mut [T],
    shift: u32,
    mask: usize,
    chunks: usize,
    skip_trivial: bool,
) -> Option<Vec<usize>> {
    let (chunk_len, hists) = chunk_histograms(src, chunks, shift, mask);
    scatter_with_hists(src, dst, &hists, chunk_len, shift, mask, skip_trivial)
}

/// The chunk length for `chunks` parallel chunks of `src`, and the histogram of the digit
/// `(key >> shift) & mask` of every chunk, in order.
fn chunk_histograms<T: RadixKey>(
    src: &[T],
    chunks: usize,
    shift: u32,
    mask: usize,
) -> (usize, Vec<Vec<u32>>) {
    let chunk_len = src.len().div_ceil(chunks).max(1);
    let hists = if chunks == 1 {
        vec![histogram(src, shift, mask)]
    } else {
        src.par_chunks(chunk_len)
            .map(|c| histogram(c, shift, mask))
            .collect()
    };
    (chunk_len, hists)
}

/// [`scatter_pass`] given the histogram of every `chunk_len` chunk of `src`.
fn scatter_with_hists<T: RadixKey>(
    src: &[T],
    dst: &mut [T],
    hists: &[Vec<u32>],
    chunk_len: usize,
    shift: u32,
    mask: usize,
    skip_trivial: bool,
) -> Option<Vec<usize>> {
    let n = src.len();
    let mut offsets = vec![vec![0usize; mask + 1]; hists.len()];
    let mut starts = vec![0usize; mask + 2];
    let mut run = 0usize;
    for b in 0..=mask {
        starts[b] = run;
        for (c, h) in hists.iter().enumerate() {
            offsets[c][b] = run;
            run += h[b] as usize;
        }
        if skip_trivial && run - starts[b] == n {
            return None; // every item has this digit: the pass would change nothing
        }
    }
    assert_eq!(run, n, "histograms must count every item once");
    starts[mask + 1] = n;
    let out = SendPtr(dst.as_mut_ptr());
    let scatter = |(chunk, mut off): (&[T], Vec<usize>)| {
        let out = out;
        for v in chunk {
            let b = ((v.radix_key() >> shift) as usize) & mask;
            // SAFETY: offsets partition 0..n disjointly across chunks and buckets (the
            // histograms count exactly these items, asserted above).
            unsafe { *out.0.add(off[b]) = *v };
            off[b] += 1;
        }
    };
    if hists.len() == 1 {
        scatter((src, offsets.pop().unwrap()));
    } else if hists.len() == SERIAL_CHUNKS
        && src.len() > 3 * chunk_len
        && rayon::current_num_threads() == 1
    {
        // one thread, four chunks: a step moves one item of each, so the four offset
        // tables' increments form independent chains (consecutive items mostly share a
        // digit, and in one chain every increment waits on the previous item's store)
        let parts: Vec<&[T]> = src.chunks(chunk_len).collect();
        let common = parts[SERIAL_CHUNKS - 1].len(); // the last chunk is the shortest
        let [o0, o1, o2, o3]: &mut [Vec<usize>; SERIAL_CHUNKS] =
            (&mut offsets[..]).try_into().expect("four chunks");
        let mut offs = [&mut o0[..], &mut o1[..], &mut o2[..], &mut o3[..]];
        let put = |off: &mut [usize], v: &T| {
            let b = ((v.radix_key() >> shift) as usize) & mask;
            let o = off[b];
            assert!(o < n);
            // SAFETY: offsets partition 0..n disjointly across chunks and buckets (the
            // histograms count exactly these items, asserted above); in bounds by the
            // assert
            unsafe { *out.0.add(o) = *v };
            // the stream's line two lines on (about to be written; ~1 ms less per 1M
            // words, most with cold caches)
            prefetch(out.0, o + 16, n);
            off[b] = o + 1;
        };
        let quads = parts[0].iter().zip(parts[1]).zip(parts[2]).zip(parts[3]);
        for (((v0, v1), v2), v3) in quads {
            let [a, b, c, d] = &mut offs;
            put(a, v0);
            put(b, v1);
            put(c, v2);
            put(d, v3);
        }
        for (off, part) in offs.iter_mut().zip(&parts) {
            for v in &part[common..] {
                put(off, v);
            }
        }
    } else {
        src.par_chunks(chunk_len)
            .zip(offsets.into_par_iter())
            .for_each(scatter);
    }
    Some(starts)
}

pub(crate) fn histogram<T: RadixKey>(items: &[T], shift: u32, mask: usize) -> Vec<u32> {
    let mut h = vec![0u32; mask + 1];
    for v in items {
        h[((v.radix_key() >> shift) as usize) & mask] += 1;
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn equals_stable_sort(mut v in proptest::collection::vec((0u64..1 << 40, 0u32..1000), 0..3000), lo in 0u32..20, w in 0u32..40) {
            let hi = lo + w;
            let mask = if w == 0 { 0 } else { (1u64 << w) - 1 };
            let mut expected = v.clone();
            expected.sort_by_key(|p| (p.0 >> lo) & mask);
            radix_sort(&mut v, lo, hi);
            prop_assert_eq!(v, expected);
        }
    }

    #[test]
    fn interleaved_one_pass_equals_stable_sort() {
        // ≥ 2^14 items with one digit pass left: the four-quarter path of small_lsd;
        // runs of equal digits (as in the buckets) and lengths that leave ragged quarters
        let mut next = crate::testing::xorshift(77u64);
        for n in [1usize << 14, (1 << 14) + 3, 50_001] {
            let v: Vec<(u64, u32)> = (0..n)
                .map(|i| {
                    let state = next();
                    let digit = if i % 64 < 40 {
                        (i / 64) as u64 % 97
                    } else {
                        state % 8192
                    };
                    (
                        (digit << 9) | (state >> 50) << 30 | (i as u64 & 511),
                        i as u32,
                    )
                })
                .collect();
            let (lo, hi) = (9u32, 22u32);
            let mut expected = v.clone();
            expected.sort_by_key(|p| (p.0 >> lo) & ((1 << (hi - lo)) - 1));
            let mut got = v.clone();
            small_lsd(&mut got, lo, hi, &mut Vec::new());
            assert_eq!(got, expected, "n={n}");
        }
    }

    #[test]
    fn parallel_equals_serial() {
        let mut next = crate::testing::xorshift(0x12345u64);
        let v: Vec<u64> = (0..300_000)
            .map(|_| {
                let state = next();
                state & ((1 << 45) - 1)
            })
            .collect();
        // wide keys (11-bit leading digit), 24..28-bit keys (wider leading digit), and
        // 18 bits (plain LSD); stable: equal keys keep their input order
        for (lo, hi) in [(5u32, 45u32), (18, 45), (20, 44), (21, 45), (27, 45)] {
            let mask = (1u64 << (hi - lo)) - 1;
            let mut expected = v.clone();
            expected.sort_by_key(|x| (x >> lo) & mask);
            for threads in [1, 2, 3] {
                let mut got = v.clone();
                crate::testing::with_threads(threads, || radix_sort(&mut got, lo, hi));
                assert_eq!(got, expected, "threads={threads}, bits {lo}..{hi}");
            }
        }
    }
}
