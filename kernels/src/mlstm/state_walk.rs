//! The chunk walk both chunk-state shapes share (`chunk_state`, `chunk_state_wide`; notation
//! there): which pipeline items the walk stages, the chunk's gate scalars, where the state
//! before chunk k goes, and the max-state step. The shapes differ only in how their register
//! tiles multiply and store.
use super::gates::GateKind;
use crate::arch::{global, math};
use tfla_params::fwd::FwdParams;

/// Pipeline items [first, end) of chunks [k_lo, k_hi), `sub_l` steps each: chunk boundaries
/// are multiples of `sub_l`, so item `it` covers steps it·sub_l.. of chunk it·sub_l / L, and
/// the next chunk's first item loads during this chunk's last one.
#[inline(always)]
pub fn items(p: &FwdParams, (k_lo, k_hi): (u32, u32), sub_l: u32) -> (u32, u32) {
    let l = p.chunk;
    (
        k_lo * (l / sub_l),
        (k_hi * (l / sub_l)).min(p.s.div_ceil(sub_l)),
    )
}

/// Chunk k's gate scalars: g, and (stabilized) the max of u over the chunk.
///
/// # Safety
/// `head < p.bh`, `k < p.num_chunks`, chunk_gates has run.
#[inline(always)]
pub unsafe fn gate_scalars<G: GateKind>(p: &FwdParams, head: u64, k: u32) -> (f32, f32) {
    let (l, nc, s) = (p.chunk, p.num_chunks, p.s);
    let last = head * (nc * l) as u64 + (l.min(s - k * l) + k * l - 1) as u64;
    let g = unsafe { global::ld_nc_f32(p.ptr.gate_g + (head * nc as u64 + k as u64) * 4) };
    let umax = if G::STABILIZED {
        unsafe { global::ld_nc_f32(p.ptr.gate_cm + last * 4) }
    } else {
        0.0
    };
    (g, umax)
}

/// Where the state before chunk k goes, (C̃, ñ, m) base addresses: the chunk states (C̃_k in
/// the input dtype) for k < k_hi, the final states (C̃ f32) of state head `sh` for k = k_hi.
#[inline(always)]
pub fn outputs(p: &FwdParams, head: u64, sh: u64, k: u32, k_hi: u32) -> (u64, u64, u64) {
    let (dqk, dhv) = (p.dqk, p.dhv);
    if k < k_hi {
        let hk = head * p.num_chunks as u64 + k as u64;
        (
            p.ptr.c_states + hk * (dqk as u64) * (dhv as u64) * 2,
            p.ptr.n_states + hk * dqk as u64 * 4,
            p.ptr.m_states + hk * 4,
        )
    } else {
        (
            p.ptr.c_final + sh * (dqk as u64) * (dhv as u64) * 4,
            p.ptr.n_final + sh * dqk as u64 * 4,
            p.ptr.m_final + sh * 4,
        )
    }
}

/// One chunk's max-state step from m_k and the chunk's (g, max u): (m_{k+1}, the decay
/// e^{g + m_k − m_{k+1}} of the state, and log w0 = g − m_{k+1}: step j's weight is
/// e^{log w0 + u_j}). Without the stabilizer m ≡ 0.
#[inline(always)]
pub fn max_step<G: GateKind>((g, umax): (f32, f32), m: f32) -> (f32, f32, f32) {
    let m_next = if G::STABILIZED {
        (g + m).max(g + umax)
    } else {
        0.0
    };
    (m_next, math::exp(g + m - m_next), g - m_next)
}
