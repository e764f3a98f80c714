//! Backward, gate gradients: one warp per head, two walks over the sequence in 32-step
//! segments (a chunk is a whole number of segments).
//!
//! Input gates: dι_j = k_j·dk_j (`shared/MATH.md`; the dk kernel wrote the row dots).
//!
//! Forget gates, per chunk k and step τ of it (m held constant):
//!   dλ_τ = A_k + Σ_{j<τ} Kinter_j + Σ_{i≥τ} Qinter_i + Σ_{s<τ} (Cs_s − R_s)
//! with A_k = γ_k ⟨dC'_{k+1}, C'_k⟩ (state kernel), Kinter_j = k_j·(inter-chunk part of dk_j),
//! Qinter_i = q̂_i·(inter-chunk part of dq̂_i) (combine kernels), and R_s, Cs_s the row and
//! column sums of the pair gradients G_ij (j < i) of the chunk (score kernel): λ_τ scales the
//! pairs j < τ ≤ i, the readouts of C'_k by rows i ≥ τ, the weights of steps j < τ in C'_{k+1}
//! and the decay of C'_k into it. The familiar identity dλ_t = Σ_{i≥t}(q̂_i·dq̂_i − k_i·dk_i)
//! + … gives the same number in exact arithmetic, but it subtracts O(1) terms whose difference
//! is tiny where forget gates are near 0 (each diagonal pair appears in both dots, rounded
//! differently in 16-bit products); every term here is a share of the gradient itself.
//! The first walk (forward) writes the prefix sums into df, the second (backward) adds the
//! suffix sums and A_k.
//!
//! mLSTMexp in Exact mode adds the path through the max state: m_t = max(a_t, ι_t),
//! a_t = λ_t + m_{t−1}, c_t = [a_t ≥ ι_t]. Each m_t has a direct gradient (through eps of the
//! denominator, from the rows kernel), m_S also dm_S − ⟨dC'_S, C'_S⟩ (the final state is
//! stabilized by it). The total G_t = dm_t + c_{t+1} G_{t+1} is a suffix scan of affine maps;
//! it goes to λ_t where c_t holds, to ι_t otherwise, and through c_0 to m_0, whose gradient
//! also has ⟨dC'_0, C'_0⟩ (C̃_0 is stabilized by m_0).
use super::gates::GateKind;
use crate::arch::{global, math, shfl, thread};
use tfla_params::bwd::combine::{self, DOT_K, DOT_K_INTER, DOT_Q_INTER, MAX_COL_TILES};
use tfla_params::bwd::{BwdParams, gates::WARPS, rows, scores, state};

/// Sum over the warp; every lane gets it.
#[inline(always)]
unsafe fn warp_sum(mut v: f32) -> f32 {
    unsafe {
        v += shfl::xor_f32(v, 16);
        v += shfl::xor_f32(v, 8);
        v += shfl::xor_f32(v, 4);
        v += shfl::xor_f32(v, 2);
        v += shfl::xor_f32(v, 1);
    }
    v
}

