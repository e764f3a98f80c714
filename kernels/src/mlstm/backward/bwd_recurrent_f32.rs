//! Backward for f32 inputs: the reverse recurrence step by step on the CUDA cores (tensor-core
//! products would round f32 to 16 bits). The f32 counterpart of `recurrent_f32`.
//!
//! Notation as in `recurrent_f32` and the float64 sweep it mirrors
//! (`host/src/reference/backward.rs`), with m held constant (the path through m is
//! `bwd_max_path`'s, as for the tensor-core kernels). The state is augmented with ñ as column
//! DHV where its gradient is followed (Exact mode, normalizing variant): C'_t = [C̃_t, ñ_t],
//! v'_t = [v_t, 1], dnum'_t = [dh_t ρ_t, δ_t] (ρ, δ from the rows kernel). Per step t, last
//! first, with A the gradient w.r.t. C'_t:
//!   dq̂_t = C'_t dnum'_t,  A += q̂_t dnum'_tᵀ,  r = A v'_t,  dk_t = β_t r,  dv_t = β_t Aᵀk_t,
//!   dλ_t = α_t ⟨A, C'_{t−1}⟩,  dι_t = β_t k_t·r,  then A ← α_t A.
//! One block owns TILE columns of one head; thread tid owns rows tid + j·THREADS, so the row
//! sums (dq, dk) are per thread and only dv, dλ, dι need a block reduction; dq, dk, dĩ, df̃
//! and the state dots add up over the column tiles with atomics (zeroed by the rows kernel).
//!
//! The walk needs C'_{t−1} going backwards. Per chunk, from the forward's chunk state: one
//! pass forward keeps a checkpoint every `segment(L)` steps; then each segment, last first, is
//! recomputed into its own slots and walked back. The slots are this block's part of the
//! `segments` scratch, read and written only by the thread that owns the rows.
use super::gates::GateKind;
use super::seqs::chunk_range;
use crate::arch::{atomic, global, math, shared, shfl, thread};
use tfla_params::bwd::state::{self, dots_per_head, final_dot, init_dot};
use tfla_params::bwd::{BwdParams, recurrent::*, rows};

const T: usize = TILE as usize;
const R: usize = ROWS_PER_THREAD as usize;
const _: () = assert!(
    T == 16 && R == 2,
    "the unroll! counts below assume 16 columns and 2 rows per thread"
);

