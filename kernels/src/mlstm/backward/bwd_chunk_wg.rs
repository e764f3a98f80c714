//! Backward, the chunk gradients on `wgmma` (sm_90a builds; `tfla_params::bwd::chunk_wg`):
//! what `bwd_chunk` computes for one chunk of small heads (same math, notation, outputs and
//! roundings, the gating and row terms shared through `bwd_chunk_terms`), by two warpgroups of
//! 64 rows instead of eight warps of 16.
//!
//! `bwd_chunk`'s warps each multiply their 16 rows by B operands they read whole from shared
//! memory through `ldmatrix`: every B tile is read eight times per product, and the `mma.sync`
//! stream left the kernel latency-bound (an instruction issued in a third of the cycles). Here
//! each product is one `wgmma` per k16 step for a warpgroup's 64 rows, B read by the tensor
//! cores through a descriptor (twice per product, once per warpgroup), asynchronously.
//!
//! The operands are staged whole as in `bwd_chunk` (three `cp.async` groups in the order they
//! are needed), in the 128-byte swizzle (`stage::rows_sw128`: two 64-column panels each).
//! Warpgroup g owns rows 64g .. 64g + 64 of every product, so warp w still owns rows 16w .. of
//! every tile (the accumulators are the warps' `mma.sync` fragments stacked), and its passes
//! are `bwd_chunk`'s:
//! 1. dq: dH·C̃_kᵀ (B = C̃_k K-major), per key tile up to its rows S = Q·Kᵀ and dS = dH·Vᵀ
//!    (m64n64, B K-major), gated into dP, the register A operand of dP·K (K MN-major);
//! 2. dv: K·dC̃_{k+1} (B MN-major), per query tile from its rows Sᵀ = K·Qᵀ gated into Pᵀ,
//!    A of Pᵀ·dH;
//! 3. dk: V·dC̃_{k+1}ᵀ (B K-major), per query tile dSᵀ = V·dHᵀ gated into dPᵀ, A of dPᵀ·Q.
//!
//! Each `wgmma` group is waited for before its registers are read or written again (the two
//! warpgroups' gating overlaps the other's products). After the operands have landed the two
//! warpgroups run their passes without waiting for each other: warpgroup 0 has one key tile
//! in the dq pass and two query tiles each in dv and dk, warpgroup 1 the other way round, and
//! a barrier between the passes held warpgroup 0 for a sixth of the kernel.
use super::bwd_chunk_terms::ChunkTerms;
use super::gates::GateKind;
use super::stage;
use crate::arch::convert::Elem;
use crate::arch::wgmma::{self, Hold, Wgmma, k_major, mn_major};
use crate::arch::{shared, thread};
use crate::tile::acc_to_a;
use tfla_params::bwd::{BwdParams, chunk_wg::*, combine};

/// n-blocks (8 columns) of a dq, dk or dv accumulator and of a score tile.
const NB: usize = (TILE_D / 8) as usize;
const TB: usize = (TILE / 8) as usize;
/// Bytes between the two 64-column panels of a staged operand (an MN-major descriptor's LBO).
const PANEL: u32 = stage::sw128_panel(CHUNK);
const _: () = assert!(
    NB == 16 && TB == 8 && TILE == 64 && CHUNK == TILE_D,
    "m64n128 accumulators, m64n64 score tiles (4 k16 steps of the products that read them), 8 \
     k16 steps over a head dim; every operand CHUNK rows"
);
/// A warpgroup's 64 rows × TILE_D columns of dq, dk or dv (m64n128 accumulators).
type Acc = [f32; 4 * NB];
/// A warpgroup's 64 rows × TILE columns of a score tile (m64n64).
type Tile = [f32; 4 * TB];
// (From constants: a repeat expression this long becomes a store loop that keeps the array
// out of registers.)
const ZERO_ACC: Acc = [0.0; 4 * NB];
const ZERO_TILE: Tile = [0.0; 4 * TB];

