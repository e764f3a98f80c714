//! The chunk walk both chunk-state shapes share (`chunk_state`, `chunk_state_wide`; notation
//! there): which pipeline items the walk stages, the chunk's gate scalars, where the state
//! before chunk k goes, and the max-state step. The shapes differ only in how their register
//! tiles multiply and store.
use super::gates::GateKind;
use crate::arch::{global, math};
use crate::tile::acc_pairs;
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

/// Stores ñ and m of the state before chunk k, beside its C̃ (`outputs`): ñ_0 and m_0 stay as
/// chunk_gates wrote them; without the normalizer the final ñ is 0. ñ is written by the lanes
/// t = 0 of the first DHV tile's blocks (`first_hv`), rows `rows` holding `nacc` elements 0 and
/// 2; m by one thread of the head (`m_writer`).
///
/// # Safety
/// `n_out`, `m_out` from `outputs` for chunk k.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn store_n_m<G: GateKind>(
    p: &FwdParams,
    (k, k_lo, k_hi): (u32, u32, u32),
    (n_out, m_out): (u64, u64),
    (rows, nacc): ([u32; 2], &[f32; 4]),
    m: f32,
    with_n: bool,
    (first_hv, lane): (bool, u32),
    m_writer: bool,
) {
    if k > k_lo && first_hv && lane % 4 == 0 && (with_n || k == k_hi) {
        unroll!(2, half => {
            let r = rows[half];
            let n = if G::NORMALIZED { nacc[2 * half] } else { 0.0 };
            unsafe { global::st_b32_if(r < p.dqk, n_out + r as u64 * 4, n.to_bits()) };
        });
    }
    if k > k_lo && m_writer {
        unsafe { global::st_f32(m_out, m) };
    }
}

/// The initial state into a warp's f32 accumulators: `NB` (≤ 16) n-blocks of 16 rows × 8
/// columns from element (r0, c0) (the kernel's `origin`) of a (dqk, dhv) f32 matrix at `base`;
/// zeros outside the matrix.
///
/// # Safety
/// `base` holds the (dqk, dhv) matrix, 8-byte aligned.
#[inline(always)]
pub unsafe fn load_state<const NB: usize>(
    acc: &mut [[f32; 4]; NB],
    base: u64,
    origin: (u32, u32),
    dims: (u32, u32),
) {
    acc_pairs::<NB>(origin, dims, |nb, e, inside, idx| {
        let x = unsafe { global::ld_v2_f32_or_zero(inside, base + idx * 4) };
        acc[nb][e] = x[0];
        acc[nb][e + 1] = x[1];
    });
}

/// The final state from a warp's f32 accumulators, laid out as [`load_state`] reads them;
/// nothing is written outside the matrix.
///
/// # Safety
/// `base` holds the (dqk, dhv) matrix, 8-byte aligned.
#[inline(always)]
pub unsafe fn store_state<const NB: usize>(
    acc: &[[f32; 4]; NB],
    base: u64,
    origin: (u32, u32),
    dims: (u32, u32),
) {
    acc_pairs::<NB>(origin, dims, |nb, e, inside, idx| {
        let v = [acc[nb][e], acc[nb][e + 1]];
        unsafe { global::st_v2_f32_if(inside, base + idx * 4, v) };
    });
}
