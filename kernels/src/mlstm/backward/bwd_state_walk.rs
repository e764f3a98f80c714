//! What the two state-gradient walks share (`bwd_state` on `mma.sync`, `bwd_state_wg` on
//! `wgmma`; notation in `bwd_state`): the dC̃ store, the ñ column's seed, per-chunk store and
//! initial-state part, the chunk's gate scalars, decay γ_k and weight scales, and the
//! weighting of a Q̂ᵀ fragment. What
//! differs between them is the accumulator layout of dC̃, which stays in each kernel.
//!
//! The ñ helpers work on the rows a thread holds (`row(half)`: the state row of its
//! accumulator elements 2·half, half = 0, 1), with dñ in elements 0 and 2 of `nacc`.
use super::block::{self, Max};
use super::gates::GateKind;
use super::stage;
use crate::arch::convert::Elem;
use crate::arch::{global, math, shared, thread};
use crate::tile::SmemTile;
use tfla_params::bwd::{BwdParams, state};

/// Stores dC̃_{k+1} (`hk` = head · chunks + k) of a block's (tile_qk, TILE_HV) tile at (d0, v0)
/// through the staging tile (`stage::store_rows`: whole sectors): each thread writes its
/// accumulator pairs, `pair(nb, half)` packed to the input dtype, at rows r0, r0 + 8 and
/// columns c0 + 8·nb of the tile, for nb < NB.
///
/// # Safety
/// Called by every thread of the block; `staging` holds the tile.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn store_dc<const NB: usize, const THREADS: u32, const VECS: u32>(
    p: &BwdParams,
    staging: SmemTile,
    hk: u64,
    (d0, v0): (u32, u32),
    (r0, c0): (u32, u32),
    tile_qk: u32,
    pair: impl Fn(usize, usize) -> u32,
) {
    unroll!(32, nb => {
        if nb < NB {
            unroll!(2, half => {
                let at = staging.offset(r0 + half as u32 * 8, c0 + nb as u32 * 8);
                unsafe { shared::st_u32(at, pair(nb, half)) };
            });
        }
    });
    unsafe {
        thread::sync_threads();
        let dc = p.ptr.dc_states + hk * (p.dqk as u64) * (p.dhv as u64) * 2;
        stage::store_rows::<THREADS, VECS>(staging, dc, (d0, p.dqk), (v0, p.dhv), tile_qk);
    }
}

/// Chunk k's gate scalars for γ_k (`decay`): g, and (stabilized) m_k and the chunk's last
/// cumulative gate. Loads only: the kernels issue them with the chunk's other reads.
///
/// # Safety
/// `head < p.bh`, `k < p.num_chunks`, the forward's gates and max states are in place.
#[inline(always)]
pub unsafe fn gate_scalars<G: GateKind>(p: &BwdParams, head: u64, k: u32) -> (f32, f32, f32) {
    let (l, nc, s) = (p.chunk, p.num_chunks, p.s);
    let hk = head * nc as u64 + k as u64;
    let g = unsafe { global::ld_nc_f32(p.ptr.gate_g + hk * 4) };
    let (m_k, cm_last) = if G::STABILIZED {
        let last = head * (nc * l) as u64 + (k * l + l.min(s - k * l) - 1) as u64;
        unsafe {
            (
                global::ld_nc_f32(p.ptr.m_states + hk * 4),
                global::ld_nc_f32(p.ptr.gate_cm + last * 4),
            )
        }
    } else {
        (0.0, 0.0)
    };
    (g, m_k, cm_last)
}

/// The ñ column's seed from the final-state gradient dñ_S; adds this thread's part of
/// ⟨dñ_S, ñ_S⟩ to `dot` (lanes t = 0 of each quad only, as the rows repeat across the quad).
///
/// # Safety
/// `p.ptr.dn_final` and `p.ptr.n_final` hold the state head at `vec` (its first row).
#[inline(always)]
pub unsafe fn seed_n(
    p: &BwdParams,
    row: impl Fn(usize) -> u32,
    vec: u64,
    lane: u32,
    nacc: &mut [f32; 4],
    dot: &mut f32,
) {
    for half in 0..2 {
        let r = row(half);
        let at = (vec + r as u64) * 4;
        let x = unsafe { global::ld_nc_f32_or_zero(r < p.dqk, p.ptr.dn_final + at) };
        let n = unsafe { global::ld_nc_f32_or_zero(r < p.dqk, p.ptr.n_final + at) };
        nacc[2 * half] = x;
        nacc[2 * half + 1] = x;
        if lane.is_multiple_of(4) {
            *dot += x * n;
        }
    }
}

