//! State gradients on `wgmma` (sm_90a builds; `tfla_params::bwd::state_wg`): the reverse walk,
//! outputs and partial dots of `bwd_state` (see its docs for the notation), for the wide
//! 128 × 256 tile of dC̃ the forward's `chunk_state_wg` uses, held by two warpgroups as m64n256
//! accumulators (warp w: rows 16w .. 16w + 16 of the tile, all 256 columns).
//!
//! Per 16 steps each warp loads its A fragment of Q̂ᵀ (`ldmatrix.trans`) and weights it by the
//! steps' α ρ in registers, and the warpgroup multiplies it with the dH sub-tile straight from
//! shared memory (128-byte swizzle): one `wgmma` per 16 steps. The ñ column (weights α δ) rides
//! on `mma.sync`, as in `bwd_state`, once the sub-tile's products are done.
//!
//! Registers: the 128 accumulators leave ~125 for everything else, and the kernel takes all
//! 255. What stays outside the walk is not kept across it (the final-state dot is stored at
//! once, the thread's tile coordinates are re-read where used): one more live value and the
//! driver's compiler spills. `gpu_kernels` checks the driver's build for local memory.
use super::block::{self, Add};
use super::bwd_state_walk as walk;
use super::gates::GateKind;
use super::seqs::chunk_range;
use super::stage;
use crate::arch::convert::Elem;
use crate::arch::wgmma::{self, Hold, Wgmma};
use crate::arch::{cp_async, global, shared, thread};
use crate::tile::{RegTile, SmemTile, a_pos, acc_pos, leads_quad};
use tfla_params::bwd::state::{MAX_TILES, dots_per_head, final_dot, init_dot};
use tfla_params::bwd::{BwdParams, rows, state_wg::*};
use tfla_params::fwd::SMEM_ROW_PAD;

/// n-blocks (8 columns) of a warp's accumulator; bytes between the 64-column panels of a dH
/// sub-tile (the LBO of its descriptor).
const NB: usize = (TILE_HV / 8) as usize;
const PANEL_DH: u32 = SUB_L * 128;
const _: () = assert!(
    NB == 32 && SUB_L == 64 && STAGES == 3 && WARPGROUPS == 2,
    "the unroll! counts below assume 32 n-blocks, 64-step sub-tiles, 3 stages, 2 warpgroups"
);

