//! Chunk states (forward, inter-chunk): for one head and one TILE_QK × TILE_HV tile of its
//! state, walk the chunks in order and write the state before each chunk.
//!
//! Notation: BH = B·NH heads, S steps, L chunk size, NC = ceil(S/L) chunks, DQK × DHV state.
//! Inside chunk k (steps kL … kL+len−1, local index j), λ_j = logσ(f̃_j), ι_j the log input gate,
//! b_j = Σ_{s≤j} λ_s, g = b_{len−1}, a_j = g − b_j + ι_j = g + u_j (chunk_gates wrote b, u, the
//! running max cm of u, and g):
//!   m_{k+1} = max(g + m_k, g + cm_{len−1})                 (m ≡ 0 without the stabilizer)
//!   C̃_{k+1} = e^{g + m_k − m_{k+1}} C̃_k + Σ_j e^{a_j − m_{k+1}} k_j v_jᵀ   (K̃ᵀV on tensor cores)
//!   ñ_{k+1} = e^{g + m_k − m_{k+1}} ñ_k + Σ_j e^{a_j − m_{k+1}} k_j
//! Each warp holds 16 rows (DQK) × TILE_HV columns of C̃ in registers across the whole walk; K
//! and V are staged in SUB_L-step sub-tiles with `cp.async`, two deep (the next sub-tile loads
//! while this one multiplies; a chunk's first sub-tile loads during its gate math); the gate
//! weights e^{a_j − m} are applied to the K fragments in registers.
//!
//! C̃_k is stored in the input dtype: the chunk-output kernel rounds it to that dtype for its
//! `mma` anyway, so storing it rounded changes no result and halves the bytes materialized.
//! The final state is stored in f32.
//!
//! In a packed variable-length batch (`super::seqs`) each block walks the chunks of one
//! sequence (grid z), from that sequence's initial state to its final state.
//!
//! Initial and final states live at the head's state head (`super::slots`: itself, or its
//! batch row's slot of a state pool), possibly the same memory. Each thread reads its C̃0
//! elements before the walk and writes the same elements of C̃_final after it; ñ_0 and m_0
//! come from the chunk states at chunk 0 (chunk_gates copied them there), which this kernel
//! does not rewrite. So no block reads what another block of the head writes.
use super::gates::GateKind;
use super::slots::state_head;
use super::stage;
use super::state_walk::{self, StateSmem, Walk};
use crate::arch::convert::Elem;
use crate::arch::{cp_async, shared, thread};
use crate::tile::acc_pos;
use tfla_params::fwd::{FwdParams, state::*};

const NB: usize = (TILE_HV / 8) as usize;
const _: () = assert!(
    NB == 16 && SUB_L == 64,
    "the unroll! counts below assume 16 n-blocks and 64-step sub-tiles"
);