/// Stores dñ_{k+1} of this thread's rows (call from lanes t = 0; `hk` = head · chunks + k).
///
/// # Safety
/// `hk` indexes `p.ptr.dn_states`.
#[inline(always)]
pub unsafe fn store_dn(p: &BwdParams, row: impl Fn(usize) -> u32, hk: u64, nacc: &[f32; 4]) {
    for half in 0..2 {
        let r = row(half);
        let ptr = p.ptr.dn_states + (hk * p.dqk as u64 + r as u64) * 4;
        unsafe { global::st_b32_if(r < p.dqk, ptr, nacc[2 * half].to_bits()) };
    }
}

/// γ_k from chunk k's gate scalars g, m_k and the last cumulative gate of the chunk (m_{k+1}
/// recomputed as the forward did).
#[inline(always)]
pub fn decay<G: GateKind>(g: f32, m_k: f32, cm_last: f32) -> f32 {
    if G::STABILIZED {
        math::exp(g + m_k - (g + m_k).max(g + cm_last))
    } else {
        math::exp(g)
    }
}

/// This thread's part of the largest row weights of a chunk's steps [first, first + len):
/// (max α ρ, max |α δ|). The chunk's products run on weights divided by their largest value
/// (restored after): α_i ρ_i can all be tiny (a forget gate near 0 at the chunk's start), and
/// q̂·α ρ rounded to f16 would then lose its precision in the subnormal range.
///
/// # Safety
/// `g_wq`, `g_wn` hold the head's weights for those steps.
#[inline(always)]
pub unsafe fn weight_max<const THREADS: u32>(
    (g_wq, g_wn): (u64, u64),
    (first, len): (u32, u32),
    tid: u32,
) -> (f32, f32) {
    let (mut wc, mut wn) = (0f32, 0f32);
    let mut j = tid;
    while j < len {
        let at = (first + j) as u64 * 4;
        wc = wc.max(unsafe { global::ld_nc_f32(g_wq + at) });
        wn = wn.max(unsafe { global::ld_nc_f32(g_wn + at) }.abs());
        j += THREADS;
    }
    (wc, wn)
}

/// The scales of a chunk's products from the threads' parts of its largest row weights
/// (`weight_max`) and its decay γ_k: `state::product_scale` (which says why there is a floor).
///
/// # Safety
/// Called by every thread of the block; `scratch` holds one f32 per warp.
#[inline(always)]
pub unsafe fn weight_scales<const THREADS: u32>(
    (wc, wn): (f32, f32),
    decay: f32,
    scratch: u32,
) -> (f32, f32) {
    let wc = unsafe { block::reduce::<Max, THREADS>(wc, scratch) };
    let wn = unsafe { block::reduce::<Max, THREADS>(wn, scratch) };
    (
        state::product_scale(wc, decay),
        state::product_scale(wn, decay),
    )
}

/// A Q̂ᵀ A fragment (`ldmatrix.trans`, steps jj, jj + 1, jj + 8, jj + 9 of the sub-tile) with
/// each step's column scaled by `scale` times its weight in shared memory at `w` (f32 per
/// step). Steps past a ragged end have zero Q rows and weights.
///
/// # Safety
/// `w` points at the sub-tile's weights in shared memory.
#[inline(always)]
pub unsafe fn weighted<E: Elem>(q: [u32; 4], w: u32, jj: u32, scale: f32) -> [u32; 4] {
    let wt = [jj, jj + 1, jj + 8, jj + 9].map(|j| scale * unsafe { shared::ld_f32(w + 4 * j) });
    let mut a = [0u32; 4];
    unroll!(4, r => {
        let (lo, hi) = E::unpack(q[r]);
        let wi = (r / 2) * 2;
        a[r] = E::pack(lo * wt[wi], hi * wt[wi + 1]);
    });
    a
}

/// The ñ part of the initial-state gradient: stores dñ_0 of this thread's rows (where asked)
/// and adds its part of ⟨dñ_0, ñ_0⟩ to `dot` (call from lanes t = 0 of the first DHV tile).
///
/// # Safety
/// `p.ptr.dn0`, `p.ptr.n0` (where set) hold the state head at `vec`.
#[inline(always)]
pub unsafe fn initial_n(
    p: &BwdParams,
    row: impl Fn(usize) -> u32,
    vec: u64,
    nacc: &[f32; 4],
    dot: &mut f32,
) {
    for half in 0..2 {
        let r = row(half);
        let x = nacc[2 * half];
        if p.ptr.dn0 != 0 {
            unsafe { global::st_b32_if(r < p.dqk, p.ptr.dn0 + (vec + r as u64) * 4, x.to_bits()) };
        }
        if p.ptr.n0 != 0 {
            *dot += x * unsafe {
                global::ld_nc_f32_or_zero(r < p.dqk, p.ptr.n0 + (vec + r as u64) * 4)
            };
        }
    }
}
