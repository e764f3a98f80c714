//! The forward in one kernel for small heads (`tfla_params::fwd::fused`): one block owns
//! TILE_HV value columns of one head's state, all DQK ≤ TILE_QK rows of them, and walks the
//! head's chunks in order (notation as in `chunk_state` and `chunk_output`). Per chunk k:
//! 1. C̃_k (f32 registers) is rounded to the input dtype into shared memory, where it is both
//!    the tile stored to the chunk states and the B operand of the chunk's inter-chunk term;
//!    ñ_k goes beside it in f32.
//! 2. Output: warp w computes rows 16w.. of the chunk, Q·C̃_k and the causal P·V over the
//!    chunk's key tiles, exactly as `chunk_output` does for a 64-row tile (the same gate terms,
//!    the same roundings), with Q's fragments kept in registers for both products.
//! 3. State: warp w advances rows 16w.. of C̃ by the chunk's K̃ᵀV, exactly as `chunk_state`.
//!
//! Steps 2 and 3 read the same staged Q, K, V (two stages: the next chunk loads meanwhile),
//! so C̃_k never makes the round trip through DRAM that the two-kernel forward needs, and K and
//! V are read once. The products are those of `chunk_state` followed by `chunk_output`, with
//! the same roundings to the input dtype, in the same order.
//!
//! Initial, final and packed-sequence states as in `chunk_state` (each block reads its own C̃0
//! elements before it writes the same elements of C̃_final; ñ_0 and m_0 come from the chunk
//! states at chunk 0).
use super::gates::GateKind;
use super::out_tile::{OutTile, RowTerms};
use super::seqs::chunk_range;
use super::slots::state_head;
use super::stage;
use super::state_walk;
use crate::arch::convert::Elem;
use crate::arch::{cp_async, global, math, shared, thread};
use crate::tile::{
    RegTile, SmemTile, acc_pos, acc_to_a, b_pos, leads_quad, load_tile, split2, stage_tile,
    store_tile,
};
use tfla_params::fwd::{FwdParams, SMEM_ROW_PAD, fused::*};

const NB: usize = (TILE_HV / 8) as usize;
const KS: usize = (TILE_QK / 16) as usize;
const _: () = assert!(
    NB == 8 && KS == 8 && CHUNK == 128 && TILE_K == 64,
    "the unroll! counts below assume 8 value n-blocks, 8 k-steps over DQK and over the \
     chunk's steps, and two 64-key tiles"
);