/// # Safety
/// Launched with `grid(p, gates)`, THREADS threads and `smem_bytes(p.chunk)` bytes of dynamic
/// shared memory after the f32 rows kernel, on parameters validated by the host (f32 inputs,
/// gradients and chunk states; `segments` as `segments_len` lays it out).
#[inline(always)]
pub unsafe fn bwd_recurrent_f32<G: GateKind>(p: &BwdParams) {
    let tid = thread::thread_idx();
    let lane = tid % 32;
    let (bx, bh, _) = thread::block_idx();
    let (s, dqk, dhv, l, nc) = (p.s, p.dqk, p.dhv, p.chunk.max(1), p.num_chunks);
    let head = bh as u64;
    let padded = (nc * l) as u64;
    let exact = p.exact != 0;
    // Columns col0.. are value columns, or (col0 = DHV) the tile whose column 0 is ñ.
    let col0 = bx * TILE;
    let norm_tile = col0 >= dhv;
    let (seg, n_check) = (segment(l), l.div_ceil(segment(l)));

    let s_alpha = shared::base();
    let s_beta = s_alpha + 4 * l;
    let s_red = s_beta + 4 * l; // two buffers of WARPS × REDUCED

    let row = |j: usize| tid + j as u32 * THREADS;
    let slab = (head * scratch_tiles(dhv) as u64 + bx as u64) * slots(l) as u64;
    let slot_at = |x: u32, d: u32| {
        p.ptr.segments + ((slab + x as u64) * dqk as u64 + d as u64) * (4 * TILE as u64)
    };
    let store_slot = |x: u32, c: &[[f32; T]; R]| {
        unroll!(2, j => {
            let d = row(j);
            unroll!(4, q => {
                let v = [c[j][4 * q], c[j][4 * q + 1], c[j][4 * q + 2], c[j][4 * q + 3]];
                unsafe { global::st_v4_b32_if(d < dqk, slot_at(x, d) + 16 * q as u64, v.map(f32::to_bits)) };
            });
        });
    };
    let load_slot = |x: u32| -> [[f32; T]; R] {
        let mut c = [[0f32; T]; R];
        unroll!(2, j => {
            let d = row(j);
            if d < dqk {
                unroll!(4, q => {
                    let v = unsafe { global::ld_v4_f32(slot_at(x, d) + 16 * q as u64) };
                    unroll!(4, e => { c[j][4 * q + e] = v[e]; });
                });
            }
        });
        c
    };
    // A state of the head (C̃ rows at `c`, DQK × DHV, and ñ at `n`, DQK) as this block's tile.
    let load_state = |c: u64, n: u64| -> [[f32; T]; R] {
        let mut x = [[0f32; T]; R];
        unroll!(2, j => {
            let d = row(j);
            if d < dqk {
                if norm_tile {
                    x[j][0] = if n != 0 { unsafe { global::ld_f32(n + d as u64 * 4) } } else { 0.0 };
                } else if c != 0 {
                    unroll!(4, q => {
                        let v = unsafe {
                            global::ld_v4_f32(c + ((d * dhv + col0 + 4 * q as u32) as u64) * 4)
                        };
                        unroll!(4, e => { x[j][4 * q + e] = v[e]; });
                    });
                }
            }
        });
        x
    };
    // v'_t of the tile, and the own rows of a (DQK) input at step t.
    let value = |t: u32| -> [f32; T] {
        let mut v = [0f32; T];
        if norm_tile {
            v[0] = 1.0;
        } else {
            unroll!(4, q => {
                let x = unsafe {
                    global::ld_nc_v4(p.ptr.v + ((head * s as u64 + t as u64) * dhv as u64 + (col0 + 4 * q as u32) as u64) * 4)
                };
                unroll!(4, e => { v[4 * q + e] = f32::from_bits(x[e]); });
            });
        }
        v
    };
    let own_rows = |ptr: u64, t: u32| -> [f32; R] {
        let mut x = [0f32; R];
        unroll!(2, j => {
            let d = row(j);
            x[j] = unsafe {
                global::ld_nc_f32_or_zero(d < dqk, ptr + ((head * s as u64 + t as u64) * dqk as u64 + d as u64) * 4)
            };
        });
        x
    };
    let update = |c: &mut [[f32; T]; R], t: u32, alpha: f32, beta: f32| {
        let (k, v) = (own_rows(p.ptr.k, t), value(t));
        // As `recurrent_f32` computes it, so the recomputed states are the forward's.
        unroll!(2, j => {
            unroll!(16, e => { c[j][e] = alpha * c[j][e] + beta * k[j] * v[e]; });
        });
    };
    // Block sum of one value per thread into the state dot `x` of the head (tile slot 0).
    let state_dot = |a: &[[f32; T]; R], b: &[[f32; T]; R], x: u32| {
        let mut v = 0f32;
        unroll!(2, j => { unroll!(16, e => { v += a[j][e] * b[j][e]; }); });
        unroll!(5, o => { v += unsafe { shfl::xor_f32(v, 16 >> o) }; });
        if lane == 0 {
            let at = p.ptr.state_dots
                + ((head * dots_per_head(nc, p.seqs) as u64 + x as u64) * state::MAX_TILES as u64)
                    * 4;
            unsafe { atomic::red_add_f32(at, v) };
        }
    };
    let dm_path = G::STABILIZED && exact;

    // Each sequence (one, unless packed: `super::seqs`) from its last chunk to its first.
    for seq in 0..p.seqs.max(1) {
        let (k_lo, k_hi) = unsafe { chunk_range(p.ptr.seq_chunks, nc, seq) };
        let sh = seq as u64 * p.bh as u64 + head; // state head (B = 1 when packed)
        // The gradient w.r.t. the final state seeds the walk.
        let at_head = |ptr: u64, len: u32| {
            if ptr != 0 {
                ptr + sh * len as u64 * 4
            } else {
                0
            }
        };
        let mut adj = load_state(
            at_head(p.ptr.dc_final, dqk * dhv),
            at_head(p.ptr.dn_final, dqk),
        );
        let mut cur = [[0f32; T]; R];
        let mut k = k_hi;
        while k > k_lo {
            k -= 1;
            let (t0, t1) = (k * l, (k * l + l).min(s));
            let hk = head * nc as u64 + k as u64;
            // Forward through the chunk: checkpoints, and α_t, β_t as `recurrent_f32` has them.
            cur = load_state(
                p.ptr.c_states + hk * (dqk as u64) * (dhv as u64) * 4,
                p.ptr.n_states + hk * dqk as u64 * 4,
            );
            let mut m = if G::STABILIZED {
                unsafe { global::ld_nc_f32(p.ptr.m_states + hk * 4) }
            } else {
                0.0
            };
            for t in t0..t1 {
                if (t - t0) % seg == 0 {
                    store_slot((t - t0) / seg, &cur);
                }
                let at = (head * s as u64 + t as u64) * 4;
                let lambda = math::log_sigmoid(unsafe { global::ld_nc_f32(p.ptr.f + at) });
                let iota = G::log_input(unsafe { global::ld_nc_f32(p.ptr.i + at) });
                let m_new = if G::STABILIZED {
                    (lambda + m).max(iota)
                } else {
                    0.0
                };
                let (alpha, beta) = (math::exp(lambda + (m - m_new)), math::exp(iota - m_new));
                m = m_new;
                if tid == 0 {
                    unsafe {
                        shared::st_f32(s_alpha + 4 * (t - t0), alpha);
                        shared::st_f32(s_beta + 4 * (t - t0), beta);
                    }
                }
                update(&mut cur, t, alpha, beta);
            }
            unsafe { thread::sync_threads() };
            if dm_path && k == k_hi - 1 {
                // m_S stabilizes the final state: ⟨dC'_S, C'_S⟩ enters its gradient.
                state_dot(&adj, &cur, final_dot(nc, seq));
            }

            // Each segment, last first: recompute its states into the slots after the
            // checkpoints, then walk it back.
            let mut sg = (t1 - t0).div_ceil(seg);
            while sg > 0 {
                sg -= 1;
                let (a, b) = (t0 + sg * seg, (t0 + sg * seg + seg).min(t1));
                cur = load_slot(sg);
                for t in a..b {
                    store_slot(n_check + (t - a), &cur);
                    let (alpha, beta) = unsafe {
                        (
                            shared::ld_f32(s_alpha + 4 * (t - t0)),
                            shared::ld_f32(s_beta + 4 * (t - t0)),
                        )
                    };
                    update(&mut cur, t, alpha, beta);
                }
                let mut t = b;
                while t > a {
                    t -= 1;
                    let prev = load_slot(n_check + (t - a));
                    let (alpha, beta) = unsafe {
                        (
                            shared::ld_f32(s_alpha + 4 * (t - t0)),
                            shared::ld_f32(s_beta + 4 * (t - t0)),
                        )
                    };
                    let red = s_red + (t & 1) * 4 * WARPS * REDUCED;
                    unsafe {
                        reverse_step::<G>(
                            p, t, &cur, &prev, &mut adj, alpha, beta, red, norm_tile, col0, padded,
                        )
                    };
                    cur = prev;
                }
            }
        }
        // cur = C'_0 and adj = dC'_0.
        if dm_path {
            state_dot(&adj, &cur, init_dot(nc, seq));
        }
        unroll!(2, j => {
            let d = row(j);
            if d < dqk {
                if norm_tile {
                    if p.ptr.dn0 != 0 {
                        unsafe { global::st_f32(p.ptr.dn0 + (sh * dqk as u64 + d as u64) * 4, adj[j][0]) };
                    }
                } else if p.ptr.dc0 != 0 {
                    let base = p.ptr.dc0 + ((sh * dqk as u64 + d as u64) * dhv as u64 + col0 as u64) * 4;
                    unroll!(4, q => {
                        let v = [adj[j][4 * q], adj[j][4 * q + 1], adj[j][4 * q + 2], adj[j][4 * q + 3]];
                        unsafe { global::st_v4_b32_if(true, base + 16 * q as u64, v.map(f32::to_bits)) };
                    });
                }
            }
        });
        // Where the gradient does not follow ñ or m, their initial gradients are zeros.
        if bx == 0 {
            let mut d = tid;
            while !(exact && G::NORMALIZED) && p.ptr.dn0 != 0 && d < dqk {
                unsafe { global::st_f32(p.ptr.dn0 + (sh * dqk as u64 + d as u64) * 4, 0.0) };
                d += THREADS;
            }
            if !dm_path && p.ptr.dm0 != 0 && tid == 0 {
                unsafe { global::st_f32(p.ptr.dm0 + sh * 4, 0.0) };
            }
        }
    }
}

