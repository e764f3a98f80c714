//! Chunk outputs on `wgmma` (sm_90a builds): the outputs of `chunk_output` (same math, same
//! notation; see there) from a tile of TILE_Q = 128 rows × TILE_HV = 256 value columns. Each of
//! the two warpgroups owns 64 rows; its accumulator (an m64n256 `wgmma` result, 128 f32 per
//! thread) holds all 256 columns, so one S = Q·Kᵀ tile per (row, key) tile serves every value
//! column of the block.
//!
//! Operands: Q slices (A) and C̃_k slices, K slices and V tiles (B) are staged by `cp.async` in
//! the 128-byte swizzle and read by the tensor cores through descriptors; P = S ⊙ gates is the
//! A operand of P·V from registers, as in the `mma.sync` kernel. ñ_kᵀq rides on an m64n8
//! `wgmma` whose B rows are ñ_k's 16-bit head and tail (about 16 bits, as `chunk_output`'s
//! split). Loads: one ring of STAGES items, each a Q slice and a B operand: the C̃_k slices,
//! then per key tile its K slices and its V tile (an item of its own, so that V shares the
//! ring instead of holding stages through the tile's K slices). Every stage is made visible to
//! the async proxy before the barrier that releases it. The `wgmma`s are not waited for where
//! they are issued but one item later (or where their result is needed: S for the gates): each
//! item's queue behind the previous item's, still running, so the tensor pipe does not drain
//! at the barriers between items, while the next two items load.
//!
//! Causal shape: warpgroup 0 (rows i0 .. i0 + 64) needs the key tiles up to its diagonal only
//! and waits at the barriers while warpgroup 1 multiplies the last one.
use super::gates::GateKind;
use super::out_tile::{OutTile, RowTerms};
use super::stage;
use crate::arch::convert::Elem;
use crate::arch::wgmma::{self, Hold, Wgmma, k_major};
use crate::arch::{cp_async, global, math, shared, thread};
use crate::tile::{acc_pos, acc_to_a, split2};
use tfla_params::fwd::{FwdParams, output_wg::*};

/// n-blocks (8 columns) of the output accumulator and of S.
const NB: usize = (TILE_HV / 8) as usize;
const NB_S: usize = (TILE_K / 8) as usize;
/// Bytes between the 64-column panels of a swizzled C̃_k slice or V tile (the LBO of their
/// MN-major descriptors), and between the two warpgroups' halves of a Q slice.
const PANEL_C: u32 = stage::sw128_panel(TILE_C);
const PANEL_V: u32 = stage::sw128_panel(TILE_K);
const HALF_Q: u32 = stage::sw128_panel(64);
const _: () = assert!(
    TILE_C == KD && KD == 64 && TILE_K == 64 && PANEL_C == PANEL_V,
    "one swizzle panel per Q and K slice; C̃_k slices and V tiles share one descriptor shape"
);
const _: () = assert!(
    STAGES >= 3,
    "an item in flight behind the current one, one loading ahead"
);
const _: () = assert!(
    NB == 32 && NB_S == 8 && WARPGROUPS == 2,
    "the unroll! counts below assume 32 value n-blocks, 8 key n-blocks, two warpgroups"
);

