//! Backward, gate gradients (one block per chunk and head).
//!
//! Input gates: dι_j = k_j·dk_j (`shared/MATH.md`; the dk kernel wrote the row dots).
//!
//! Forget gates, for step τ of chunk k (m held constant):
//!   dλ_τ = A_k + Σ_{j<τ} Kinter_j + Σ_{i≥τ} Qinter_i + Σ_{s<τ} (Cs_s − R_s)
//! with A_k = γ_k ⟨dC'_{k+1}, C'_k⟩ (state kernel), Kinter_j = k_j·(inter-chunk part of dk_j),
//! Qinter_i = q̂_i·(inter-chunk part of dq̂_i) (combine kernels), and R_s, Cs_s the row and
//! column sums of the pair gradients G_ij (j < i) of the chunk (score kernel): λ_τ scales the
//! pairs j < τ ≤ i, the readouts of C'_k by rows i ≥ τ, the weights of steps j < τ in C'_{k+1}
//! and the decay of C'_k into it; everything after the chunk enters through dC'_{k+1}. The
//! familiar identity dλ_t = Σ_{i≥t}(q̂_i·dq̂_i − k_i·dk_i) + ⟨dC'_S, C'_S⟩ gives the same number
//! in exact arithmetic, but it subtracts O(1) terms whose difference is tiny where forget gates
//! are near 0 (each diagonal pair appears in both dots, rounded differently in 16-bit
//! products); here every term is a share of the gradient itself, so a chunk needs one prefix
//! and one suffix sum of its own steps and nothing from other chunks.
//!
//! mLSTMexp in Exact mode adds the path through the max state on top (`bwd_max_path`).
use super::block::{self, Add};
use super::gates::GateKind;
use super::seqs::seq_of_chunk;
use crate::arch::{global, math, shared, shfl, thread};
use tfla_params::bwd::combine::{self, DOT_K, DOT_K_INTER, DOT_Q_INTER};
use tfla_params::bwd::{BwdParams, gates::*, scores, state, state_tiles};

/// # Safety
/// Launched with `grid(p)`, THREADS threads and `smem_bytes(p.chunk)` bytes of dynamic shared
/// memory after the state, score and combine kernels, on parameters validated by the host.
#[inline(always)]
pub unsafe fn bwd_gates<G: GateKind>(p: &BwdParams) {
    let tid = thread::thread_idx();
    let (k, bh, _) = thread::block_idx();
    let (l, s, nc) = (p.chunk, p.s, p.num_chunks);
    let t0 = k * l;
    let len = l.min(s - t0);
    let head = bh as u64;
    let padded = (nc * l) as u64;
    let tiles = scores::tiles(l);
    let sy = shared::base(); // Kinter + Cs − R, then its inclusive prefix sums
    let sq = sy + 4 * l; // Qinter in reverse order, then its inclusive prefix sums
    let scratch = sq + 4 * l;
    let sa = scratch + 4 * WARPS; // A_k

    // Row dot plane `plane` of chunk step τ, summed over the column tiles.
    let col_tiles = combine::col_tiles(p.dqk);
    let row_dot = |plane: u32, tau: u32| {
        let row = plane as u64 * p.bh as u64 * padded + head * padded + (t0 + tau) as u64;
        let mut v = 0f32;
        for ct in 0..col_tiles {
            v += unsafe {
                global::ld_nc_f32(p.ptr.row_dots + (row * col_tiles as u64 + ct as u64) * 4)
            };
        }
        v
    };
    let mut tau = tid;
    while tau < len {
        // Row sums over the column tiles up to the diagonal, column sums over the row tiles
        // from it to the chunk's last valid one.
        let own = tau / scores::TILE;
        let pair = |plane: u32, tile: u32| unsafe {
            let row = plane as u64 * p.bh as u64 * padded + head * padded + (t0 + tau) as u64;
            global::ld_nc_f32(p.ptr.pair_sums + (row * tiles as u64 + tile as u64) * 4)
        };
        let mut y = row_dot(DOT_K_INTER, tau);
        for jt in 0..=own {
            y -= pair(0, jt);
        }
        for it in own..len.div_ceil(scores::TILE) {
            y += pair(1, it);
        }
        unsafe {
            shared::st_f32(sy + 4 * tau, y);
            shared::st_f32(sq + 4 * (len - 1 - tau), row_dot(DOT_Q_INTER, tau));
        }
        tau += THREADS;
    }
    // A_k, summed over the state tiles by the first warp.
    if tid < 32 {
        // (The tile count of the state-gradient kernel this build runs.)
        let state_tiles = state_tiles(p.chunk, p.dqk, p.dhv, cfg!(target_feature = "sm_90a"));
        let at = (head * state::dots_per_head(nc, p.seqs) as u64 + k as u64)
            * state::MAX_TILES as u64
            + tid as u64;
        let mut a =
            unsafe { global::ld_nc_f32_or_zero(tid < state_tiles, p.ptr.state_dots + at * 4) };
        unroll!(5, b => {
            a += unsafe { shfl::xor_f32(a, 16 >> b) };
        });
        if tid == 0 {
            unsafe { shared::st_f32(sa, a) };
        }
    }
    unsafe {
        thread::sync_threads();
        block::scan::<Add, THREADS>(sy, len, scratch);
        block::scan::<Add, THREADS>(sq, len, scratch);
    }
    let a_k = unsafe { shared::ld_f32(sa) };
    let mut tau = tid;
    while tau < len {
        let t = (t0 + tau) as u64;
        let prefix = if tau > 0 {
            unsafe { shared::ld_f32(sy + 4 * (tau - 1)) }
        } else {
            0.0
        };
        let suffix = unsafe { shared::ld_f32(sq + 4 * (len - 1 - tau)) };
        let dlambda = a_k + prefix + suffix;
        let diota = row_dot(DOT_K, tau);
        let at = (head * s as u64 + t) * 4;
        let (ftil, itil) = unsafe {
            (
                global::ld_nc_f32(p.ptr.f + at),
                global::ld_nc_f32(p.ptr.i + at),
            )
        };
        let di = if G::STABILIZED {
            diota
        } else {
            diota * math::sigmoid(-itil)
        };
        unsafe {
            global::st_f32(p.ptr.di + at, di);
            global::st_f32(p.ptr.df + at, dlambda * math::sigmoid(-ftil));
        }
        tau += THREADS;
    }
    // dm0 without the max-state path (mLSTMsig, or DetachedNormalizer): zero.
    let max_path = G::STABILIZED && p.exact != 0;
    let (seq, first) = unsafe { seq_of_chunk(p.ptr.seq_chunks, p.seqs, k) };
    if !max_path && first && tid == 0 && p.ptr.dm0 != 0 {
        let sh = seq as u64 * p.bh as u64 + head;
        unsafe { global::st_f32(p.ptr.dm0 + sh * 4, 0.0) };
    }
}