/// # Safety
/// Launched with `grid(p)`, THREADS threads and `smem_bytes()` bytes of dynamic shared memory,
/// after chunk_gates, on parameters validated by the host (shapes, alignment, `applies`).
#[inline(always)]
pub unsafe fn chunk_fused<E: Elem, G: GateKind>(p: &FwdParams) {
    let tid = thread::thread_idx();
    let (lane, warp) = (tid % 32, tid / 32);
    let (bx, bh, seq) = thread::block_idx();
    let v0 = bx * TILE_HV;
    let (l, nc, s, dqk, dhv) = (p.chunk, p.num_chunks, p.s, p.dqk, p.dhv);
    let (k_lo, k_hi) = unsafe { chunk_range(p.ptr.seq_chunks, nc, seq) };

    // Shared memory: STAGES × (Q, K, V, u of a chunk), C̃_k, the gate terms, ñ_k.
    let stage_base = |st: u32| shared::base() + st * stage_bytes();
    let stage_q = |st: u32| SmemTile {
        base: stage_base(st),
        stride: (TILE_QK + SMEM_ROW_PAD) * 2,
    };
    let stage_k = |st: u32| SmemTile {
        base: stage_base(st) + qk_bytes(),
        stride: (TILE_QK + SMEM_ROW_PAD) * 2,
    };
    let stage_v = |st: u32| SmemTile {
        base: stage_base(st) + 2 * qk_bytes(),
        stride: (TILE_HV + SMEM_ROW_PAD) * 2,
    };
    // The chunk's gate vectors u, b and cm (chunk_gates), CHUNK f32 each.
    let stage_u = |st: u32| stage_base(st) + 2 * qk_bytes() + v_bytes();
    let stage_b = |st: u32| stage_u(st) + 4 * CHUNK;
    let stage_cm = |st: u32| stage_b(st) + 4 * CHUNK;
    let state = SmemTile {
        base: shared::base() + STAGES * stage_bytes(),
        stride: (TILE_HV + SMEM_ROW_PAD) * 2,
    };
    // The row gate terms; the column terms C_j = u_j·log2e are formed from the staged u where
    // they are read.
    let gt = RowTerms::at(state.base + state_bytes(), CHUNK);
    let sn = gt.row_floor + 4 * CHUNK;

    // Global bases of this head.
    let head = bh as u64;
    let gq = p.ptr.q + head * (s as u64) * (dqk as u64) * 2;
    let gk = p.ptr.k + head * (s as u64) * (dqk as u64) * 2;
    let gv = p.ptr.v + head * (s as u64) * (dhv as u64) * 2;
    let gh = p.ptr.h + head * (s as u64) * (dhv as u64) * 2;
    let gate_row = head * ((nc * l) as u64) * 4;
    let (g_u, g_b, g_cm) = (
        p.ptr.gate_u + gate_row,
        p.ptr.gate_b + gate_row,
        p.ptr.gate_cm + gate_row,
    );

    // The warp's state rows (and output rows) of element e.
    let row = |e: usize| warp * 16 + acc_pos(lane, e).0;
    // As in `chunk_state`: this thread's first accumulator element, through `opaque`.
    let origin = || {
        let lane = thread::opaque(lane);
        (warp * 16 + acc_pos(lane, 0).0, v0 + acc_pos(lane, 0).1)
    };

    let sh = unsafe { state_head(p, bh, seq) };
    let mut acc = RegTile::<1, NB>::ZERO;
    if p.ptr.c0 != 0 {
        let base = p.ptr.c0 + sh * (dqk as u64) * (dhv as u64) * 4;
        unsafe { load_tile(&mut acc, base, origin(), (dqk, dhv)) };
    }
    // ñ as a value column of ones (as in `chunk_state`, `state_walk::add_slice`); every block
    // needs it for its outputs.
    let h0 = head * nc as u64 + k_lo as u64;
    let mut nacc = [0f32; 4];
    if G::NORMALIZED {
        for half in 0..2 {
            let r = row(2 * half);
            let ptr = p.ptr.n_states + (h0 * dqk as u64 + r as u64) * 4;
            let x = unsafe { global::ld_nc_f32_or_zero(r < dqk, ptr) };
            nacc[2 * half] = x;
            nacc[2 * half + 1] = x;
        }
    }
    let mut m = 0f32;
    if G::STABILIZED {
        m = unsafe { global::ld_nc_f32(p.ptr.m_states + h0 * 4) };
    }

    // One pipeline item per chunk: its Q, K (all DQK columns), V (this block's columns) and
    // gate vectors.
    let issue = |k: u32| unsafe {
        let (st, t0) = (k % STAGES, k * l);
        stage::rows::<THREADS, { TILE_QK / 8 }>(stage_q(st), gq, (t0, s), (0, dqk), CHUNK);
        stage::rows::<THREADS, { TILE_QK / 8 }>(stage_k(st), gk, (t0, s), (0, dqk), CHUNK);
        stage::rows::<THREADS, { TILE_HV / 8 }>(stage_v(st), gv, (t0, s), (v0, dhv), CHUNK);
        stage::f32_vec::<THREADS>(stage_u(st), g_u, (t0, s), CHUNK);
        stage::f32_vec::<THREADS>(stage_b(st), g_b, (t0, s), CHUNK);
        if G::STABILIZED {
            stage::f32_vec::<THREADS>(stage_cm(st), g_cm, (t0, s), CHUNK);
        }
        cp_async::commit();
    };
    let gate_scalars = |k: u32| unsafe { state_walk::gate_scalars::<G>(p, head, k) };
    if k_lo < k_hi {
        issue(k_lo);
    }
    let (mut g, mut umax) = gate_scalars(k_lo);

    for k in k_lo..=k_hi {
        let (c_out, n_out, m_out) = state_walk::outputs(p, head, sh, k, k_hi);
        let t0 = k * l;
        let len = l.min(s.saturating_sub(t0));
        let tile = OutTile {
            k,
            i0: 0,
            t0,
            len,
            nkeys: len,
            v0,
            head,
        };
        if k < k_hi {
            // C̃_k and ñ_k into shared memory (the previous chunk's readers passed the barrier
            // at the end of its iteration).
            let (r0, c0) = (
                thread::opaque(warp * 16 + acc_pos(lane, 0).0),
                acc_pos(lane, 0).1,
            );
            unsafe { stage_tile::<E, 1, NB>(&acc, state, (r0, c0)) };
            if G::NORMALIZED && leads_quad(lane) {
                unroll!(2, half => {
                    unsafe { shared::st_f32(sn + 4 * row(2 * half), nacc[2 * half]) };
                });
            }
            unsafe {
                // Chunk k has landed and everyone sees the tiles above; chunk k + 1 loads.
                stage::advance((k + 1 < k_hi).then_some(k + 1), issue);
            }
            if p.ptr.c_states != 0 {
                unsafe {
                    stage::store_rows::<THREADS, { TILE_HV / 8 }>(
                        state,
                        c_out,
                        (0, dqk),
                        (v0, dhv),
                        TILE_QK,
                    )
                };
            }
        } else if p.ptr.c_final != 0 {
            unsafe { store_tile(&acc, c_out, origin(), (dqk, dhv)) };
        }
        if k < k_hi || p.ptr.c_final != 0 {
            unsafe {
                state_walk::store_n_m::<G>(
                    p,
                    (k, k_lo, k_hi),
                    (n_out, m_out),
                    ([row(0), row(2)], &nacc),
                    m,
                    G::NORMALIZED,
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
        let st = k % STAGES;
        let (sq, sk, sv, su) = (stage_q(st), stage_k(st), stage_v(st), stage_u(st));

        // The row gate terms of the warp's 16 rows (lanes 0–15, one row each), from the staged
        // b and cm and the register m_k: no global loads, and no block barrier, between the
        // chunk's arrival and its multiplies.
        if lane < 16 {
            let row = warp * 16 + lane;
            let (sb, scm) = (stage_b(st) + 4 * row, stage_cm(st) + 4 * row);
            unsafe {
                tile.put_row_terms::<G>(
                    p,
                    gt,
                    row,
                    || shared::ld_f32(sb),
                    || shared::ld_f32(scm),
                    m,
                )
            };
        }
        unsafe { thread::sync_warp() };

        // Output rows 16·warp.. of chunk k: the inter-chunk term Q·C̃_k (with ñ_kᵀq), scaled
        // per row, then the causal P·V over the key tiles up to the warp's last row.
        let mut qa = [[0u32; 4]; KS];
        unroll!(8, ks => {
            qa[ks] = unsafe { sq.a(warp * 16, ks as u32 * 16, lane) };
        });
        let mut out = [[0f32; 4]; NB];
        let mut snacc = [0f32; 4];
        unroll!(8, ks => {
            unroll!(4, pair => {
                let b = unsafe { state.b_kn(ks as u32 * 16, pair as u32 * 16, lane) };
                unsafe {
                    E::mma(&mut out[2 * pair], qa[ks], b[0]);
                    E::mma(&mut out[2 * pair + 1], qa[ks], b[1]);
                }
            });
            if G::NORMALIZED {
                // ñ_k as a 16-bit head and tail (`chunk_output`).
                let d = sn + 4 * (ks as u32 * 16 + b_pos(lane, 0).0);
                let n = unsafe { [0, 1, 8, 9].map(|o| shared::ld_f32(d + 4 * o)) };
                let (hi, lo) = split2::<E>([n[0], n[1]]);
                let (hi2, lo2) = split2::<E>([n[2], n[3]]);
                unsafe {
                    E::mma(&mut snacc, qa[ks], [hi, hi2]);
                    E::mma(&mut snacc, qa[ks], [lo, lo2]);
                }
            }
        });
        unroll!(2, half => {
            let e = 2 * half;
            let scale = unsafe { shared::ld_f32(gt.row_scale + 4 * row(e)) };
            unroll!(8, nb => {
                out[nb][e] *= scale;
                out[nb][e + 1] *= scale;
            });
            snacc[e] *= scale;
        });
        let mut row_sum = [0f32; 2];
        unroll!(2, kt => {
            let kb = kt as u32 * TILE_K;
            // Warp-uniform: the key tile holds keys of the warp's rows.
            if kb <= warp * 16 + 15 && kb < len {
                let mut sacc = [[0f32; 4]; 8];
                unroll!(8, ks => {
                    unroll!(4, pair => {
                        let b = unsafe { sk.b_nk(kb + pair as u32 * 16, ks as u32 * 16, lane) };
                        unsafe {
                            E::mma(&mut sacc[2 * pair], qa[ks], b[0]);
                            E::mma(&mut sacc[2 * pair + 1], qa[ks], b[1]);
                        }
                    });
                });
                // P = S ⊙ 2^(R_i + C_j), causal and ragged rows masked (as `chunk_output`).
                unroll!(8, nb => {
                    unroll!(4, e => {
                        let x = &mut sacc[nb][e];
                        let (r, c) = acc_pos(lane, e);
                        let i = warp * 16 + r;
                        let j = kb + nb as u32 * 8 + c;
                        let c_j = unsafe { shared::ld_f32(su + 4 * j) } * math::LOG2_E;
                        let w = math::exp2(unsafe { shared::ld_f32(gt.row_r + 4 * i) } + c_j);
                        let w = if j <= i && i < len { w } else { 0.0 };
                        *x *= w;
                        row_sum[e / 2] += *x;
                    });
                });
                unroll!(4, ks => {
                    let a = acc_to_a::<E>(&sacc[2 * ks], &sacc[2 * ks + 1]);
                    unroll!(4, pair => {
                        let b = unsafe { sv.b_kn(kb + ks as u32 * 16, pair as u32 * 16, lane) };
                        unsafe {
                            E::mma(&mut out[2 * pair], a, b[0]);
                            E::mma(&mut out[2 * pair + 1], a, b[1]);
                        }
                    });
                });
            }
        });
        unsafe {
            tile.store_h::<E, G, 2>(
                p,
                gt,
                (warp * 16, lane),
                gh,
                row_sum,
                |x, rs| snacc[2 * x] + rs,
                |nb, e| out[nb][e],
            )
        };

        // State rows 16·warp..: advance the max state, decay, add the chunk's K̃ᵀV (as
        // `chunk_state`, one 128-step sub-tile).
        let (m_next, decay, log_w0) = state_walk::max_step::<G>((g, umax), m);
        m = m_next;
        acc.scale(decay);
        for x in nacc.iter_mut() {
            *x *= decay;
        }
        unroll!(8, ks => {
            let (tiles, at) = ((sk, sv, su), (lane, warp));
            let with_n = G::NORMALIZED;
            unsafe { state_walk::add_slice::<E, NB>((&mut acc, &mut nacc), tiles, ks as u32, at, log_w0, with_n) };
        });
        // Everyone is done with this chunk's stage, C̃_k, ñ_k and gate terms.
        unsafe { thread::sync_threads() };
        (g, umax) = next;
    }
}