/// # Safety
/// Launched with `grid(p)`, THREADS threads and `smem_bytes()` bytes of dynamic shared memory
/// after the rows and state kernels, on parameters validated by the host (`applies`).
#[inline(always)]
pub unsafe fn bwd_chunk_wg<E: Elem + Wgmma, G: GateKind>(p: &BwdParams) {
    let tid = thread::thread_idx();
    let wg = unsafe { thread::warpgroup() };
    let (dqk, dhv) = (p.dqk, p.dhv);
    let normalizer = G::NORMALIZED && p.exact != 0;

    // Shared memory: Q, K, V, dH, C̃_k, dC̃_{k+1} (swizzled, 1024-byte aligned); the row
    // vectors and column sums.
    let base = (shared::base() + ALIGN - 1) & !(ALIGN - 1);
    let operand = |x: u32| base + x * tile_bytes();
    let (sq, sk, sv, sdh, sc, sdc) = (
        operand(0),
        operand(1),
        operand(2),
        operand(3),
        operand(4),
        operand(5),
    );
    let ct = ChunkTerms::at(p, base + TILES * tile_bytes());
    let len = ct.len;
    // The warpgroup's first row, whether any of its rows is a step, and its k16 steps over
    // the two head dims.
    let m0 = 64 * wg;
    let wg_live = m0 < len;
    let (ks_qk, ks_hv) = (dqk.div_ceil(16), dhv.div_ceil(16));
    // Descriptors: a K-major operand (A, or B stored N × K) of rows r0 .. of staged operand x,
    // k16 step ks of its head dim; an MN-major B whose k16 step ks is rows 16·ks .. of x, all
    // TILE_D columns.
    let kd = |x: u32, r0: u32, ks: u32| k_major(x + (ks / 4) * PANEL + r0 * 128, ks % 4);
    let mn = |x: u32, ks: u32| mn_major(x, ks, PANEL);
    // Element pair (r, c) of a staged operand, for the row dots.
    let elem = |x: u32| move |r: u32, c: u32| x + stage::sw128(CHUNK, r, c) + 2 * (c % 8);

    unsafe {
        ct.stage(normalizer, |x, global, rows, cols, n| {
            stage::rows_sw128::<THREADS, { TILE_D / 8 }>(operand(x), global, rows, cols, n)
        })
    };
    // acc = the warpgroup's rows of `a` times B over `ks` k16 steps: B K-major (stored N × K,
    // rows 0 .. TILE_D of `b`) where `nk`, else MN-major. Waited for. (Every array a `wgmma`
    // writes is held before the fence: the zeros it starts from, moved in after the fence,
    // made ptxas serialize the `wgmma`s.)
    let product = #[inline(always)]
    |acc: &mut Acc, a: u32, b: u32, ks: u32, nk: bool| unsafe {
        acc.hold();
        wgmma::fence();
        unroll!(8, x => {
            let x = x as u32;
            if x == 0 || x < ks {
                if nk {
                    E::ss_n128_k(acc, kd(a, m0, x), kd(b, 0, x), x > 0);
                } else {
                    E::ss_n128_mn(acc, kd(a, m0, x), mn(b, x), x > 0);
                }
            }
        });
        wgmma::commit();
        wgmma::wait_all();
        acc.hold();
    };
    // The warpgroup's rows of `a` times rows n0 .. n0 + TILE of `b`, transposed, over `ks` k16
    // steps, into `t`: a score tile (issued; the caller commits and waits).
    let score_tile = #[inline(always)]
    |t: &mut Tile, a: u32, b: u32, n0: u32, ks: u32| unsafe {
        unroll!(8, x => {
            let x = x as u32;
            if x == 0 || x < ks {
                E::ss_n64_k(t, kd(a, m0, x), kd(b, n0, x), x > 0);
            }
        });
    };
    // One score tile, `a`'s rows times rows n0.. of `b`, waited for.
    let scores = #[inline(always)]
    |a: u32, b: u32, n0: u32, ks: u32| -> Tile {
        let mut t = ZERO_TILE;
        t.hold();
        unsafe {
            wgmma::fence();
            score_tile(&mut t, a, b, n0, ks);
            wgmma::commit();
            wgmma::wait_all();
        }
        t.hold();
        t
    };
    // acc += T·Z: T a gated score tile in registers, Z rows z0 .. z0 + TILE of `z` (MN-major).
    // Waited for.
    let mma_tile = #[inline(always)]
    |acc: &mut Acc, t: &Tile, z: u32, z0: u32| {
        let a = [0, 1, 2, 3].map(|x| {
            let f = |nb: usize| [t[4 * nb], t[4 * nb + 1], t[4 * nb + 2], t[4 * nb + 3]];
            acc_to_a::<E>(&f(2 * x), &f(2 * x + 1))
        });
        unsafe {
            wgmma::fence();
            unroll!(4, x => { E::rs_n128_mn(acc, a[x], mn(z, z0 / 16 + x as u32)) });
            wgmma::commit();
            wgmma::wait_all();
        }
        acc.hold();
    };

    // dq̂ = α ρ C̃_k dh + α δ ñ_k + Σ_{j ≤ i} dP_ij k_j (dq = scale·dq̂).
    unsafe { stage::landed_for_wgmma::<2>() };
    let mut acc = ZERO_ACC;
    if wg_live {
        product(&mut acc, sdh, sc, ks_hv, true);
        ct.scale_dq(&mut acc, normalizer);
    }
    // Q, K, V and dC̃_{k+1} (the last two groups) together: after this barrier a warpgroup
    // goes from its dq pass to its dv and dk passes without waiting for the other (warpgroup
    // 0 has one key tile for dq and two query tiles each for dv and dk, warpgroup 1 the other
    // way round; a barrier between the passes held warpgroup 0 for 15% of the kernel's
    // issue cycles, ncu in benches/LOG.md).
    unsafe { stage::landed_for_wgmma::<0>() };
    if wg_live {
        ct.row_dot::<E, _>(&acc, elem(sq), p.scale, combine::DOT_Q_INTER);
        let rows = ct.query_rows();
        // Key tiles up to the warpgroup's rows: S and dS issued together.
        for jt in 0..=wg {
            let j0 = jt * TILE;
            let (mut sacc, mut dp) = (ZERO_TILE, ZERO_TILE);
            sacc.hold();
            dp.hold();
            unsafe {
                wgmma::fence();
                score_tile(&mut sacc, sq, sk, j0, ks_qk);
                score_tile(&mut dp, sdh, sv, j0, ks_hv);
                wgmma::commit();
                wgmma::wait_all();
            }
            sacc.hold();
            dp.hold();
            ct.gate_dp(jt, rows, &sacc, &mut dp);
            mma_tile(&mut acc, &dp, sk, j0);
        }
        ct.store::<E, _>(&acc, p.scale, p.ptr.dq, dqk);

        let c_j = ct.key_rows();

        // dv_j = w_j dC̃_{k+1}ᵀ k_j + Σ_{i ≥ j} P_ij dh_i.
        let mut acc = ZERO_ACC;
        product(&mut acc, sk, sdc, ks_qk, false);
        ct.scale_dv(&mut acc);
        for it in wg..len.div_ceil(TILE) {
            let mut pt = scores(sk, sq, it * TILE, ks_qk);
            ct.gate_pt(c_j, it * TILE, &mut pt);
            mma_tile(&mut acc, &pt, sdh, it * TILE);
        }
        ct.store::<E, _>(&acc, 1.0, p.ptr.dv, dhv);

        // dk_j = w_j (dC̃_{k+1} v_j + dñ_{k+1}) + scale · Σ_{i ≥ j} dP_ij q_i.
        let mut acc = ZERO_ACC;
        product(&mut acc, sv, sdc, ks_hv, true);
        ct.scale_dk(&mut acc, normalizer);
        ct.row_dot::<E, _>(&acc, elem(sk), p.scale, combine::DOT_K_INTER);
        for it in wg..len.div_ceil(TILE) {
            let mut dpt = scores(sv, sdh, it * TILE, ks_hv);
            ct.gate_dpt(c_j, it * TILE, &mut dpt);
            mma_tile(&mut acc, &dpt, sq, it * TILE);
        }
        ct.row_dot::<E, _>(&acc, elem(sk), p.scale, combine::DOT_K);
        ct.store::<E, _>(&acc, p.scale, p.ptr.dk, dqk);
    }
    // Every warp's partial column sums of the dq pass are staged.
    unsafe { thread::sync_threads() };
    ct.column_sums(tid);
}
