//! Backward, the path through the max state (mLSTMexp, Exact mode): one block per head, added
//! onto the gate gradients `bwd_gates` wrote.
//!
//! m_t = max(a_t, ι_t), a_t = λ_t + m_{t−1}, c_t = [a_t ≥ ι_t]. Each m_t has a direct gradient
//! dm_t (through eps of the denominator, from the rows kernel); m_S also dm_S − ⟨dC'_S, C'_S⟩
//! (the final state is stabilized by it). The total G_t = dm_t + c_{t+1} G_{t+1} goes to λ_t
//! where c_t holds and to ι_t otherwise, and through c_0 to m_0, whose gradient also has
//! ⟨dC'_0, C'_0⟩ (C̃_0 is stabilized by m_0).
//!
//! G is a reverse scan of affine maps x ↦ dm_t + c_{t+1}·x: every thread composes the maps of
//! its contiguous run of steps, the runs' maps are composed across the block (a warp shuffle
//! scan, then one over the warps), and every thread walks its run again with its carry.
//!
//! In a packed variable-length batch (`super::seqs`) each block scans one sequence (grid y):
//! its steps, seeded by its final-state gradients, ending in its dm0.
use super::seqs::chunk_range;
use crate::arch::{global, math, shared, shfl, thread};
use tfla_params::bwd::{BwdParams, max_path::*, rows, state, state_tiles};

/// # Safety
/// Launched with `grid(p)`, THREADS threads and `smem_bytes()` bytes of dynamic shared memory
/// after `bwd_gates`, for mLSTMexp in Exact mode, on parameters validated by the host.
#[inline(always)]
pub unsafe fn bwd_max_path(p: &BwdParams) {
    let tid = thread::thread_idx();
    let (lane, warp) = (tid % 32, tid / 32);
    let (bh, seq, _) = thread::block_idx();
    let (l, s, nc) = (p.chunk, p.s, p.num_chunks);
    let head = bh as u64;
    // This block's steps [t_lo, t_hi) and its state head (B = 1 when packed).
    let (k_lo, k_hi) = unsafe { chunk_range(p.ptr.seq_chunks, nc, seq) };
    let (t_lo, t_hi) = (k_lo * l, (k_hi * l).min(s));
    let sh = seq as u64 * p.bh as u64 + head;
    let padded = (nc * l) as u64;
    let (sa, sd) = (shared::base(), shared::base() + 4 * WARPS);

    let m_state =
        |k: u32| unsafe { global::ld_nc_f32(p.ptr.m_states + (head * nc as u64 + k as u64) * 4) };
    let at = |ptr: u64, t: u32| ptr + (head * s as u64 + t as u64) * 4;
    // c_t = [λ_t + m_{t−1} ≥ ι_t], m_{t−1} the forward's row max of the previous step (the
    // chunk's entry state at a chunk start); c_S = 1 connects the last step to the seed.
    let c = |t: u32| -> f32 {
        if t >= t_hi {
            return 1.0;
        }
        let k = t / l;
        let m_prev = if t.is_multiple_of(l) {
            m_state(k)
        } else {
            let prev = head * padded + (t - 1) as u64;
            let b = unsafe { global::ld_nc_f32(p.ptr.gate_b + prev * 4) };
            let cm = unsafe { global::ld_nc_f32(p.ptr.gate_cm + prev * 4) };
            b + m_state(k).max(cm)
        };
        let (f, i) = unsafe {
            (
                global::ld_nc_f32(at(p.ptr.f, t)),
                global::ld_nc_f32(at(p.ptr.i, t)),
            )
        };
        if math::log_sigmoid(f) + m_prev >= i {
            1.0
        } else {
            0.0
        }
    };
    let dm = |t: u32| unsafe {
        global::ld_nc_f32(
            p.ptr.row_coef
                + (rows::DM as u64 * p.bh as u64 * padded + head * padded + t as u64) * 4,
        )
    };
    let state_dot = |x: u32| -> f32 {
        let base = p.ptr.state_dots
            + (head * state::dots_per_head(nc, p.seqs) as u64 + x as u64)
                * state::MAX_TILES as u64
                * 4;
        let mut v = 0f32;
        for tile in 0..state_tiles(p.chunk, p.dqk, p.dhv, cfg!(target_feature = "sm_90a")) {
            v += unsafe { global::ld_nc_f32(base + tile as u64 * 4) };
        }
        v
    };

    // This thread's run, and its composed map G_start = d + a·G_end (G_end: G of the step
    // after the run).
    let run = (t_hi - t_lo).div_ceil(THREADS);
    let (start, end) = (
        t_lo + (tid * run).min(t_hi - t_lo),
        t_lo + ((tid + 1) * run).min(t_hi - t_lo),
    );
    let (mut a, mut d) = (1f32, 0f32);
    let mut t = end;
    while t > start {
        t -= 1;
        let ct = c(t + 1);
        (a, d) = (ct * a, dm(t) + ct * d);
    }
    // Compose the maps of the later threads: inclusive over lanes above, then over warps.
    unroll!(5, b => {
        let o = 1 << b;
        let a2 = unsafe { shfl::down_f32(a, o) };
        let d2 = unsafe { shfl::down_f32(d, o) };
        if lane + o < 32 {
            (a, d) = (a * a2, d + a * d2);
        }
    });
    if lane == 0 {
        unsafe {
            shared::st_f32(sa + 4 * warp, a);
            shared::st_f32(sd + 4 * warp, d);
        }
    }
    unsafe { thread::sync_threads() };
    // G after the block: the seed. Then the later warps' maps, then the later lanes' (the
    // inclusive value of lane + 1), give G at the end of this thread's run.
    let mut g_end = if p.ptr.dm_final != 0 {
        unsafe { global::ld_nc_f32(p.ptr.dm_final + sh * 4) }
    } else {
        0.0
    };
    g_end -= state_dot(state::final_dot(nc, seq));
    let mut w = WARPS;
    while w > warp + 1 {
        w -= 1;
        g_end = unsafe { shared::ld_f32(sd + 4 * w) + shared::ld_f32(sa + 4 * w) * g_end };
    }
    let (a_next, d_next) = unsafe { (shfl::down_f32(a, 1), shfl::down_f32(d, 1)) };
    if lane < 31 {
        g_end = d_next + a_next * g_end;
    }

    // Walk the run again: G_t, then its share of dλ_t (in df̃ = dλ·σ(−f̃)) or dι_t.
    let mut g = g_end;
    let mut t = end;
    while t > start {
        t -= 1;
        g = dm(t) + c(t + 1) * g;
        let ct = c(t);
        let f = unsafe { global::ld_nc_f32(at(p.ptr.f, t)) };
        unsafe {
            let (pdf, pdi) = (at(p.ptr.df, t), at(p.ptr.di, t));
            global::st_f32(pdf, global::ld_f32(pdf) + ct * g * math::sigmoid(-f));
            global::st_f32(pdi, global::ld_f32(pdi) + (1.0 - ct) * g);
        }
        if t == t_lo && p.ptr.dm0 != 0 {
            unsafe {
                global::st_f32(
                    p.ptr.dm0 + sh * 4,
                    state_dot(state::init_dot(nc, seq)) + ct * g,
                )
            };
        }
    }
}
