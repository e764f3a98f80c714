//! Repacking a variable-length batch (`tfla_params::seqs`): rows of `words` u32 between the
//! packed (T, NH, ·) layout and the padded per-head (NH, T', ·) one the kernels run on. One
//! warp per destination row: it finds the row's sequence once (a binary search over the
//! offsets, the same loads in every lane) and copies the row 16 bytes per lane where rows are
//! whole 16-byte vectors (q, k, v, h, gradients), 4 otherwise (gates). Packing writes every
//! padded step (`pad` where a sequence has ended), unpacking every packed step.
use super::seqs::seq_of_chunk;
use crate::arch::{global, thread};
use tfla_params::seqs::{PackParams, pack::*};

/// # Safety
/// Launched with `pack::grid(p)` and THREADS threads; `cu_seqlens` and `seq_chunks` hold
/// `seqs` + 1 u32 checked by the host (strictly increasing, from 0 to T and to T' / L), `src`
/// and `dst` the two layouts' rows of `words` u32, 16-byte aligned.
#[inline(always)]
pub unsafe fn varlen_pack(p: &PackParams) {
    let (bx, h, _) = thread::block_idx();
    let (lane, warp) = (thread::thread_idx() % 32, thread::thread_idx() / 32);
    let step = bx * ROWS + warp;
    let steps = if p.unpack != 0 { p.total } else { p.padded };
    if step >= steps {
        return;
    }
    let words = p.words.max(1) as u64;
    let cu = |n: u32| unsafe { global::ld_nc_b32_or_zero(true, p.cu_seqlens + n as u64 * 4) };
    let first_chunk =
        |n: u32| unsafe { global::ld_nc_b32_or_zero(true, p.seq_chunks + n as u64 * 4) };
    let padded_row = |t: u32| (h as u64 * p.padded as u64 + t as u64) * words * 4;
    let packed_row = |t: u32| (t as u64 * p.nh as u64 + h as u64) * words * 4;
    // (source row, destination row), or no source: a padding step.
    let (src, dst) = unsafe {
        if p.unpack == 0 {
            // Padded step `step` is step `local` of sequence n.
            let (n, _) = seq_of_chunk(p.seq_chunks, p.seqs, step / p.chunk.max(1));
            let local = step - first_chunk(n) * p.chunk;
            let (start, end) = (cu(n), cu(n + 1));
            let src = (local < end - start).then(|| packed_row(start + local));
            (src, padded_row(step))
        } else {
            // Packed step `step` of sequence n sits at its chunk offset in the padded layout.
            let (n, _) = seq_of_chunk(p.cu_seqlens, p.seqs, step);
            let t = first_chunk(n) * p.chunk + (step - cu(n));
            (Some(padded_row(t)), packed_row(step))
        }
    };
    let pad = [p.pad; 4];
    unsafe {
        if words.is_multiple_of(4) {
            let mut w = 4 * lane as u64;
            while w < words {
                let v = match src {
                    Some(s) => global::ld_nc_v4(p.src + s + w * 4),
                    None => pad,
                };
                global::st_v4_b32_if(true, p.dst + dst + w * 4, v);
                w += 128;
            }
        } else {
            let mut w = lane as u64;
            while w < words {
                let v = match src {
                    Some(s) => global::ld_nc_b32_or_zero(true, p.src + s + w * 4),
                    None => p.pad,
                };
                global::st_b32(p.dst + dst + w * 4, v);
                w += 32;
            }
        }
    }
}