/// # Safety
/// Launched with `TILES.grid(p)`, THREADS threads and `TILES.smem_bytes()` bytes of dynamic shared
/// memory, on parameters validated by the host (shapes, alignment, chunk size).
#[inline(always)]
pub unsafe fn chunk_state<E: Elem, G: GateKind>(p: &FwdParams) {
    let tid = thread::thread_idx();
    let (lane, warp) = (tid % 32, tid / 32);
    // This block's tile and chunks [k_lo, k_hi]: all of them, or one sequence's.
    let walk = unsafe { state_walk::walk(p, (TILE_QK, TILE_HV)) };
    let Walk { bx, bh, seq, d0, v0, k_lo, k_hi } = walk;
    let (l, nc, s) = (p.chunk, p.num_chunks, p.s);
    let (dqk, dhv) = (p.dqk, p.dhv);
    let smem = StateSmem(TILES);
    let (stage_k, stage_v, stage_u) = (|st| smem.k(st), |st| smem.v(st), |st| smem.u(st));
    let staging = smem.staging();

    // Global bases of this head (bytes).
    let esz = 2u64;
    let head = bh as u64;
    let gq_k = p.ptr.k + head * (s as u64) * (dqk as u64) * esz;
    let gq_v = p.ptr.v + head * (s as u64) * (dhv as u64) * esz;
    let g_u = p.ptr.gate_u + head * ((nc * l) as u64) * 4; // (BH, NC·L) rows

    // The warp's accumulator rows (within the tile) of element e.
    let row = |e: usize| warp * 16 + acc_pos(lane, e).0;
    // This thread's first accumulator element (row, column in the state), through
    // `thread::opaque`: taken once per loop over the tile, so that the per-element addresses
    // are redone there rather than kept live across the walk.
    let origin = || {
        let lane = thread::opaque(lane);
        (d0 + warp * 16 + acc_pos(lane, 0).0, v0 + acc_pos(lane, 0).1)
    };

    // Initial state (coherent loads: with a state pool, C̃_final below overwrites them).
    let sh = unsafe { state_head(p, bh, seq) };
    let mut acc = [[0f32; 4]; NB];
    if p.ptr.c0 != 0 {
        let base = p.ptr.c0 + sh * (dqk as u64) * (dhv as u64) * 4;
        unsafe { state_walk::load_state(&mut acc, base, origin(), (dqk, dhv)) };
    }
    // ñ rides along as a value column of ones, in the blocks of the first DHV tile: the
    // accumulator `nacc` is one more n-block whose 8 columns all hold ñ of the warp's rows
    // (rows g and g+8 in elements 0 and 2).
    let with_n = G::NORMALIZED && v0 == 0;
    let ones = [E::pack(1.0, 1.0); 2];
    let (mut nacc, mut m) =
        unsafe { state_walk::initial_n_m::<G>(p, head, k_lo, |h| d0 + row(2 * h), with_n) };

    // Sub-tiles are items of one pipeline over the whole walk (`state_walk::items`): 16-byte
    // K/V rows and the u vector of SUB_L steps each.
    let (item_lo, n_items) = state_walk::items(p, (k_lo, k_hi), SUB_L);
    let issue = |it: u32| unsafe {
        let (st, j0) = (it % STAGES, it * SUB_L);
        stage::rows::<THREADS, { TILE_QK / 8 }>(stage_k(st), gq_k, (j0, s), (d0, dqk), SUB_L);
        stage::rows::<THREADS, { TILE_HV / 8 }>(stage_v(st), gq_v, (j0, s), (v0, dhv), SUB_L);
        stage::f32_vec::<THREADS>(stage_u(st), g_u, (j0, s), SUB_L);
        cp_async::commit();
    };
    // Chunk k's gate scalars, loaded one chunk ahead.
    let gate_scalars = |k: u32| unsafe { state_walk::gate_scalars::<G>(p, head, k) };
    issue(item_lo);
    let (mut g, mut umax) = gate_scalars(k_lo);

    for k in k_lo..=k_hi {
        // Store the state before chunk k (k = k_hi: the final state).
        let (c_out, n_out, m_out) = state_walk::outputs(p, head, sh, k, k_hi);
        if k < k_hi {
            // C̃_k through the staging tile (`stage::store_rows`: whole sectors per store).
            let (r0, c0) = (thread::opaque(warp * 16 + acc_pos(lane, 0).0), acc_pos(lane, 0).1);
            unroll!(16, nb => {
                unroll!(2, half => {
                    let v = E::pack(acc[nb][2 * half], acc[nb][2 * half + 1]);
                    let at = staging.offset(r0 + half as u32 * 8, c0 + nb as u32 * 8);
                    unsafe { shared::st_u32(at, v) };
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
        } else if p.ptr.c_final != 0 {
            unsafe { state_walk::store_state(&acc, c_out, origin(), (dqk, dhv)) };
        }
        if k < k_hi || p.ptr.c_final != 0 {
            unsafe {
                state_walk::store_n_m::<G>(
                    p,
                    (k, k_lo, k_hi),
                    (n_out, m_out),
                    ([d0 + row(0), d0 + row(2)], &nacc),
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
        for a in acc.iter_mut() {
            for x in a.iter_mut() {
                *x *= decay;
            }
        }
        for x in nacc.iter_mut() {
            *x *= decay;
        }
        let first = k * (l / SUB_L);
        for it in first..(first + l / SUB_L).min(n_items) {
            unsafe { stage::advance((it + 1 < n_items).then_some(it + 1), issue) };
            let st = it % STAGES;
            let (sk, sv, su) = (stage_k(st), stage_v(st), stage_u(st));
            unroll!(4, ks => {
                let ks = ks as u32;
                let a = unsafe { sk.a_trans(ks * 16, warp * 16, lane) };
                // The weighted K, head and tail (`state_walk::weighted_split`).
                let w = unsafe { state_walk::key_weights(su, ks, lane, log_w0) };
                let (a, a_lo) = state_walk::weighted_split::<E>(a, w);
                unroll!(8, pair => {
                    let b = unsafe { sv.b_kn(ks * 16, pair as u32 * 16, lane) };
                    unsafe {
                        E::mma(&mut acc[2 * pair], a, b[0]);
                        E::mma(&mut acc[2 * pair + 1], a, b[1]);
                    }
                });
                if with_n {
                    unsafe {
                        E::mma(&mut nacc, a, ones);
                        E::mma(&mut nacc, a_lo, ones);
                    }
                }
            });
            unsafe { thread::sync_threads() };
        }
        (g, umax) = next;
    }
}
