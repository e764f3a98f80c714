//! State-pool slots (forward and step): which head of the state tensors a head of the batch
//! reads and writes.
//!
//! Without slots, head bh = b·NH + h uses state head bh of c0, n0, m0 and c_final, n_final,
//! m_final. With a slot array (B u32, `FwdPointers::slots`) those six tensors are one pool
//! (num_slots, NH, …) and head bh uses state head slots[b]·NH + h. The host has checked that
//! every slot is in range and that no two batch rows share one, so distinct heads of one launch
//! touch distinct state heads.
//!
//! Why reading and writing one pool in one launch is race-free (every kernel's part):
//! - C̃: chunk_state (recurrent_f32) threads load their own elements of C̃0 at the start and
//!   store the same elements of C̃_final at the end; no other thread touches them.
//! - ñ, m: every block of a head needs ñ0 and m0, but only some blocks write ñ_final, m_final,
//!   possibly before another block of the head has started. So the state kernels never read
//!   n0, m0: chunk_gates (the launch before, in stream order) copies them into the chunk
//!   states at chunk 0, and the state kernels read them there and do not rewrite chunk 0's ñ, m.
//!
//! The step (`StepParams::ptr.slots`, [`step_state_head`]) reads and writes C̃, ñ, m of state
//! head slots[b]·NH + h in place, and counts its tiles in `tiles_done` at the same state head:
//! see `step.rs`.
use crate::arch::global;
use tfla_params::fwd::FwdParams;
use tfla_params::step::StepParams;

/// The state head of sequence `n` of head `bh` (an index into the (·, DQK, DHV), (·, DQK) and
/// (·,) state tensors). A packed variable-length batch (`super::seqs`) has B = 1 and its
/// sequence n in the place of batch row n; otherwise n = 0.
///
/// # Safety
/// `p.ptr.slots` is 0 or holds one u32 slot per batch row (per sequence) checked by the host;
/// `bh < p.bh`, `n < p.seqs`.
#[inline(always)]
pub unsafe fn state_head(p: &FwdParams, bh: u32, n: u32) -> u64 {
    unsafe { slot_head(p.ptr.slots, p.nh, bh + n * p.nh) }
}

/// The state head of head `bh` in the step (an index into C̃, ñ, m and `tiles_done`).
///
/// # Safety
/// `p.ptr.slots` is 0 or holds B = BH / NH u32 slots checked by the host; `bh < p.bh`.
#[inline(always)]
pub unsafe fn step_state_head(p: &StepParams, bh: u32) -> u64 {
    unsafe { slot_head(p.ptr.slots, p.nh, bh) }
}

/// bh without slots (`slots` = 0), else slots[bh / nh]·nh + bh % nh.
///
/// # Safety
/// `slots` is 0 or holds at least bh / nh + 1 readable, read-only u32.
#[inline(always)]
unsafe fn slot_head(slots: u64, nh: u32, bh: u32) -> u64 {
    if slots == 0 {
        return bh as u64;
    }
    // (max(1): lets the compiler drop its division-by-zero check; the host passes NH ≥ 1.)
    let nh = nh.max(1);
    let slot = unsafe { global::ld_nc_b32_or_zero(true, slots + (bh / nh) as u64 * 4) };
    slot as u64 * nh as u64 + (bh % nh) as u64
}
