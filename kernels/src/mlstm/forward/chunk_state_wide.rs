//! Chunk states (forward, inter-chunk) in the wide shape (`tfla_params::fwd::state_wide`): the
//! recurrence, outputs and state-pool rules of `chunk_state` (see its docs for the notation),
//! for a 128 × 256 state tile held by 8 warps, each a 64 × 64 sub-tile (4 m-tiles × 8
//! n-blocks) in registers across the whole walk. Per 16 steps a warp loads 4 weighted A
//! fragments of K̃ᵀ and 4 pairs of V fragments and issues 32 `mma`s: a B fragment serves 4
//! m-tiles, and every staged sub-tile serves the whole 128 × 256 tile.
//!
//! ñ rides along as in `chunk_state` (an n-block of ones times K̃ in a 16-bit head and tail),
//! in the blocks of the first DHV tile, spread over all 8 warps: warp w sums the 16 rows
//! 16w.. of the tile (one of its own m-tiles, wm = w / 4), so each warp adds one A fragment
//! and 2 `mma`s per 16 steps and no warp waits for another at the barrier. (Only the first
//! warp column carrying ñ for its 64 rows, as the narrow kernel's layout would suggest, costs
//! 16 head-and-tail registers per m-tile beside the 128-register tile, past what the driver's
//! compiler holds without spilling.)
use super::gates::GateKind;
use super::slots::state_head;
use super::stage;
use super::state_walk::{self, StateSmem, Walk};
use crate::arch::convert::Elem;
use crate::arch::{cp_async, global, shared, thread};
use crate::tile::{acc_pos, split2};
use tfla_params::fwd::{FwdParams, state_wide::*};

const MT: usize = (WARP_QK / 16) as usize;
const NT: usize = (WARP_HV / 8) as usize;
const _: () = assert!(
    MT == 4 && NT == 8 && SUB_L == 64 && STAGES == 3,
    "the unroll! counts below assume 4 m-tiles, 8 n-blocks, 64-step sub-tiles, 3 stages"
);

