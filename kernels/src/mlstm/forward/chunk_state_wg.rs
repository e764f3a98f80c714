//! Chunk states (forward, inter-chunk) on `wgmma` (sm_90a builds; `tfla_params::fwd::state_wg`):
//! the recurrence, outputs and state-pool rules of `chunk_state` (see its docs for the
//! notation) for the wide 128 × 256 state tile of `chunk_state_wide`, held by two warpgroups as
//! m64n256 accumulators (warp w: state rows 16w .. 16w + 16 of the tile, all 256 columns).
//!
//! Per 16 steps each warp loads its A fragment of K̃ᵀ (`ldmatrix.trans` of the staged K
//! sub-tile) and weights it by the steps' e^{log w0 + u_j} in registers, as the `mma.sync`
//! kernel does; the warpgroup then multiplies it with the V sub-tile straight from shared
//! memory (128-byte swizzle), one m64n256k16 `wgmma` per 16 steps. ñ rides along on the
//! same A fragment (head and tail times a column of ones, `mma.sync`), in the blocks of the
//! first DHV tile: warp w's ñ rows are its own 16 state rows.
use super::gates::GateKind;
use super::slots::state_head;
use super::stage;
use super::state_walk::{self, Walk};
use crate::arch::convert::Elem;
use crate::arch::wgmma::{self, Hold, Wgmma};
use crate::arch::{cp_async, global, shared, thread};
use crate::tile::{SmemTile, acc_pos, split2};
use tfla_params::fwd::{FwdParams, SMEM_ROW_PAD, state_wg::*};

/// n-blocks (8 columns) of a warp's accumulator; bytes between the 64-column panels of a V
/// sub-tile (the LBO of its descriptor).
const NB: usize = (TILE_HV / 8) as usize;
const PANEL_V: u32 = stage::sw128_panel(SUB_L);
const _: () = assert!(
    NB == 32 && SUB_L == 64 && STAGES == 3 && WARPGROUPS == 2,
    "the unroll! counts below assume 32 n-blocks, 64-step sub-tiles, 3 stages, 2 warpgroups"
);

