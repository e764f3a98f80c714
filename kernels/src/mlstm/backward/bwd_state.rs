//! Backward, state gradients (inter-chunk, reverse): for one head and one TILE_QK × TILE_HV
//! tile of dC̃, walk the chunks from the last to the first and write the gradient of the state
//! after each chunk.
//!
//! With the normalizer as a value column (`shared/MATH.md`, the reference's
//! `chunkwise_backward`), C'_k = [C̃_k | ñ_k] and dnum'_i = [dh_i ρ_i, δ_i]:
//!   dC'_k = γ_k dC'_{k+1} + Σ_i α_i q̂_i dnum'_iᵀ,   γ_k = e^{g + m_k − m_{k+1}},
//! seeded with the final-state gradient (dñ only in Exact mode). The products Q̂ᵀ(dH ⊙ ·) run
//! on the tensor cores exactly as the forward's K̃ᵀV (`chunk_state`): each warp holds 16 rows
//! (DQK) × TILE_HV columns in registers for the whole walk, Q and dH stream through a two-deep
//! `cp.async` ring of SUB_L-step sub-tiles, and the row weights α_i ρ_i (and α_i δ_i for the
//! ñ column, a second weighting of the same Q fragment) are applied in registers.
//!
//! Writes dC̃_{k+1} (input dtype: the dk and dv kernels consume it rounded for their `mma`) and
//! dñ_{k+1} (f32) for every chunk k, dC̃_0, dñ_0 (f32) when asked, and per tile the partial
//! dots the gate gradients need: γ_k ⟨dC'_{k+1}, C'_k⟩ for every chunk, ⟨dC'_0, C'_0⟩ and
//! ⟨dC'_S, C'_S⟩.
use super::block::{self, Add};
use super::bwd_state_walk as walk;
use super::gates::GateKind;
use super::seqs::chunk_range;
use super::stage;
use crate::arch::convert::Elem;
use crate::arch::{cp_async, global, shared, thread};
use crate::tile::{RegTile, SmemTile, a_pos, acc_pos, leads_quad};
use tfla_params::bwd::{BwdParams, rows, state::*};
use tfla_params::fwd::SMEM_ROW_PAD;

const NB: usize = (TILE_HV / 8) as usize;
const _: () = assert!(
    NB == 16 && SUB_L == 64,
    "the unroll! counts below assume 16 n-blocks and 64-step sub-tiles"
);

