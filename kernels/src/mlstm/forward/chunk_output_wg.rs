//! Chunk outputs on `wgmma` (sm_90a builds): the outputs of `chunk_output` (same math, same
//! notation; see there) from a tile of TILE_Q = 128 rows × TILE_HV = 256 value columns. Each of
//! the two warpgroups owns 64 rows; its accumulator (an m64n256 `wgmma` result, 128 f32 per
//! thread) holds all 256 columns, so one S = Q·Kᵀ tile per (row, key) tile serves every value
//! column of the block.
//!
//! Operands: the block's Q rows (A; all of DQK, in KD-wide slices) stay in shared memory from
//! the first items on; C̃_k rows, K columns and V rows (B) stream through a ring of STAGES
//! items of 16 KB: ITEM_ROWS rows of C̃_k (each item also brings one Q slice while there are
//! slices to bring), then per key tile its K in K_COLS-wide items, whose S the gates weight
//! into P, and its V in two items of ITEM_ROWS keys, which P·V reads. All are staged by
//! `cp.async` in the 128-byte swizzle and read by the tensor cores through descriptors; P is
//! the A operand of P·V from registers, as in the `mma.sync` kernel. ñ_kᵀq rides on an m64n8
//! `wgmma` whose B rows are ñ_k's 16-bit head and tail (about 16 bits, as `chunk_output`'s
//! split). Every stage is made visible to the async proxy before the barrier that releases it.
//! The `wgmma`s are not waited for where they are issued but one item later (or where their
//! result is needed: S for the gates): each item's queue behind the previous item's, still
//! running, so the tensor pipe does not drain at the barriers between items, while the next
//! three items load.
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
/// Bytes between the 64-column panels of a swizzled item of C̃_k or V rows (the LBO of their
/// MN-major descriptors), between the two panels of a K item, and between the two
/// warpgroups' halves of a Q slice.
const PANEL_CV: u32 = stage::sw128_panel(ITEM_ROWS);
const PANEL_K: u32 = stage::sw128_panel(TILE_K);
const HALF_Q: u32 = stage::sw128_panel(64);
/// k16 steps of the output `wgmma`s per item of C̃_k or V rows, and V items per key tile.
const KS_ITEM: u32 = ITEM_ROWS / 16;
const V_ITEMS: u32 = TILE_K / ITEM_ROWS;
const _: () = assert!(
    KD == 64 && K_COLS == 2 * KD && TILE_K == 64 && KD == 2 * ITEM_ROWS && KS_ITEM == 2,
    "one swizzle panel per Q slice, two per K item; two items of C̃_k rows per Q slice and of V rows per key tile, two k-steps each"
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

    // Shared memory: the Q slices, STAGES × B operand (all swizzled, 1024-byte aligned), ñ_k's
    // atoms, gate vectors.
    let base = (shared::base() + ALIGN - 1) & !(ALIGN - 1);
    let n_q = q_slices(dqk);
    // This warpgroup's rows of Q slice `slice`.
    let sq = |slice: u32| base + slice * q_bytes() + HALF_Q * wg;
    let ring = base + n_q * q_bytes();
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

    // Items 0..n_c are C̃_k's rows, ITEM_ROWS each; item x < n_q also brings Q slice x (C̃_k
    // item x reads slice x / 2, so every slice has landed where it is first read; n_q ≤ n_c
    // for the DQK > 64 that `applies`: 2⌈DQK/128⌉ ≤ ⌈DQK/32⌉). Then per key tile kt, per_tile items
    // from n_c + kt·per_tile: its K columns (n_k items, which S reads) and its V rows
    // (V_ITEMS items, which P·V reads).
    let gc = p.ptr.c_states + hk * (dqk as u64) * (dhv as u64) * 2;
    let (n_c, n_k) = (dqk.div_ceil(ITEM_ROWS), n_q / 2);
    let per_tile = n_k + V_ITEMS;
    let n_items = n_c + nkeys.div_ceil(TILE_K) * per_tile;
    let rows_q = (t0 + i0, t0 + len);
    let issue = |item: u32| unsafe {
        let st = item % STAGES;
        if item < n_q {
            let q = base + item * q_bytes();
            stage::rows_sw128::<THREADS, { KD / 8 }>(q, gq, rows_q, (item * KD, dqk), TILE_Q);
        }
        if item < n_c {
            let (rows_c, cols) = ((item * ITEM_ROWS, dqk), (v0, dhv));
            stage::rows_sw128::<THREADS, { TILE_HV / 8 }>(stage_b(st), gc, rows_c, cols, ITEM_ROWS);
        } else {
            let (kt, part) = ((item - n_c) / per_tile, (item - n_c) % per_tile);
            let k0 = t0 + kt * TILE_K;
            if part < n_k {
                stage::rows_sw128::<THREADS, { K_COLS / 8 }>(
                    stage_b(st),
                    gk,
                    (k0, t0 + len),
                    (part * K_COLS, dqk),
                    TILE_K,
                );
            } else {
                stage::rows_sw128::<THREADS, { TILE_HV / 8 }>(
                    stage_b(st),
                    gv,
                    (k0 + (part - n_k) * ITEM_ROWS, t0 + len),
                    (v0, dhv),
                    ITEM_ROWS,
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
        // ñ_k's atoms: per KD-wide slice, row 0 the 16-bit head of ñ_k (zero past DQK), row 1
        // its tail, rows 2–7 zero; swizzled like every K-major operand.
        let n_atoms = dqk.div_ceil(KD);
        let mut d = 2 * tid;
        while d < n_atoms * KD {
            let at = |x: u32| {
                let g = p.ptr.n_states + (hk * dqk as u64 + x as u64) * 4;
                if x < dqk {
                    unsafe { global::ld_nc_f32(g) }
                } else {
                    0.0
                }
            };
            let (hi, lo) = split2::<E>([at(d), at(d + 1)]);
            let atom = sn + (d / KD) * ALIGN;
            let c = d % KD;
            unsafe {
                shared::st_u32(atom + stage::sw128(8, 0, c) + 2 * (c % 8), hi);
                shared::st_u32(atom + stage::sw128(8, 1, c) + 2 * (c % 8), lo);
            }
            d += 2 * THREADS;
        }
        let mut x = tid;
        while x < n_atoms * 48 {
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
    // Inter-chunk term: acc += Q[:, r..r+ITEM_ROWS] · C̃_k[r..r+ITEM_ROWS, v0..] per item (zero
    // past DQK, ñ_k's atoms too): k-steps KS_ITEM·(item % 2) .. of Q slice item / 2. (Two
    // loops: ptxas serializes `wgmma`s whose accumulators other instructions write inside the
    // loop that carries them in flight.)
    for item in 0..n_c {
        landed();
        let st = item % STAGES;
        let (q, atom) = (sq(item / 2), sn + (item / 2) * ALIGN);
        if wg_live {
            unsafe {
                wgmma::fence();
                unroll!(2, k => {
                    let k = k as u32;
                    let ks = KS_ITEM * (item % 2) + k;
                    E::ss_n256_mn(&mut acc, k_major(q, ks), wgmma::mn_major(stage_b(st), k, PANEL_CV), true);
                    if G::NORMALIZED {
                        E::ss_n8_k(&mut nacc, k_major(q, ks), k_major(atom, ks), true);
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
    // Intra-chunk term, key tile kt: S (+)= Q[:, c..c+K_COLS] · K[kt, c..c+K_COLS]ᵀ per K item,
    // left running; at the tile's first V item the gates wait for S and weight it into P's A
    // fragments (all four k-steps), then acc += P·V over that item's keys, left running; the
    // second V item multiplies the other two k-steps.
    let mut a = [[0u32; 4]; 4];
    for item in n_c..n_items {
        landed();
        let st = item % STAGES;
        let (kt, part) = ((item - n_c) / per_tile, (item - n_c) % per_tile);
        let live = wg_live && kt < wg_tiles;
        let sb = stage_b(st);
        if live && part < n_k {
            unsafe {
                wgmma::fence();
                unroll!(8, ks => {
                    let (panel, k) = (ks as u32 / 4, ks as u32 % 4);
                    let (q, sk) = (sq(2 * part + panel), sb + panel * PANEL_K);
                    E::ss_n64_k(&mut sacc, k_major(q, k), k_major(sk, k), part > 0 || ks > 0);
                });
                wgmma::commit();
            }
        } else if live && part == n_k {
            // S of the last K item is done once everything is.
            unsafe { wgmma::wait_all() };
            sacc.hold();
            // P = S ⊙ 2^(R_i + C_j) (causal, ragged rows masked), straight into P·V's A
            // fragments (n-blocks 2ks, 2ks + 1 for k-step ks), all before the fence: ptxas
            // serializes `wgmma`s whose registers (S's accumulators, the A fragments) other
            // instructions write while one may be in flight.
            let kb = kt * TILE_K;
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
            unsafe {
                wgmma::fence();
                unroll!(2, k => { E::rs_n256_mn(&mut acc, a[k], wgmma::mn_major(sb, k as u32, PANEL_CV)) });
                wgmma::commit();
            }
        } else if live {
            // The second V item: P's other two k-steps. (Its own branch with constant indices:
            // an index into `a` offset by the item at run time would put `a` in local memory.)
            unsafe {
                wgmma::fence();
                unroll!(2, k => { E::rs_n256_mn(&mut acc, a[KS_ITEM as usize + k], wgmma::mn_major(sb, k as u32, PANEL_CV)) });
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