/// # Safety
/// Launched with `state_wide::TILES.grid(p)`, THREADS threads and `smem_bytes()` bytes of
/// dynamic shared memory, on parameters validated by the host (shapes, alignment, chunk size).
#[inline(always)]
pub unsafe fn chunk_state_wg<E: Elem + Wgmma, G: GateKind>(p: &FwdParams) {
    let tid = thread::thread_idx();
    let (lane, warp) = (tid % 32, tid / 32);
    let walk = unsafe { state_walk::walk(p, (TILE_QK, TILE_HV)) };
    let Walk { bx, bh, seq, d0, v0, k_lo, k_hi } = walk;
    let (l, nc, s) = (p.chunk, p.num_chunks, p.s);
    let (dqk, dhv) = (p.dqk, p.dhv);

    // Shared memory: STAGES × V sub-tile (swizzled, 1024-byte aligned), STAGES × (K sub-tile,
    // u of the sub-tile), the staging tile of C̃_k (TILE_QK × TILE_HV).
    let base = (shared::base() + ALIGN - 1) & !(ALIGN - 1);
    let stage_v = |st: u32| base + st * v_bytes();
    let stage_k = |st: u32| SmemTile {
        base: base + STAGES * v_bytes() + st * (k_bytes() + SUB_L * 4),
        stride: (TILE_QK + SMEM_ROW_PAD) * 2,
    };
    let stage_u = |st: u32| stage_k(st).base + k_bytes();
    let staging = SmemTile {
        base: base + STAGES * (v_bytes() + k_bytes() + SUB_L * 4),
        stride: (TILE_HV + SMEM_ROW_PAD) * 2,
    };

    let head = bh as u64;
    let gk = p.ptr.k + head * (s as u64) * (dqk as u64) * 2;
    let gv = p.ptr.v + head * (s as u64) * (dhv as u64) * 2;
    let g_u = p.ptr.gate_u + head * ((nc * l) as u64) * 4;

    let sh = unsafe { state_head(p, bh, seq) };
    // This thread's first element of the tile (row, column in the state), through
    // `thread::opaque` at each use so that per-element addresses are not kept live.
    let (r0, c0) = (d0 + warp * 16 + acc_pos(lane, 0).0, v0 + acc_pos(lane, 0).1);
    // Calls `f(nb, half, inside, idx)` for the element pairs of the thread's accumulator:
    // `idx` the element index of the pair's first element in a (DQK, DHV) state.
    let each_pair = |f: &mut dyn FnMut(usize, usize, bool, u64)| {
        let (r0, c0) = (thread::opaque(r0), thread::opaque(c0));
        unroll!(2, half => {
            let r = r0 + half as u32 * 8;
            unroll!(32, nb => {
                let c = c0 + nb as u32 * 8;
                f(nb, half, r < dqk && c < dhv, (r * dhv + c) as u64);
            });
        });
    };
    // (From a constant: a repeat expression this long becomes a store loop that keeps the
    // array out of registers.)
    const ZERO: [f32; 4 * NB] = [0.0; 4 * NB];
    let mut acc = ZERO;
    if p.ptr.c0 != 0 {
        let base = p.ptr.c0 + sh * (dqk as u64) * (dhv as u64) * 4;
        each_pair(&mut |nb, half, inside, idx| {
            let x = unsafe { global::ld_v2_f32_or_zero(inside, base + idx * 4) };
            acc[4 * nb + 2 * half] = x[0];
            acc[4 * nb + 2 * half + 1] = x[1];
        });
    }
    // ñ of the tile rows 16·warp + g and + 8 (g = lane / 4), in elements 0 and 2.
    let with_n = G::NORMALIZED && v0 == 0;
    let ones = [E::pack(1.0, 1.0); 2];
    let n_rows = |half: u32| d0 + warp * 16 + acc_pos(lane, 0).0 + 8 * half;
    let (mut nacc, mut m) =
        unsafe { state_walk::initial_n_m::<G>(p, head, k_lo, |h| n_rows(h as u32), with_n) };

    // The sub-tile pipeline over the whole walk, as in `chunk_state`, two items ahead.
    let (item_lo, n_items) = state_walk::items(p, (k_lo, k_hi), SUB_L);
    let issue = |it: u32| unsafe {
        let (st, j0) = (it % STAGES, it * SUB_L);
        stage::rows::<THREADS, { TILE_QK / 8 }>(stage_k(st), gk, (j0, s), (d0, dqk), SUB_L);
        stage::rows_sw128::<THREADS, { TILE_HV / 8 }>(stage_v(st), gv, (j0, s), (v0, dhv), SUB_L);
        stage::f32_vec::<THREADS>(stage_u(st), g_u, (j0, s), SUB_L);
        cp_async::commit();
    };
    let gate_scalars = |k: u32| unsafe { state_walk::gate_scalars::<G>(p, head, k) };
    unsafe { state_walk::prime_two(issue, item_lo, n_items) };
    let (mut g, mut umax) = gate_scalars(k_lo);

    for k in k_lo..=k_hi {
        // Store the state before chunk k (k = k_hi: the final state).
        let (c_out, n_out, m_out) = state_walk::outputs(p, head, sh, k, k_hi);
        if k < k_hi || p.ptr.c_final != 0 {
            if k < k_hi {
                // C̃_k through the staging tile (`stage::store_rows`: whole sectors per store).
                let (r0, c0) = (thread::opaque(warp * 16 + acc_pos(lane, 0).0), acc_pos(lane, 0).1);
                unroll!(2, half => {
                    let r = r0 + half as u32 * 8;
                    unroll!(32, nb => {
                        let v = E::pack(acc[4 * nb + 2 * half], acc[4 * nb + 2 * half + 1]);
                        unsafe { shared::st_u32(staging.offset(r, c0 + nb as u32 * 8), v) };
                    });
                });
                unsafe {
                    thread::sync_threads();
                    stage::store_rows::<THREADS, { TILE_HV / 8 }>(
                        staging,
                        c_out,
                        (d0, dqk),
                        (v0, dhv),
                        TILE_QK,
                    );
                }
                // (The staging tile is next written after the walk's next barrier.)
            } else {
                each_pair(&mut |nb, half, inside, idx| {
                    let v = [acc[4 * nb + 2 * half], acc[4 * nb + 2 * half + 1]];
                    unsafe { global::st_v2_f32_if(inside, c_out + idx * 4, v) };
                });
            }
            unsafe {
                state_walk::store_n_m::<G>(
                    p,
                    (k, k_lo, k_hi),
                    (n_out, m_out),
                    ([n_rows(0), n_rows(1)], &nacc),
                    m,
                    with_n,
                    (v0 == 0, lane),
                    bx == 0 && tid == 0,
                )
            };
        }
        if k == k_hi {
            break;
        }
        let next = if k + 1 < k_hi {
            gate_scalars(k + 1)
        } else {
            (0.0, 0.0)
        };

        // Chunk k: advance the max state, decay the state, add the chunk's K̃ᵀV.
        let (m_next, decay, log_w0) = state_walk::max_step::<G>((g, umax), m);
        m = m_next;
        unroll!(32, nb => {
            unroll!(4, e => { acc[4 * nb + e] *= decay; });
        });
        for x in nacc.iter_mut() {
            *x *= decay;
        }
        let first = k * (l / SUB_L);
        for it in first..(first + l / SUB_L).min(n_items) {
            let next = (it + 2 < n_items).then_some(it + 2);
            unsafe { stage::advance_by_for_wgmma::<2>(next, issue) };
            let st = it % STAGES;
            let (sk, sv, su) = (stage_k(st), stage_v(st), stage_u(st));
            // The weighted A fragments of the sub-tile's four 16-step slices, all before the
            // fence: a register written between two `wgmma`s makes ptxas wait for the first.
            let mut a = [[0u32; 4]; 4];
            unroll!(4, ks => {
                let ks = ks as u32;
                // Weights of the steps in this thread's A elements (as in `chunk_state`).
                let w = unsafe { state_walk::key_weights(su, ks, lane, log_w0) };
                let raw = unsafe { sk.a_trans(ks * 16, warp * 16, lane) };
                let (mut hi, mut lo) = ([0u32; 4], [0u32; 4]);
                unroll!(4, r => {
                    let (x0, x1) = E::unpack(raw[r]);
                    let wi = (r / 2) * 2;
                    let (y0, y1) = (x0 * w[wi], x1 * w[wi + 1]);
                    a[ks as usize][r] = E::pack(y0, y1);
                    if with_n {
                        (hi[r], lo[r]) = split2::<E>([y0, y1]);
                    }
                });
                if with_n {
                    // ñ: the weighted K̃ of this warp's rows, head and tail (as `chunk_state`).
                    unsafe {
                        E::mma(&mut nacc, hi, ones);
                        E::mma(&mut nacc, lo, ones);
                    }
                }
            });
            unsafe {
                wgmma::fence();
                unroll!(4, ks => {
                    E::rs_n256_mn(&mut acc, a[ks], wgmma::mn_major(sv, ks as u32, PANEL_V));
                });
                wgmma::commit();
                wgmma::wait_all();
            }
            acc.hold();
            unsafe { thread::sync_threads() };
        }
        (g, umax) = next;
    }
}
