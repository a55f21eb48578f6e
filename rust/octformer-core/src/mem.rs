//! Memory helpers shared by the parallel passes: a pointer that rayon tasks may share
//! for disjoint writes, and output buffers that are written exactly once.

/// A raw pointer that parallel tasks share to write disjoint elements of one buffer.
/// Every user states why its writes are disjoint and in bounds.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub(crate) *mut T);
// SAFETY: the pointer is only dereferenced for disjoint, in-bounds writes (each use site
// argues this), so sharing it between threads cannot race.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

/// Hint that element `i` of the `n`-element buffer at `p` is wanted soon (nothing where
/// `i ≥ n` or off x86-64).
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T, i: usize, n: usize) {
    #[cfg(target_arch = "x86_64")]
    if i < n {
        // SAFETY: a prefetch never faults and changes no memory; i < n keeps the address
        // inside the buffer
        unsafe {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(i) as *const i8);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, i, n);
}

/// [`prefetch`] for elements `lo..hi` (clamped to `n`): one hint per 64-byte line.
#[inline(always)]
pub(crate) fn prefetch_lines<T>(p: *const T, lo: usize, hi: usize, n: usize) {
    let step = (64 / std::mem::size_of::<T>().max(1)).max(1);
    for i in (lo..hi.min(n)).step_by(step) {
        prefetch(p, i, n);
    }
}

/// Outputs at least this large ask the kernel for transparent huge pages.
const HUGE_MIN_BYTES: usize = 4 << 20;

/// A vector of `n` plain-old-data items that the caller overwrites completely before
/// reading any of them (saves a memset of the whole buffer on hot paths).
///
/// # Safety
/// Every element must be written before it is read.
// the uninitialised items are the point: the caller's single write pass replaces a memset
#[allow(clippy::uninit_vec)]
pub(crate) unsafe fn vec_for_overwrite<T: Copy>(n: usize) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(n);
    // SAFETY: capacity is n and T is Copy (no drop); the caller writes before reading.
    unsafe { v.set_len(n) };
    v
}

/// One [`vec_for_overwrite`] per length: a batch's per-depth output arrays.
///
/// # Safety
/// Every element of every vector must be written before it is read.
pub(crate) unsafe fn vecs_for_overwrite<T: Copy>(lens: &[usize]) -> Vec<Vec<T>> {
    // SAFETY: passed on to the caller
    lens.iter()
        .map(|&n| unsafe { vec_for_overwrite(n) })
        .collect()
}

/// [`vec_for_overwrite_huge`] with room for `cap` ≥ n items (the rest uninitialised).
///
/// # Safety
/// Every element must be written before it is read.
pub(crate) unsafe fn vec_with_capacity_for_overwrite<T: Copy>(n: usize, cap: usize) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(cap.max(n));
    advise_huge(
        v.as_mut_ptr() as usize,
        cap.max(n) * std::mem::size_of::<T>(),
    );
    // SAFETY: capacity ≥ n and T is Copy (no drop); the caller writes before reading.
    unsafe { v.set_len(n) };
    v
}

/// Reinterpret a `Vec<u64>` as `Vec<i64>` without copying (same size and alignment);
/// values ≥ 2^63 would turn negative, so callers only pass values below that.
pub(crate) fn u64_vec_as_i64(v: Vec<u64>) -> Vec<i64> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: u64 and i64 have identical size and alignment, so the allocation's layout
    // is unchanged; ownership moves to the new Vec (the old one is never dropped).
    unsafe { Vec::from_raw_parts(v.as_mut_ptr() as *mut i64, v.len(), v.capacity()) }
}

/// [`vec_for_overwrite`] for outputs written once with ordinary stores: buffers of
/// ≥ 4 MiB are advised `MADV_HUGEPAGE` on Linux before their first touch. A fresh
/// multi-megabyte output otherwise costs one page fault per 4 KiB, which on the VMs we
/// measure on costs as much as writing it (186 MB: ~68 ms with 4 KiB pages, ~27-36 ms
/// with huge pages). Not for buffers written with streaming stores (those measured
/// slower on huge pages). The advice is only a hint (contents are unchanged); where it is
/// refused the pages are simply small.
///
/// # Safety
/// Every element must be written before it is read.
pub(crate) unsafe fn vec_for_overwrite_huge<T: Copy>(n: usize) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(n);
    advise_huge(v.as_mut_ptr() as usize, n * std::mem::size_of::<T>());
    // SAFETY: capacity is n and T is Copy (no drop); the caller writes before reading.
    unsafe { v.set_len(n) };
    v
}

#[cfg(target_os = "linux")]
fn advise_huge(addr: usize, bytes: usize) {
    if bytes < HUGE_MIN_BYTES {
        return;
    }
    const PAGE: usize = 4096;
    let start = addr.div_ceil(PAGE) * PAGE;
    let end = (addr + bytes) / PAGE * PAGE;
    if end > start {
        // SAFETY: [start, end) lies inside an allocation this process owns; MADV_HUGEPAGE
        // only changes how future faults on it are served, never its contents. The
        // result is ignored on purpose: refusal leaves ordinary pages.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge(_addr: usize, _bytes: usize) {}