/// # Safety
/// Launched with `grid(p)`, THREADS threads and `smem_bytes()` bytes of dynamic shared memory
/// after the rows kernel, on parameters validated by the host.
#[inline(always)]
pub unsafe fn bwd_state_wg<E: Elem + Wgmma, G: GateKind>(p: &BwdParams) {
    let tid = thread::thread_idx();
    let (lane, warp) = (tid % 32, tid / 32);
    let (bx, bh, seq) = thread::block_idx();
    let tiles_hv = p.dhv.div_ceil(TILE_HV);
    let (d0, v0) = ((bx / tiles_hv) * TILE_QK, (bx % tiles_hv) * TILE_HV);
    let (l, nc, s) = (p.chunk, p.num_chunks, p.s);
    let (dqk, dhv) = (p.dqk, p.dhv);

    // Shared memory: STAGES × dH sub-tile (swizzled, 1024-byte aligned), STAGES × (Q sub-tile,
    // the sub-tile's α ρ and α δ), scratch, the staging tile of dC̃ (TILE_QK × TILE_HV).
    let base = (shared::base() + ALIGN - 1) & !(ALIGN - 1);
    let stage_dh = |st: u32| base + st * dh_bytes();
    let stage_q = |st: u32| SmemTile {
        base: base + STAGES * dh_bytes() + st * q_bytes(),
        stride: (TILE_QK + SMEM_ROW_PAD) * 2,
    };
    let stage_w = |st: u32| stage_q(st).base + SUB_L * (TILE_QK + SMEM_ROW_PAD) * 2;
    let scratch = base + STAGES * (dh_bytes() + q_bytes());
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

    // Tile row of this thread's accumulator element e, and its first element (row, column in
    // the tile, in the state). Both from the thread index read where they are used
    // (`thread::thread_idx_here`), once per loop over the tile: the per-element addresses are
    // redone there instead of kept live across the walk (beside the 128 accumulators every
    // register counts: the driver's compiler spilled a kept warp offset).
    let row = |e: usize| {
        let t = thread::thread_idx_here();
        (t / 32) * 16 + acc_pos(t % 32, e).0
    };
    let local = || {
        let t = thread::thread_idx_here();
        ((t / 32) * 16 + (t % 32) / 4, (t % 4) * 2)
    };
    let origin = || {
        let (r, c) = local();
        (d0 + r, v0 + c)
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
        unroll!(32, nb => {
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
    let per_chunk = MAX_TILES as u64 * 4;
    if tid == 0 {
        unsafe { global::st_f32(dots + final_dot(nc, seq) as u64 * per_chunk, dot_final) };
    }

    // Items are SUB_L-step sub-tiles, walked from the last; chunk boundaries are multiples of
    // SUB_L, so item `it` lies in chunk it·SUB_L / L.
    let (item_lo, n_items) = (
        k_lo * (l / SUB_L),
        (k_hi * (l / SUB_L)).min(s.div_ceil(SUB_L)),
    );
    let issue = |it: u32| unsafe {
        let (st, j0) = (it % STAGES, it * SUB_L);
        stage::rows::<THREADS, { TILE_QK / 8 }>(stage_q(st), gq, (j0, s), (d0, dqk), SUB_L);
        stage::rows_sw128::<THREADS, { TILE_HV / 8 }>(stage_dh(st), gdh, (j0, s), (v0, dhv), SUB_L);
        stage::f32_vec::<THREADS>(stage_w(st), g_wq, (j0, s), SUB_L);
        stage::f32_vec::<THREADS>(stage_w(st) + 4 * SUB_L, g_wn, (j0, s), SUB_L);
        cp_async::commit();
    };
    // Two items ahead, walking down.
    issue(n_items - 1);
    if n_items >= item_lo + 2 {
        issue(n_items - 2);
    } else {
        unsafe { cp_async::commit() };
    }
    let ones = [E::pack(1.0, 1.0); 2];

    let mut k = k_hi;
    while k > k_lo {
        k -= 1;
        // Store dC'_{k+1}, through the staging tile (`stage::store_rows`: whole sectors).
        let hk = head * nc as u64 + k as u64;
        let (r0, c0) = local();
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

        // γ_k, from the chunk's gate scalars.
        let (g, m_k, cm_last) = unsafe { walk::gate_scalars::<G>(p, head, k) };
        let decay = walk::decay::<G>(g, m_k, cm_last);
        // A_k = γ_k ⟨dC'_{k+1}, C'_k⟩, this tile's part (the forget gates' share through the
        // decay of the state into the next chunk).
        let mut dot = 0f32;
        if k == k_lo && p.ptr.c0 != 0 {
            // C'_0 as given (f32), not rounded to the input dtype as the chunk states are. (A
            // branch around the whole loop: one inside it made the kernel 1.7× slower.)
            let o = origin();
            unroll!(32, nb => {
                for half in 0..2 {
                    let e = 2 * half;
                    let (idx, inside) = at(o, nb, e);
                    let x = unsafe { global::ld_v2_f32_or_zero(inside, p.ptr.c0 + (mat + idx) * 4) };
                    dot += acc.0[0][nb][e] * x[0] + acc.0[0][nb][e + 1] * x[1];
                }
            });
        } else {
            let o = origin();
            unroll!(32, nb => {
                for half in 0..2 {
                    let e = 2 * half;
                    let (idx, inside) = at(o, nb, e);
                    let ptr = p.ptr.c_states + (hk * (dqk as u64) * (dhv as u64) + idx) * 2;
                    let (x0, x1) = E::unpack(unsafe { global::ld_nc_f32_or_zero(inside, ptr) }.to_bits());
                    dot += acc.0[0][nb][e] * x0 + acc.0[0][nb][e + 1] * x1;
                }
            });
        }
        if with_n && leads_quad(lane) {
            for half in 0..2 {
                let r = d0 + row(2 * half);
                let ptr = p.ptr.n_states + (hk * dqk as u64 + r as u64) * 4;
                dot += nacc[2 * half] * unsafe { global::ld_nc_f32_or_zero(r < dqk, ptr) };
            }
        }
        let dot = unsafe { block::reduce::<Add, THREADS>(dot, scratch) };
        if tid == 0 {
            unsafe { global::st_f32(dots + k as u64 * MAX_TILES as u64 * 4, decay * dot) };
        }

        let w_max =
            unsafe { walk::weight_max::<THREADS>((g_wq, g_wn), (k * l, l.min(s - k * l)), tid) };
        let (wc, wn) = unsafe { walk::weight_scales::<THREADS>(w_max, decay, scratch) };
        let (scale_c, scale_n) = (p.scale / wc, p.scale / wn);
        let rescale = decay / wc;
        acc.scale(rescale);
        for x in nacc.iter_mut() {
            *x *= decay / wn;
        }

        let first_item = k * (l / SUB_L);
        let mut it = (first_item + l / SUB_L).min(n_items);
        while it > first_item {
            it -= 1;
            let next = (it >= item_lo + 2).then(|| it - 2);
            unsafe { stage::advance_by_for_wgmma::<2>(next, issue) };
            let st = it % STAGES;
            let (sq, sdh, sw) = (stage_q(st), stage_dh(st), stage_w(st));
            // The weighted A fragments of the sub-tile's four 16-step slices, all before the
            // fence: a register written between two `wgmma`s makes ptxas wait for the first.
            let mut a = [[0u32; 4]; 4];
            unroll!(4, ks => {
                let ks = ks as u32;
                let jj = ks * 16 + a_pos(lane, 0).1;
                let q = unsafe { sq.a_trans(ks * 16, warp * 16, lane) };
                a[ks as usize] = unsafe { walk::weighted::<E>(q, sw, jj, scale_c) };
            });
            unsafe {
                wgmma::fence();
                unroll!(4, ks => {
                    E::rs_n256_mn(acc.flat_mut(), a[ks], wgmma::mn_major(sdh, ks as u32, PANEL_DH));
                });
                wgmma::commit();
                wgmma::wait_all();
            }
            acc.flat_mut::<{ 4 * NB }>().hold();
            if with_n {
                // The ñ column (weights α δ) after the products, from a second `ldmatrix` of
                // the Q fragment: beside the 128 accumulators and the A fragments the
                // registers do not hold both weightings at once.
                unroll!(4, ks => {
                    let ks = ks as u32;
                    let jj = ks * 16 + a_pos(lane, 0).1;
                    let q = unsafe { sq.a_trans(ks * 16, warp * 16, lane) };
                    let an = unsafe { walk::weighted::<E>(q, sw + 4 * SUB_L, jj, scale_n) };
                    unsafe { E::mma(&mut nacc, an, ones) };
                });
            }
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
    unroll!(32, nb => {
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
        unsafe { global::st_f32(dots + init_dot(nc, seq) as u64 * per_chunk, dot_init) };
    }
}