/// # Safety
/// Launched with `TILES.grid(p)`, THREADS threads and `TILES.smem_bytes()` bytes of dynamic shared memory,
/// on parameters validated by the host (shapes, alignment, chunk size).
#[inline(always)]
pub unsafe fn chunk_state_wide<E: Elem, G: GateKind>(p: &FwdParams) {
    let tid = thread::thread_idx();
    let (lane, warp) = (tid % 32, tid / 32);
    let (wm, wn) = (warp / WARPS_N, warp % WARPS_N);
    let walk = unsafe { state_walk::walk(p, (TILE_QK, TILE_HV)) };
    let Walk { bx, bh, seq, d0, v0, k_lo, k_hi } = walk;
    let (l, nc, s) = (p.chunk, p.num_chunks, p.s);
    let (dqk, dhv) = (p.dqk, p.dhv);
    let smem = StateSmem(TILES);
    let (stage_k, stage_v, stage_u) = (|st| smem.k(st), |st| smem.v(st), |st| smem.u(st));
    let staging = smem.staging();

    let head = bh as u64;
    let gk = p.ptr.k + head * (s as u64) * (dqk as u64) * 2;
    let gv = p.ptr.v + head * (s as u64) * (dhv as u64) * 2;
    let g_u = p.ptr.gate_u + head * ((nc * l) as u64) * 4;

    let sh = unsafe { state_head(p, bh, seq) };
    // This thread's first element of the tile (row, column in the state), through
    // `thread::opaque` at each use so that per-element addresses are not kept live.
    let (r0, c0) = (
        d0 + wm * WARP_QK + acc_pos(lane, 0).0,
        v0 + wn * WARP_HV + acc_pos(lane, 0).1,
    );
    // Calls `f(mt, nb, half, inside, idx)` for the element pairs of the thread's sub-tile:
    // `idx` the element index of the pair's first element in a (DQK, DHV) state.
    let each_pair = |f: &mut dyn FnMut(usize, usize, usize, bool, u64)| {
        let (r0, c0) = (thread::opaque(r0), thread::opaque(c0));
        unroll!(4, mt => {
            unroll!(2, half => {
                let r = r0 + mt as u32 * 16 + half as u32 * 8;
                unroll!(8, nb => {
                    let c = c0 + nb as u32 * 8;
                    f(mt, nb, half, r < dqk && c < dhv, (r * dhv + c) as u64);
                });
            });
        });
    };
    let mut acc = [[[0f32; 4]; NT]; MT];
    if p.ptr.c0 != 0 {
        let base = p.ptr.c0 + sh * (dqk as u64) * (dhv as u64) * 4;
        each_pair(&mut |mt, nb, half, inside, idx| {
            let x = unsafe { global::ld_v2_f32_or_zero(inside, base + idx * 4) };
            acc[mt][nb][2 * half] = x[0];
            acc[mt][nb][2 * half + 1] = x[1];
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
        stage::rows::<THREADS, { TILE_HV / 8 }>(stage_v(st), gv, (j0, s), (v0, dhv), SUB_L);
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
                let (r0, c0) = (
                    thread::opaque(wm * WARP_QK + acc_pos(lane, 0).0),
                    wn * WARP_HV + acc_pos(lane, 0).1,
                );
                unroll!(4, mt => {
                    unroll!(2, half => {
                        let r = r0 + mt as u32 * 16 + half as u32 * 8;
                        unroll!(8, nb => {
                            let v = E::pack(acc[mt][nb][2 * half], acc[mt][nb][2 * half + 1]);
                            unsafe { shared::st_u32(staging.offset(r, c0 + nb as u32 * 8), v) };
                        });
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
                each_pair(&mut |mt, nb, half, inside, idx| {
                    let v = [acc[mt][nb][2 * half], acc[mt][nb][2 * half + 1]];
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
        unroll!(4, mt => {
            unroll!(8, nb => {
                unroll!(4, e => { acc[mt][nb][e] *= decay; });
            });
        });
        for x in nacc.iter_mut() {
            *x *= decay;
        }
        let first = k * (l / SUB_L);
        for it in first..(first + l / SUB_L).min(n_items) {
            unsafe { stage::advance_by::<2>((it + 2 < n_items).then_some(it + 2), issue) };
            let st = it % STAGES;
            let (sk, sv, su) = (stage_k(st), stage_v(st), stage_u(st));
            // A rolled loop over the 16-step slices (through `opaque`, which the unroller cannot
            // see through): fully unrolled, the fragments of later slices are loaded early and
            // held beside the 128-register tile, and the kernel spills.
            for ks in 0..thread::opaque(SUB_L / 16) {
                // Weights of the steps in this thread's A elements (as in `chunk_state`).
                let w = unsafe { state_walk::key_weights(su, ks, lane, log_w0) };
                let mut a = [[0u32; 4]; MT];
                unroll!(4, mt => {
                    let raw = unsafe { sk.a_trans(ks * 16, wm * WARP_QK + mt as u32 * 16, lane) };
                    unroll!(4, r => {
                        let (lo, hi) = E::unpack(raw[r]);
                        let wi = (r / 2) * 2;
                        a[mt][r] = E::pack(lo * w[wi], hi * w[wi + 1]);
                    });
                });
                if with_n {
                    // The weighted K̃ of this warp's ñ rows, head and tail (as `chunk_state`).
                    let raw = unsafe { sk.a_trans(ks * 16, warp * 16, lane) };
                    let (mut hi, mut lo) = ([0u32; 4], [0u32; 4]);
                    unroll!(4, r => {
                        let (x0, x1) = E::unpack(raw[r]);
                        let wi = (r / 2) * 2;
                        (hi[r], lo[r]) = split2::<E>([x0 * w[wi], x1 * w[wi + 1]]);
                    });
                    unsafe {
                        E::mma(&mut nacc, hi, ones);
                        E::mma(&mut nacc, lo, ones);
                    }
                }
                unroll!(4, pair => {
                    let b = unsafe { sv.b_kn(ks * 16, wn * WARP_HV + pair as u32 * 16, lane) };
                    unroll!(4, mt => {
                        unsafe {
                            E::mma(&mut acc[mt][2 * pair], a[mt], b[0]);
                            E::mma(&mut acc[mt][2 * pair + 1], a[mt], b[1]);
                        }
                    });
                });
            }
            unsafe { thread::sync_threads() };
        }
        (g, umax) = next;
    }
}