/// One step of the walk (module docs): dq, dk by atomics per own row, dv stored, dĩ and df̃
/// added after one block reduction (into the `red` buffer, alternating with the next step's).
///
/// # Safety
/// Called by every thread of the block, as `bwd_recurrent_f32` does.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn reverse_step<G: GateKind>(
    p: &BwdParams,
    t: u32,
    cur: &[[f32; T]; R],
    prev: &[[f32; T]; R],
    adj: &mut [[f32; T]; R],
    alpha: f32,
    beta: f32,
    red: u32,
    norm_tile: bool,
    col0: u32,
    padded: u64,
) {
    let tid = thread::thread_idx();
    let (lane, warp) = (tid % 32, tid / 32);
    let bh = thread::block_idx().1;
    let (s, dqk, dhv) = (p.s, p.dqk, p.dhv);
    let head = bh as u64;
    let step = head * s as u64 + t as u64;
    let coef = |plane: u32| unsafe {
        global::ld_nc_f32(
            p.ptr.row_coef + (plane as u64 * p.bh as u64 * padded + head * padded + t as u64) * 4,
        )
    };
    // v'_t and dnum'_t of the tile.
    let (mut v, mut dnum) = ([0f32; T], [0f32; T]);
    if norm_tile {
        v[0] = 1.0;
        dnum[0] = coef(rows::DELTA);
    } else {
        let rho = coef(rows::RHO);
        let at = (step * dhv as u64 + col0 as u64) * 4;
        unroll!(4, q => {
            let (x, y) = unsafe { (global::ld_nc_v4(p.ptr.v + at + 16 * q as u64), global::ld_nc_v4(p.ptr.dh + at + 16 * q as u64)) };
            unroll!(4, e => {
                v[4 * q + e] = f32::from_bits(x[e]);
                dnum[4 * q + e] = f32::from_bits(y[e]) * rho;
            });
        });
    }
    let mut dv = [0f32; T];
    let (mut d_alpha, mut d_beta) = (0f32, 0f32);
    unroll!(2, j => {
        let d = tid + j as u32 * THREADS;
        let ok = d < dqk;
        let at = (step * dqk as u64 + d as u64) * 4;
        let q_hat = p.scale * unsafe { global::ld_nc_f32_or_zero(ok, p.ptr.q + at) };
        let k = unsafe { global::ld_nc_f32_or_zero(ok, p.ptr.k + at) };
        let (mut dq, mut r) = (0f32, 0f32);
        unroll!(16, e => {
            dq += cur[j][e] * dnum[e];
            adj[j][e] += q_hat * dnum[e];
            r += adj[j][e] * v[e];
            d_alpha += adj[j][e] * prev[j][e];
            dv[e] += adj[j][e] * k;
        });
        d_beta += k * r;
        if ok {
            unsafe {
                atomic::red_add_f32(p.ptr.dq + at, p.scale * dq);
                atomic::red_add_f32(p.ptr.dk + at, beta * r);
            }
        }
    });
    unroll!(2, j => { unroll!(16, e => { adj[j][e] *= alpha; }); });

    // Block sums of dv (TILE), dα, dβ: warp shuffles, then one value per warp in `red`.
    let mut x = [0f32; REDUCED as usize];
    unroll!(16, e => { x[e] = dv[e]; });
    x[T] = d_alpha;
    x[T + 1] = d_beta;
    unroll!(16, e => { unroll!(5, b => { x[e] += unsafe { shfl::xor_f32(x[e], 16 >> b) }; }); });
    unroll!(2, e => { unroll!(5, b => { x[T + e] += unsafe { shfl::xor_f32(x[T + e], 16 >> b) }; }); });
    if lane == 0 {
        unroll!(16, e => { unsafe { shared::st_f32(red + 4 * (warp * REDUCED + e as u32), x[e]) } });
        unroll!(2, e => { unsafe { shared::st_f32(red + 4 * (warp * REDUCED + (T + e) as u32), x[T + e]) } });
    }
    unsafe { thread::sync_threads() };
    if tid < REDUCED {
        let mut sum = 0f32;
        for w in 0..WARPS {
            sum += unsafe { shared::ld_f32(red + 4 * (w * REDUCED + tid)) };
        }
        let gate = step * 4;
        if tid < TILE {
            if !norm_tile {
                unsafe {
                    global::st_f32(
                        p.ptr.dv + (step * dhv as u64 + (col0 + tid) as u64) * 4,
                        beta * sum,
                    )
                };
            }
        } else if tid == TILE {
            // dλ_t = α dα; df̃ = σ(−f̃)·dλ.
            let f = unsafe { global::ld_nc_f32(p.ptr.f + gate) };
            unsafe { atomic::red_add_f32(p.ptr.df + gate, math::sigmoid(-f) * alpha * sum) };
        } else {
            // dι_t = β dβ; dĩ = dι (mLSTMexp) or σ(−ĩ)·dι (mLSTMsig).
            let slope = if G::STABILIZED {
                1.0
            } else {
                math::sigmoid(-unsafe { global::ld_nc_f32(p.ptr.i + gate) })
            };
            unsafe { atomic::red_add_f32(p.ptr.di + gate, slope * beta * sum) };
        }
    }
}
