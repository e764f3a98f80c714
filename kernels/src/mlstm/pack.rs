//! Repacking a variable-length batch (`tfla_params::seqs`): rows of `words` u32 between the
//! packed (T, NH, ·) layout and the padded per-head (NH, T', ·) one the kernels run on. One
//! thread per destination word; packing writes every padded step (`pad` where a sequence has
//! ended), unpacking every packed step.
use super::seqs::seq_of_chunk;
use crate::arch::{global, thread};
use tfla_params::seqs::{PackParams, pack::THREADS};

/// # Safety
/// Launched with `pack::grid(p)` and THREADS threads; `cu_seqlens` and `seq_chunks` hold
/// `seqs` + 1 u32 checked by the host (strictly increasing, from 0 to T and to T' / L), `src`
/// and `dst` the two layouts' rows of `words` u32.
#[inline(always)]
pub unsafe fn varlen_pack(p: &PackParams) {
    let (bx, h, _) = thread::block_idx();
    let x = bx * THREADS + thread::thread_idx();
    let words = p.words.max(1);
    let steps = if p.unpack != 0 { p.total } else { p.padded };
    if x >= steps * words {
        return;
    }
    let (step, w) = (x / words, x % words);
    let cu = |n: u32| unsafe { global::ld_nc_b32_or_zero(true, p.cu_seqlens + n as u64 * 4) };
    let first_chunk =
        |n: u32| unsafe { global::ld_nc_b32_or_zero(true, p.seq_chunks + n as u64 * 4) };
    let padded_at =
        |t: u32| ((h as u64 * p.padded as u64 + t as u64) * words as u64 + w as u64) * 4;
    let packed_at = |t: u32| ((t as u64 * p.nh as u64 + h as u64) * words as u64 + w as u64) * 4;
    unsafe {
        if p.unpack == 0 {
            // Padded step `step` is step `local` of sequence n.
            let (n, _) = seq_of_chunk(p.seq_chunks, p.seqs, step / p.chunk.max(1));
            let local = step - first_chunk(n) * p.chunk;
            let (first, end) = (cu(n), cu(n + 1));
            let v = if local < end - first {
                global::ld_nc_b32_or_zero(true, p.src + packed_at(first + local))
            } else {
                p.pad
            };
            global::st_b32(p.dst + padded_at(step), v);
        } else {
            // Packed step `step` of sequence n sits at its chunk offset in the padded layout.
            let (n, _) = seq_of_chunk(p.cu_seqlens, p.seqs, step);
            let t = first_chunk(n) * p.chunk + (step - cu(n));
            let v = global::ld_nc_b32_or_zero(true, p.src + padded_at(t));
            global::st_b32(p.dst + packed_at(step), v);
        }
    }
}