/// # Safety
/// Launched with `grid(p)`, THREADS threads and `smem_bytes(p.chunk, p.dqk)` bytes of dynamic
/// shared memory, after `chunk_state` wrote the chunk states, on parameters validated by the
/// host (shapes, alignment, a shape that `applies`).
#[inline(always)]
pub unsafe fn chunk_output_wg<E: Elem + Wgmma, G: GateKind>(p: &FwdParams) {
    let tid = thread::thread_idx();
    let (lane, warp) = (tid % 32, tid / 32);
    let wg = warp / 4;
    let Some(tile) = OutTile::of_block(p, TILE_Q, TILE_HV) else {
        return;
    };
    let OutTile {
        i0,
        t0,
        len,
        nkeys,
        v0,
        head,
        ..
    } = tile;
    let (l, s, dqk, dhv) = (p.chunk, p.s, p.dqk, p.dhv);
    // This warpgroup's rows start at wg_i0; it multiplies only if one of them is a step, and
    // only the key tiles up to its diagonal.
    let wg_i0 = i0 + 64 * wg;
    let wg_live = wg_i0 < len;
    let wg_tiles = wg_i0 / TILE_K + 1;

    // Shared memory: STAGES × Q slice, STAGES × B operand (all swizzled, 1024-byte aligned),
    // ñ_k's atoms, gate vectors.
    let base = (shared::base() + ALIGN - 1) & !(ALIGN - 1);
    let stage_q = |st: u32| base + st * q_bytes();
    let ring = base + STAGES * q_bytes();
    let stage_b = |st: u32| ring + st * ring_bytes();
    let sn = ring + STAGES * ring_bytes();
    // Gate vectors: the column terms (L f32), then the row terms.
    let scol = sn + n_bytes(dqk);
    let gt = RowTerms::at(scol + 4 * l, TILE_Q);
    let (srow_r, srow_scale) = (gt.row_r, gt.row_scale);

    // Global bases of this head.
    let gq = p.ptr.q + head * (s as u64) * (dqk as u64) * 2;
    let gk = p.ptr.k + head * (s as u64) * (dqk as u64) * 2;
    let gv = p.ptr.v + head * (s as u64) * (dhv as u64) * 2;
    let gh = p.ptr.h + head * (s as u64) * (dhv as u64) * 2;
    let hk = tile.hk(p);

    // Items 0..n_c are C̃_k slices (with their Q slices); then per key tile kt, n_d + 1 items
    // from n_c + kt·(n_d + 1): its K slices ds < n_d (with their Q slices), whose S the gates
    // weight into P, and its V tile (ds = n_d), which P·V reads.
    let gc = p.ptr.c_states + hk * (dqk as u64) * (dhv as u64) * 2;
    let (n_c, n_d) = (dqk.div_ceil(TILE_C).max(1), dqk.div_ceil(KD).max(1));
    let per_tile = n_d + 1;
    let n_items = n_c + nkeys.div_ceil(TILE_K) * per_tile;
    let rows_q = (t0 + i0, t0 + len);
    // The Q slice of DQK columns from `col`, beside a C̃_k slice or a K slice.
    let stage_q_slice = |st: u32, col: u32| unsafe {
        stage::rows_sw128::<THREADS, { KD / 8 }>(stage_q(st), gq, rows_q, (col, dqk), TILE_Q);
    };
    let issue = |item: u32| unsafe {
        let st = item % STAGES;
        if item < n_c {
            let (rows_c, cols) = ((item * TILE_C, dqk), (v0, dhv));
            stage_q_slice(st, item * TILE_C);
            stage::rows_sw128::<THREADS, { TILE_HV / 8 }>(stage_b(st), gc, rows_c, cols, TILE_C);
        } else {
            let (kt, ds) = ((item - n_c) / per_tile, (item - n_c) % per_tile);
            let keys = (t0 + kt * TILE_K, t0 + len);
            if ds < n_d {
                stage_q_slice(st, ds * KD);
                stage::rows_sw128::<THREADS, { KD / 8 }>(
                    stage_b(st),
                    gk,
                    keys,
                    (ds * KD, dqk),
                    TILE_K,
                );
            } else {
                stage::rows_sw128::<THREADS, { TILE_HV / 8 }>(
                    stage_b(st),
                    gv,
                    keys,
                    (v0, dhv),
                    TILE_K,
                );
            }
        }
        cp_async::commit();
    };
    // Past the last item an empty group: the waits count STAGES − 2 groups behind.
    let issue_or_empty = |item: u32| unsafe { stage::issue_or_empty(item, n_items, &issue) };
    // Prime the ring with STAGES − 1 items.
    for item in 0..STAGES - 1 {
        issue_or_empty(item);
    }

    // The gate vectors of this tile, while item 0 loads.
    unsafe {
        let m_k = || tile.stored_m_k::<G>(p);
        tile.stage_gate_terms::<G, THREADS, TILE_Q>(p, scol, gt, m_k, tid)
    };
    if G::NORMALIZED {
        // ñ_k's atoms: per slice, row 0 the 16-bit head of ñ_k (zero past DQK), row 1 its
        // tail, rows 2–7 zero; swizzled like every K-major operand.
        let mut d = 2 * tid;
        while d < n_c * TILE_C {
            let at = |x: u32| {
                let g = p.ptr.n_states + (hk * dqk as u64 + x as u64) * 4;
                if x < dqk {
                    unsafe { global::ld_nc_f32(g) }
                } else {
                    0.0
                }
            };
            let (hi, lo) = split2::<E>([at(d), at(d + 1)]);
            let atom = sn + (d / TILE_C) * ALIGN;
            let c = d % TILE_C;
            unsafe {
                shared::st_u32(atom + stage::sw128(8, 0, c) + 2 * (c % 8), hi);
                shared::st_u32(atom + stage::sw128(8, 1, c) + 2 * (c % 8), lo);
            }
            d += 2 * THREADS;
        }
        let mut x = tid;
        while x < n_c * 48 {
            // 48 vectors of 16 bytes: rows 2–7 of atom x / 48.
            unsafe { shared::st_v4(sn + (x / 48) * ALIGN + 256 + 16 * (x % 48), [0; 4]) };
            x += THREADS;
        }
    }

    // (From a constant: a repeat expression this long becomes a store loop that keeps the
    // array out of registers.)
    const ZERO: [f32; 4 * NB] = [0.0; 4 * NB];
    let mut acc = ZERO;
    let mut sacc = [0f32; 4 * NB_S];
    let mut nacc = [0f32; 4];
    // This lane's part of the row sums s_i (rows g and g + 8 of its warp), reduced over the
    // quad at the end.
    let mut row_sum = [0f32; 2];
    let wrow = 16 * warp; // the warp's first row in the tile (warpgroup wg's rows 64·wg ..)
    // Two barriers per item (`stage::landed_for_wgmma`, `release_for_wgmma`): an item's
    // `wgmma`s are issued behind those of the previous item, still running; once those are
    // done, the stage they read takes item + STAGES − 1 while this item multiplies. (A
    // warpgroup past its diagonal issues nothing.)
    let landed = || unsafe { stage::landed_for_wgmma::<{ STAGES - 2 }>() };
    let release = |item: u32, issued: bool| unsafe {
        stage::release_for_wgmma(issued, || issue_or_empty(item + STAGES - 1))
    };
    // Inter-chunk term: acc += Q[:, dc..dc+TILE_C] · C̃_k[dc..dc+TILE_C, v0..] (the slices are
    // zero past DQK, ñ_k's atoms too). (Two loops: ptxas serializes `wgmma`s whose
    // accumulators other instructions write inside the loop that carries them in flight.)
    for item in 0..n_c {
        landed();
        let st = item % STAGES;
        let sq = stage_q(st) + HALF_Q * wg;
        if wg_live {
            unsafe {
                wgmma::fence();
                unroll!(4, ks => {
                    let ks = ks as u32;
                    E::ss_n256_mn(&mut acc, k_major(sq, ks), wgmma::mn_major(stage_b(st), ks, PANEL_C), true);
                    if G::NORMALIZED {
                        E::ss_n8_k(&mut nacc, k_major(sq, ks), k_major(sn + item * ALIGN, ks), true);
                    }
                });
                wgmma::commit();
            }
        }
        release(item, wg_live);
    }
    unsafe { wgmma::wait_all() };
    acc.hold();
    nacc.hold();
    // Scale the inter-chunk term by e^{m_k − M_i} (sig: e^{b_i}) per row; ñ_kᵀq (columns 0
    // and 1 of nacc, lane t = 0) starts the row sum.
    unroll!(2, half => {
        let e = 2 * half;
        let rr = wrow + acc_pos(lane, e).0;
        let scale = unsafe { shared::ld_f32(srow_scale + 4 * rr) };
        unroll!(32, nb => {
            acc[4 * nb + e] *= scale;
            acc[4 * nb + e + 1] *= scale;
        });
        row_sum[half] = scale * (nacc[e] + nacc[e + 1]);
    });
    // Intra-chunk term, key tile kt: S (+)= Q[:, ds·KD..] · K[kt, ds·KD..]ᵀ per K slice, left
    // running; at the tile's V item the gates wait for S, then acc += P·V, left running.
    for item in n_c..n_items {
        landed();
        let st = item % STAGES;
        let (kt, ds) = ((item - n_c) / per_tile, (item - n_c) % per_tile);
        let live = wg_live && kt < wg_tiles;
        if live && ds < n_d {
            let (sq, sk) = (stage_q(st) + HALF_Q * wg, stage_b(st));
            unsafe {
                wgmma::fence();
                unroll!(4, ks => {
                    let ks = ks as u32;
                    E::ss_n64_k(&mut sacc, k_major(sq, ks), k_major(sk, ks), ds > 0 || ks > 0);
                });
                wgmma::commit();
            }
        } else if live {
            // The V tile: S of the last K slice is done once everything is.
            unsafe { wgmma::wait_all() };
            sacc.hold();
            // P = S ⊙ 2^(R_i + C_j) (causal, ragged rows masked), straight into P·V's A
            // fragments (n-blocks 2ks, 2ks + 1 for k-step ks), all before the fence: ptxas
            // serializes `wgmma`s whose registers (S's accumulators, the A fragments) other
            // instructions write while one may be in flight.
            let kb = kt * TILE_K;
            let mut a = [[0u32; 4]; 4];
            unroll!(4, ks => {
                let mut pv = [0f32; 8];
                unroll!(8, x => {
                    let (nb, e) = (2 * ks + x / 4, x % 4);
                    let (r, c) = acc_pos(lane, e);
                    let rr = wrow + r;
                    let (i, j) = (i0 + rr, kb + nb as u32 * 8 + c);
                    // Branch-free, as in `chunk_output`.
                    let w = math::exp2(unsafe { shared::ld_f32(srow_r + 4 * rr) + shared::ld_f32(scol + 4 * j) });
                    let w = if j <= i && i < len { w } else { 0.0 };
                    pv[x] = sacc[4 * nb + e] * w;
                    row_sum[e / 2] += pv[x];
                });
                a[ks] = acc_to_a::<E>(&[pv[0], pv[1], pv[2], pv[3]], &[pv[4], pv[5], pv[6], pv[7]]);
            });
            let sv = stage_b(st);
            unsafe {
                wgmma::fence();
                unroll!(4, ks => { E::rs_n256_mn(&mut acc, a[ks], wgmma::mn_major(sv, ks as u32, PANEL_C)) });
                wgmma::commit();
            }
        }
        release(item, live);
    }
    unsafe { wgmma::wait_all() };
    acc.hold();

    // Normalize and store; ñ_kᵀq is already in the lanes' row sums.
    unsafe {
        tile.store_h::<E, G, 8>(
            p,
            gt,
            (wrow, lane),
            gh,
            row_sum,
            |_, rs| rs,
            |nb, e| acc[4 * nb + e],
        )
    };
}
