//! Backward, gate gradients: one warp per head walks the sequence from the end in 32-step
//! segments.
//!
//! With m held constant (`shared/MATH.md`): dι_t = k_t·dk_t and
//! dλ_t = Σ_{i≥t} (q_i·dq_i − k_i·dk_i) + ⟨dC'_S, C'_S⟩, a reverse cumulative sum (the row
//! dots come from the dq and dk kernels, the final-state term from the state kernel).
//!
//! mLSTMexp in Exact mode adds the path through the max state: m_t = max(a_t, ι_t),
//! a_t = λ_t + m_{t−1}, c_t = [a_t ≥ ι_t]. Each m_t has a direct gradient (through eps of the
//! denominator, from the rows kernel), m_S also dm_S − ⟨dC'_S, C'_S⟩ (the final state is
//! stabilized by it). The total G_t = dm_t + c_{t+1} G_{t+1} is a suffix scan of affine maps;
//! it goes to λ_t where c_t holds, to ι_t otherwise, and through c_0 to m_0, whose gradient
//! also has ⟨dC'_0, C'_0⟩ (C̃_0 is stabilized by m_0).
use super::gates::GateKind;
use crate::arch::{global, math, shfl, thread};
use tfla_params::bwd::combine::{self, MAX_COL_TILES};
use tfla_params::bwd::{BwdParams, gates::WARPS, rows, state};

/// # Safety
/// Launched with `grid(p)` and THREADS threads after the dq, dk and state kernels, on
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

    // ⟨dC'_S, C'_S⟩ and ⟨dC'_0, C'_0⟩, summed over the state tiles.
    let tiles = state::tiles(p.dqk, p.dhv);
    let mut dots = [0f32; 2];
    for (x, d) in dots.iter_mut().enumerate() {
        let base =
            p.ptr.state_dots + ((x as u64 * p.bh as u64 + head) * state::MAX_TILES as u64) * 4;
        let mut t = lane;
        while t < tiles {
            *d += unsafe { global::ld_nc_f32(base + t as u64 * 4) };
            t += 32;
        }
        for m in [16, 8, 4, 2, 1] {
            *d += unsafe { shfl::xor_f32(*d, m) };
        }
    }
    let dm_final = if m_path && p.ptr.dm_final != 0 {
        unsafe { global::ld_nc_f32(p.ptr.dm_final + head * 4) }
    } else {
        0.0
    };

    let col_tiles = p.dqk.div_ceil(combine::TILE_OUT);
    let dot_plane = p.bh as u64 * padded * MAX_COL_TILES as u64 * 4;
    let coef_plane = p.bh as u64 * padded * 4;
    let m_state =
        |k: u32| unsafe { global::ld_nc_f32(p.ptr.m_states + (head * nc as u64 + k as u64) * 4) };

    // Running values carried from the later segment: Σ of q·dq − k·dk after it (plus the
    // final-state term), and (m path) G and c of its first step.
    let mut carry = dots[0];
    let (mut g_next, mut c_next) = (dm_final - dots[0], 1f32);
    let mut t0 = ((s - 1) / 32) * 32;
    loop {
        let t = t0 + lane;
        let valid = t < s;
        let row = head * padded + t as u64;
        let (mut qdq, mut kdk) = (0f32, 0f32);
        if valid {
            for ct in 0..col_tiles {
                let at = (row * MAX_COL_TILES as u64 + ct as u64) * 4;
                qdq += unsafe { global::ld_nc_f32(p.ptr.row_dots + at) };
                kdk += unsafe { global::ld_nc_f32(p.ptr.row_dots + dot_plane + at) };
            }
        }
        // Inclusive suffix sum of q·dq − k·dk over the segment.
        let mut x = qdq - kdk;
        for d in [1, 2, 4, 8, 16] {
            let o = unsafe { shfl::down_f32(x, d) };
            if lane + d < 32 {
                x += o;
            }
        }
        let mut dlambda = x + carry;
        carry += unsafe { shfl::idx_f32(x, 0) };
        let mut diota = kdk;

        let (ftil, itil) = if valid {
            let at = (head * s as u64 + t as u64) * 4;
            unsafe {
                (
                    global::ld_nc_f32(p.ptr.f + at),
                    global::ld_nc_f32(p.ptr.i + at),
                )
            }
        } else {
            (0.0, 0.0)
        };
        if m_path {
            // c_t = [λ_t + m_{t−1} ≥ ι_t], with m_{t−1} the forward's row max of the previous
            // step (the chunk's entry state at a chunk start).
            let c = if valid {
                let k = t / l;
                let m_prev = if t % l == 0 {
                    m_state(k)
                } else {
                    let prev = row - 1;
                    let b = unsafe { global::ld_nc_f32(p.ptr.gate_b + prev * 4) };
                    let cm = unsafe { global::ld_nc_f32(p.ptr.gate_cm + prev * 4) };
                    b + m_state(k).max(cm)
                };
                if math::log_sigmoid(ftil) + m_prev >= itil {
                    1.0
                } else {
                    0.0
                }
            } else {
                1.0
            };
            let dm = if valid {
                unsafe {
                    global::ld_nc_f32(p.ptr.row_coef + rows::DM as u64 * coef_plane + row * 4)
                }
            } else {
                0.0
            };
            // G_t = dm_t + a·G_{t+1} with a = c_{t+1}: compose the affine maps to the segment's
            // end, then apply them to the carried G.
            let c_after = unsafe { shfl::down_f32(c, 1) };
            let mut a = if lane == 31 { c_next } else { c_after };
            let mut d = dm;
            for o in [1, 2, 4, 8, 16] {
                let a2 = unsafe { shfl::down_f32(a, o) };
                let d2 = unsafe { shfl::down_f32(d, o) };
                if lane + o < 32 {
                    d += a * d2;
                    a *= a2;
                }
            }
            let g = d + a * g_next;
            dlambda += c * g;
            diota += (1.0 - c) * g;
            g_next = unsafe { shfl::idx_f32(g, 0) };
            c_next = unsafe { shfl::idx_f32(c, 0) };
            if t == 0 && p.ptr.dm0 != 0 {
                unsafe { global::st_f32(p.ptr.dm0 + head * 4, dots[1] + c * g) };
            }
        }
        if valid {
            let at = (head * s as u64 + t as u64) * 4;
            let di = if G::STABILIZED {
                diota
            } else {
                diota * math::sigmoid(-itil)
            };
            unsafe {
                global::st_f32(p.ptr.di + at, di);
                global::st_f32(p.ptr.df + at, dlambda * math::sigmoid(-ftil));
            }
        }
        if t0 == 0 {
            break;
        }
        t0 -= 32;
    }
    if !m_path && lane == 0 && p.ptr.dm0 != 0 {
        unsafe { global::st_f32(p.ptr.dm0 + head * 4, 0.0) };
    }
}