/// # Safety
/// Launched with `grid(p)` and THREADS threads after the other backward kernels, on
/// parameters validated by the host.
#[inline(always)]
pub unsafe fn bwd_gates<G: GateKind>(p: &BwdParams) {
    let tid = thread::thread_idx();
    let (lane, warp) = (tid % 32, tid / 32);
    let bh = thread::block_idx().0 * WARPS + warp;
    if bh >= p.bh {
        return; // the whole warp: no collective below involves another warp
    }
    let (l, s, nc) = (p.chunk, p.s, p.num_chunks);
    let head = bh as u64;
    let padded = (nc * l) as u64;
    let m_path = G::STABILIZED && p.exact != 0;
    let tiles = scores::tiles(l);

    // Entry x of the head's (NC + 2) state dots, summed over the state tiles.
    let state_tiles = state::tiles(p.dqk, p.dhv);
    let state_dot = |x: u32| unsafe {
        let base = p.ptr.state_dots + ((head * (nc + 2) as u64 + x as u64) * state::MAX_TILES as u64) * 4;
        let v = global::ld_nc_f32_or_zero(lane < state_tiles, base + lane as u64 * 4);
        warp_sum(v)
    };
    // Row dot plane `plane` of step t, summed over the column tiles.
    let col_tiles = p.dqk.div_ceil(combine::TILE_OUT);
    let row_dot = |plane: u32, t: u32| {
        let base = (plane as u64 * p.bh as u64 * padded + head * padded + t as u64) * MAX_COL_TILES as u64;
        let mut v = 0f32;
        for ct in 0..col_tiles {
            v += unsafe { global::ld_nc_f32(p.ptr.row_dots + (base + ct as u64) * 4) };
        }
        v
    };
    let out = |ptr: u64, t: u32| ptr + (head * s as u64 + t as u64) * 4;
    let n_seg = s.div_ceil(32);

    // Walk 1: Σ_{j<τ} Kinter_j + Σ_{s<τ} (Cs_s − R_s), an exclusive prefix sum per chunk.
    let mut carry = 0f32;
    for seg in 0..n_seg {
        let t0 = seg * 32;
        if t0 % l == 0 {
            carry = 0.0;
        }
        let t = t0 + lane;
        let valid = t < s;
        let mut y = 0f32;
        if valid {
            let k = t / l;
            let own = (t % l) / scores::TILE;
            let len = l.min(s - k * l);
            let at = |plane: u32, tile: u32| unsafe {
                let x = (plane as u64 * p.bh as u64 * padded + head * padded + t as u64) * tiles as u64;
                global::ld_nc_f32(p.ptr.pair_sums + (x + tile as u64) * 4)
            };
            // Row sums over the column tiles up to the diagonal, column sums over the row tiles
            // from it to the chunk's last valid one.
            for jt in 0..=own {
                y -= at(0, jt);
            }
            for it in own..len.div_ceil(scores::TILE) {
                y += at(1, it);
            }
            y += row_dot(DOT_K_INTER, t);
        }
        let mut x = y;
        unroll!(5, b => {
            let o = unsafe { shfl::up_f32(x, 1 << b) };
            if lane >= 1 << b {
                x += o;
            }
        });
        if valid {
            unsafe { global::st_f32(out(p.ptr.df, t), carry + x - y) };
        }
        carry += unsafe { shfl::idx_f32(x, 31) };
    }

    // Walk 2, from the end: Σ_{i≥τ} Qinter_i per chunk, A_k, the max-state path.
    let (mut g_next, mut c_next) = (0f32, 1f32);
    let mut dot_init = 0f32;
    if m_path {
        dot_init = state_dot(nc);
        let dm_final = if p.ptr.dm_final != 0 {
            unsafe { global::ld_nc_f32(p.ptr.dm_final + head * 4) }
        } else {
            0.0
        };
        g_next = dm_final - state_dot(nc + 1);
    }
    let coef_plane = p.bh as u64 * padded * 4;
    let m_state = |k: u32| unsafe { global::ld_nc_f32(p.ptr.m_states + (head * nc as u64 + k as u64) * 4) };
    let mut carry = 0f32;
    let mut seg = n_seg;
    while seg > 0 {
        seg -= 1;
        let t0 = seg * 32;
        let k = t0 / l;
        let a_k = state_dot(k);
        let t = t0 + lane;
        let valid = t < s;
        let row = head * padded + t as u64;
        let (qin, kdk) = if valid {
            (row_dot(DOT_Q_INTER, t), row_dot(DOT_K, t))
        } else {
            (0.0, 0.0)
        };
        let mut x = qin;
        unroll!(5, b => {
            let o = unsafe { shfl::down_f32(x, 1 << b) };
            if lane + (1 << b) < 32 {
                x += o;
            }
        });
        let prefix = if valid {
            unsafe { global::ld_f32(out(p.ptr.df, t)) }
        } else {
            0.0
        };
        let mut dlambda = a_k + prefix + carry + x;
        carry += unsafe { shfl::idx_f32(x, 0) };
        if t0 % l == 0 {
            carry = 0.0; // the next segment is in the previous chunk
        }
        let mut diota = kdk;

        let (ftil, itil) = if valid {
            unsafe { (global::ld_nc_f32(out(p.ptr.f, t)), global::ld_nc_f32(out(p.ptr.i, t))) }
        } else {
            (0.0, 0.0)
        };
        if m_path {
            // c_t = [λ_t + m_{t−1} ≥ ι_t], with m_{t−1} the forward's row max of the previous
            // step (the chunk's entry state at a chunk start).
            let c = if valid {
                let m_prev = if t % l == 0 {
                    m_state(k)
                } else {
                    let prev = row - 1;
                    let b = unsafe { global::ld_nc_f32(p.ptr.gate_b + prev * 4) };
                    let cm = unsafe { global::ld_nc_f32(p.ptr.gate_cm + prev * 4) };
                    b + m_state(k).max(cm)
                };
                if math::log_sigmoid(ftil) + m_prev >= itil { 1.0 } else { 0.0 }
            } else {
                1.0
            };
            let dm = if valid {
                unsafe { global::ld_nc_f32(p.ptr.row_coef + rows::DM as u64 * coef_plane + row * 4) }
            } else {
                0.0
            };
            // G_t = dm_t + a·G_{t+1} with a = c_{t+1}: compose the affine maps to the segment's
            // end, then apply them to the carried G.
            let c_after = unsafe { shfl::down_f32(c, 1) };
            let mut a = if lane == 31 { c_next } else { c_after };
            let mut d = dm;
            unroll!(5, b => {
                let a2 = unsafe { shfl::down_f32(a, 1 << b) };
                let d2 = unsafe { shfl::down_f32(d, 1 << b) };
                if lane + (1 << b) < 32 {
                    d += a * d2;
                    a *= a2;
                }
            });
            let g = d + a * g_next;
            dlambda += c * g;
            diota += (1.0 - c) * g;
            g_next = unsafe { shfl::idx_f32(g, 0) };
            c_next = unsafe { shfl::idx_f32(c, 0) };
            if t == 0 && p.ptr.dm0 != 0 {
                unsafe { global::st_f32(p.ptr.dm0 + head * 4, dot_init + c * g) };
            }
        }
        if valid {
            let di = if G::STABILIZED { diota } else { diota * math::sigmoid(-itil) };
            unsafe {
                global::st_f32(out(p.ptr.di, t), di);
                global::st_f32(out(p.ptr.df, t), dlambda * math::sigmoid(-ftil));
            }
        }
    }
    if !m_path && lane == 0 && p.ptr.dm0 != 0 {
        unsafe { global::st_f32(p.ptr.dm0 + head * 4, 0.0) };
    }
}
