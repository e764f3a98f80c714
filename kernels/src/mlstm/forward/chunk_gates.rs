//! Chunk gates (forward): for one chunk of one head, the gate vectors the other two kernels
//! read, so they need no scans.
//!
//! Notation as in `chunk_state`: inside chunk k (local index j < len), λ_j = logσ(f̃_j), ι_j the
//! log input gate. Writes, per step, b_j = Σ_{s≤j} λ_s, u_j = ι_j − b_j and (stabilized
//! variant) cm_j = max_{s≤j} u_s; per chunk, g = b_{len−1}. In these terms the state update's
//! weights are e^{g + u_j − m} and the output's row max is m_i = b_i + max(m_k, cm_i).
//!
//! The block of each sequence's first chunk (chunk 0, or each sequence's first in a packed
//! variable-length batch, `super::seqs`) also writes the sequence's ñ0 and m0 (zeros where
//! absent; m_0 = 0 without the stabilizer) into the chunk states there: the state kernels read
//! them there, never from n0, m0, which may be the memory their final states overwrite (a
//! state pool, `super::slots`).
use super::block::{self, Add, Max};
use super::gates::GateKind;
use super::seqs::seq_of_chunk;
use super::slots::state_head;
use crate::arch::{global, math, shared, thread};
use tfla_params::fwd::{FwdParams, gates::*};
use tfla_params::seqs::PAD_I;

/// # Safety
/// Launched with `grid(p)`, THREADS threads and `smem_bytes(p.chunk)` bytes of dynamic shared
/// memory, on parameters validated by the host.
#[inline(always)]
pub unsafe fn chunk_gates<G: GateKind>(p: &FwdParams) {
    let tid = thread::thread_idx();
    let (k, bh, _) = thread::block_idx();
    let (l, s) = (p.chunk, p.s);
    let t0 = k * l;
    let len = l.min(s - t0);
    let sb = shared::base();
    let su = sb + 4 * l;
    let scratch = su + 4 * l;
    // First step of the chunk in the (BH, NC·L) gate vectors (chunk-padded rows keep every
    // chunk 16-byte aligned for the consumers' `cp.async`).
    let row = bh as u64 * (p.num_chunks * l) as u64 + t0 as u64;
    let in_row = bh as u64 * s as u64 + t0 as u64; // the same step in the (BH, S) inputs
    unsafe {
        // Steps past S (the last chunk's padding rows, which the consumers stage with the
        // rest) are written as padding steps that change nothing (λ = 0, ĩ = PAD_I, as in a
        // packed batch's padding): never left uninitialized for a `cp.async` to read.
        let mut j = tid;
        while j < l {
            let lambda = if j < len {
                math::log_sigmoid(global::ld_nc_f32(p.ptr.f + (in_row + j as u64) * 4))
            } else {
                0.0
            };
            shared::st_f32(sb + 4 * j, lambda);
            j += THREADS;
        }
        thread::sync_threads();
        block::scan::<Add, THREADS>(sb, l, scratch);
        let mut j = tid;
        while j < l {
            let b = shared::ld_f32(sb + 4 * j);
            let i = if j < len {
                global::ld_nc_f32(p.ptr.i + (in_row + j as u64) * 4)
            } else {
                PAD_I
            };
            let u = G::log_input(i) - b;
            global::st_f32(p.ptr.gate_b + (row + j as u64) * 4, b);
            global::st_f32(p.ptr.gate_u + (row + j as u64) * 4, u);
            shared::st_f32(su + 4 * j, u);
            j += THREADS;
        }
        if tid == 0 {
            global::st_f32(
                p.ptr.gate_g + (bh as u64 * p.num_chunks as u64 + k as u64) * 4,
                shared::ld_f32(sb + 4 * (len - 1)),
            );
        }
        // cm: the running max of u (the stabilized variant); zeros without a max state, which
        // the consumers stage all the same.
        if G::STABILIZED {
            thread::sync_threads();
            block::scan::<Max, THREADS>(su, l, scratch);
        }
        let mut j = tid;
        while j < l {
            let cm = if G::STABILIZED {
                shared::ld_f32(su + 4 * j)
            } else {
                0.0
            };
            global::st_f32(p.ptr.gate_cm + (row + j as u64) * 4, cm);
            j += THREADS;
        }
        // ñ_k of this chunk: ñ0 at a sequence's first chunk, zeros elsewhere. The state kernels
        // overwrite the other chunks with the normalizer; without it (where the host passes
        // n0 = 0 and no kernel forms ñ) the chunk states come back as zeros, not stale memory.
        let (n, first) = seq_of_chunk(p.ptr.seq_chunks, p.seqs, k);
        let sh = state_head(p, bh, n);
        let hk = bh as u64 * p.num_chunks as u64 + k as u64; // (head, chunk k)
        let dqk = p.dqk as u64;
        let from_n0 = first && p.ptr.n0 != 0;
        let mut d = tid;
        while d < p.dqk {
            let x = global::ld_nc_f32_or_zero(from_n0, p.ptr.n0 + (sh * dqk + d as u64) * 4);
            global::st_f32(p.ptr.n_states + (hk * dqk + d as u64) * 4, x);
            d += THREADS;
        }
        if first && tid == 0 {
            let m0 = global::ld_nc_f32_or_zero(G::STABILIZED && p.ptr.m0 != 0, p.ptr.m0 + sh * 4);
            global::st_f32(p.ptr.m_states + hk * 4, m0);
        }
    }
}
