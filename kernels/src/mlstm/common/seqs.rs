//! Packed variable-length batches (`tfla_params::seqs`): which chunks a sequence owns, and
//! which sequence a chunk belongs to. Without a sequence table (`seq_chunks` = 0) every head is
//! one sequence of all NC chunks.
use crate::arch::global;

/// Chunks [first, end) of sequence `n`.
///
/// # Safety
/// `table` is 0 or holds at least n + 2 readable, read-only u32.
#[inline(always)]
pub unsafe fn chunk_range(table: u64, num_chunks: u32, n: u32) -> (u32, u32) {
    if table == 0 {
        return (0, num_chunks);
    }
    let at = |i: u32| unsafe { global::ld_nc_b32_or_zero(true, table + i as u64 * 4) };
    (at(n), at(n + 1))
}

/// The sequence chunk `k` belongs to, and whether it is that sequence's first chunk (the
/// host's table is strictly increasing: every sequence has at least one step).
///
/// # Safety
/// `table` is 0 or holds `seqs` + 1 readable, read-only u32 with table[0] ≤ k < table[seqs].
#[inline(always)]
pub unsafe fn seq_of_chunk(table: u64, seqs: u32, k: u32) -> (u32, bool) {
    if table == 0 {
        return (0, k == 0);
    }
    let at = |i: u32| unsafe { global::ld_nc_b32_or_zero(true, table + i as u64 * 4) };
    // table[lo] ≤ k < table[hi].
    let (mut lo, mut hi) = (0, seqs.max(1));
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if at(mid) <= k {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo, at(lo) == k)
}