/// # Safety
/// Launched with `grid(p)`, THREADS threads and `smem_bytes()` bytes of dynamic shared memory
/// after the rows kernel, on parameters validated by the host.
#[inline(always)]
pub unsafe fn bwd_state<E: Elem, G: GateKind>(p: &BwdParams) {
    let tid = thread::thread_idx();
    let (lane, warp) = (tid % 32, tid / 32);
    let (bx, bh, seq) = thread::block_idx();
    let tiles_hv = p.dhv.div_ceil(TILE_HV);
    let (d0, v0) = ((bx / tiles_hv) * TILE_QK, (bx % tiles_hv) * TILE_HV);
    let (l, nc, s) = (p.chunk, p.num_chunks, p.s);
    let (dqk, dhv) = (p.dqk, p.dhv);

    // Shared memory: STAGES × (Q sub-tile, dH sub-tile, the sub-tile's α ρ and α δ), scratch,
    // the staging tile of dC̃ (TILE_QK × TILE_HV).
    let stage_q = |st: u32| SmemTile {
        base: shared::base() + st * stage_bytes(),
        stride: (TILE_QK + SMEM_ROW_PAD) * 2,
    };
    let stage_dh = |st: u32| SmemTile {
        base: stage_q(st).base + q_bytes(),
        stride: (TILE_HV + SMEM_ROW_PAD) * 2,
    };
    let stage_w = |st: u32| stage_dh(st).base + dh_bytes();
    let scratch = shared::base() + STAGES * stage_bytes();
    let staging = SmemTile {
        base: scratch + WARPS * 4,
        stride: (TILE_HV + SMEM_ROW_PAD) * 2,
    };

    let head = bh as u64;
    let gq = p.ptr.q + head * (s as u64) * (dqk as u64) * 2;
    let gdh = p.ptr.dh + head * (s as u64) * (dhv as u64) * 2;
    let padded = (nc * l) as u64;
    let coef =
        |plane: u32| p.ptr.row_coef + (plane as u64 * p.bh as u64 * padded + head * padded) * 4;
    let (g_wq, g_wn) = (coef(rows::WQ), coef(rows::WN));

    let row = |e: usize| warp * 16 + acc_pos(lane, e).0;
    // This thread's first accumulator element (row, column in the state), through
    // `thread::opaque`: call once per loop over the tile, so the per-element addresses are
    // redone there instead of kept live across the walk (32 × 64-bit; the driver's compiler
    // spilled them).
    let origin = || {
        let lane = thread::opaque(lane);
        (d0 + warp * 16 + acc_pos(lane, 0).0, v0 + acc_pos(lane, 0).1)
    };
    // Element offset of accumulator pair (nb, e) in a (DQK, DHV) matrix, and whether it exists.
    let at = |(r0, c0): (u32, u32), nb: usize, e: usize| {
        let (r, c) = (r0 + (e as u32 / 2) * 8, c0 + nb as u32 * 8);
        ((r * dhv + c) as u64, r < dqk && c < dhv)
    };
    // This block's chunks [k_lo, k_hi) (all, or one sequence's: `super::seqs`), and the state
    // head of its initial and final states and their gradients (B = 1 when packed).
    let (k_lo, k_hi) = unsafe { chunk_range(p.ptr.seq_chunks, nc, seq) };
    let sh = seq as u64 * p.bh as u64 + head;
    let mat = sh * (dqk as u64) * (dhv as u64);
    // This tile's entry of chunk 0 in the (BH, dots_per_head, MAX_TILES) state dots.
    let dots = p.ptr.state_dots
        + ((head * dots_per_head(nc, p.seqs) as u64) * MAX_TILES as u64 + bx as u64) * 4;
    let vec = sh * dqk as u64;

    // ñ rides along as a value column of ones in the blocks of the first DHV tile (as in the
    // forward): `nacc` holds dñ of the warp's rows g and g+8 in elements 0 and 2.
    let normalizer = G::NORMALIZED && p.exact != 0;
    let with_n = normalizer && v0 == 0;
    let mut acc = RegTile::<1, NB>::ZERO;
    let mut nacc = [0f32; 4];
    let mut dot_final = 0f32;
    if p.ptr.dc_final != 0 {
        let o = origin();
        unroll!(16, nb => {
            for half in 0..2 {
                let e = 2 * half;
                let (idx, inside) = at(o, nb, e);
                let x = unsafe { global::ld_v2_f32_or_zero(inside, p.ptr.dc_final + (mat + idx) * 4) };
                let c = unsafe { global::ld_v2_f32_or_zero(inside, p.ptr.c_final + (mat + idx) * 4) };
                acc.0[0][nb][e] = x[0];
                acc.0[0][nb][e + 1] = x[1];
                dot_final += x[0] * c[0] + x[1] * c[1];
            }
        });
    }
    if with_n && p.ptr.dn_final != 0 {
        let row = |half| d0 + row(2 * half);
        unsafe { walk::seed_n(p, row, vec, lane, &mut nacc, &mut dot_final) };
    }
    let dot_final = unsafe { block::reduce::<Add, THREADS>(dot_final, scratch) };

    // Items are SUB_L-step sub-tiles, walked from the last; chunk boundaries are multiples of
    // SUB_L, so item `it` lies in chunk it·SUB_L / L.
    let (item_lo, n_items) = (
        k_lo * (l / SUB_L),
        (k_hi * (l / SUB_L)).min(s.div_ceil(SUB_L)),
    );
    let issue = |it: u32| unsafe {
        let (st, j0) = (it % STAGES, it * SUB_L);
        stage::rows::<THREADS, { TILE_QK / 8 }>(stage_q(st), gq, (j0, s), (d0, dqk), SUB_L);
        stage::rows::<THREADS, { TILE_HV / 8 }>(stage_dh(st), gdh, (j0, s), (v0, dhv), SUB_L);
        stage::f32_vec::<THREADS>(stage_w(st), g_wq, (j0, s), SUB_L);
        stage::f32_vec::<THREADS>(stage_w(st) + 4 * SUB_L, g_wn, (j0, s), SUB_L);
        cp_async::commit();
    };
    issue(n_items - 1);
    let ones = [E::pack(1.0, 1.0); 2];

    let mut k = k_hi;
    while k > k_lo {
        k -= 1;
        // Store dC'_{k+1}, through the staging tile (`stage::store_rows`: whole sectors).
        let hk = head * nc as u64 + k as u64;
        let (r0, c0) = (
            thread::opaque(warp * 16 + acc_pos(lane, 0).0),
            acc_pos(lane, 0).1,
        );
        unsafe {
            walk::store_dc::<NB, THREADS, { TILE_HV / 8 }>(
                p,
                staging,
                hk,
                (d0, v0),
                (r0, c0),
                TILE_QK,
                |nb, half| E::pack(acc.0[0][nb][2 * half], acc.0[0][nb][2 * half + 1]),
            )
        };
        if with_n && leads_quad(lane) {
            unsafe { walk::store_dn(p, |half| d0 + row(2 * half), hk, &nacc) };
        }

        // The chunk's reads from memory before its products (γ_k's gate scalars, C'_k for A_k,
        // the largest row weights) are all issued before any of them is used: one round trip
        // per chunk on the walk's critical path instead of three.
        let (g, m_k, cm_last) = unsafe { walk::gate_scalars::<G>(p, head, k) };
        // C'_0 as given (f32), not rounded to the input dtype as the chunk states are, is read
        // in its own loop below. (Branches around whole loops: one inside made the kernel 1.7×
        // slower.)
        let from_c0 = k == k_lo && p.ptr.c0 != 0;
        let mut c_k = [[0u32; 2]; NB];
        if !from_c0 {
            let o = origin();
            unroll!(16, nb => {
                // (Indexed: the iterator form clippy suggests costs 56 more predicate
                // computations in the SASS.)
                #[allow(clippy::needless_range_loop)]
                for half in 0..2 {
                    let (idx, inside) = at(o, nb, 2 * half);
                    let ptr = p.ptr.c_states + (hk * (dqk as u64) * (dhv as u64) + idx) * 2;
                    c_k[nb][half] = unsafe { global::ld_nc_f32_or_zero(inside, ptr) }.to_bits();
                }
            });
        }
        let mut n_k = [0f32; 2];
        if with_n && leads_quad(lane) {
            for (half, n) in n_k.iter_mut().enumerate() {
                let r = d0 + row(2 * half);
                let ptr = p.ptr.n_states + (hk * dqk as u64 + r as u64) * 4;
                *n = unsafe { global::ld_nc_f32_or_zero(r < dqk, ptr) };
            }
        }
        let w_max =
            unsafe { walk::weight_max::<THREADS>((g_wq, g_wn), (k * l, l.min(s - k * l)), tid) };
        let decay = walk::decay::<G>(g, m_k, cm_last);
        // A_k = γ_k ⟨dC'_{k+1}, C'_k⟩, this tile's part (the forget gates' share through the
        // decay of the state into the next chunk).
        let mut dot = 0f32;
        if from_c0 {
            let o = origin();
            unroll!(16, nb => {
                for half in 0..2 {
                    let e = 2 * half;
                    let (idx, inside) = at(o, nb, e);
                    let x = unsafe { global::ld_v2_f32_or_zero(inside, p.ptr.c0 + (mat + idx) * 4) };
                    dot += acc.0[0][nb][e] * x[0] + acc.0[0][nb][e + 1] * x[1];
                }
            });
        } else {
            unroll!(16, nb => {
                #[allow(clippy::needless_range_loop)]
                for half in 0..2 {
                    let e = 2 * half;
                    let (x0, x1) = E::unpack(c_k[nb][half]);
                    dot += acc.0[0][nb][e] * x0 + acc.0[0][nb][e + 1] * x1;
                }
            });
        }
        if with_n && leads_quad(lane) {
            for (half, n) in n_k.iter().enumerate() {
                dot += nacc[2 * half] * n;
            }
        }
        let dot = unsafe { block::reduce::<Add, THREADS>(dot, scratch) };
        if tid == 0 {
            unsafe { global::st_f32(dots + k as u64 * MAX_TILES as u64 * 4, decay * dot) };
        }

        let (wc, wn) = unsafe { walk::weight_scales::<THREADS>(w_max, decay, scratch) };
        let (scale_c, scale_n) = (p.scale / wc, p.scale / wn);
        acc.scale(decay / wc);
        for x in nacc.iter_mut() {
            *x *= decay / wn;
        }

        let first_item = k * (l / SUB_L);
        let mut it = (first_item + l / SUB_L).min(n_items);
        while it > first_item {
            it -= 1;
            unsafe { stage::advance((it > item_lo).then(|| it - 1), issue) };
            let st = it % STAGES;
            let (sq, sdh, sw) = (stage_q(st), stage_dh(st), stage_w(st));
            unroll!(4, ks => {
                let ks = ks as u32;
                let jj = ks * 16 + a_pos(lane, 0).1;
                let q = unsafe { sq.a_trans(ks * 16, warp * 16, lane) };
                let a = unsafe { walk::weighted::<E>(q, sw, jj, scale_c) };
                unroll!(8, pair => {
                    let b = unsafe { sdh.b_kn(ks * 16, pair as u32 * 16, lane) };
                    unsafe {
                        E::mma(&mut acc.0[0][2 * pair], a, b[0]);
                        E::mma(&mut acc.0[0][2 * pair + 1], a, b[1]);
                    }
                });
                if with_n {
                    let an = unsafe { walk::weighted::<E>(q, sw + 4 * SUB_L, jj, scale_n) };
                    unsafe { E::mma(&mut nacc, an, ones) };
                }
            });
            unsafe { thread::sync_threads() };
        }
        acc.scale(wc);
        for x in nacc.iter_mut() {
            *x *= wn;
        }
    }

    // dC'_0: the initial-state gradient, and its dot with the initial state.
    let mut dot_init = 0f32;
    let o = origin();
    unroll!(16, nb => {
        for half in 0..2 {
            let e = 2 * half;
            let (idx, inside) = at(o, nb, e);
            let v = [acc.0[0][nb][e], acc.0[0][nb][e + 1]];
            if p.ptr.dc0 != 0 {
                unsafe { global::st_v2_f32_if(inside, p.ptr.dc0 + (mat + idx) * 4, v) };
            }
            if p.ptr.c0 != 0 {
                let c = unsafe { global::ld_v2_f32_or_zero(inside, p.ptr.c0 + (mat + idx) * 4) };
                dot_init += v[0] * c[0] + v[1] * c[1];
            }
        }
    });
    if v0 == 0 && leads_quad(lane) {
        let row = |half| d0 + row(2 * half);
        unsafe { walk::initial_n(p, row, vec, &nacc, &mut dot_init) };
    }
    let dot_init = unsafe { block::reduce::<Add, THREADS>(dot_init, scratch) };
    if tid == 0 {
        let per_chunk = MAX_TILES as u64 * 4;
        unsafe {
            global::st_f32(dots + init_dot(nc, seq) as u64 * per_chunk, dot_init);
            global::st_f32(dots + final_dot(nc, seq) as u64 * per_chunk, dot_final);
        }
    }
}
