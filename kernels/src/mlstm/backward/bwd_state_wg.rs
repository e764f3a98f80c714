//! State gradients on `wgmma` (sm_90a builds; `tfla_params::bwd::state_wg`): the engine of
//! `bwd_state`'s walk (see its docs for the notation, outputs and partial dots), for the wide
//! 128 × 256 tile of dC̃ the forward's `chunk_state_wg` uses, held by two warpgroups as m64n256
//! accumulators (warp w: rows 16w .. 16w + 16 of the tile, all 256 columns).
//!
//! Per 16 steps each warp loads its A fragment of Q̂ᵀ (`ldmatrix.trans`) and weights it by the
//! steps' α ρ in registers, and the warpgroup multiplies it with the dH sub-tile straight from
//! shared memory (128-byte swizzle): one `wgmma` per 16 steps. The ñ column (weights α δ) rides
//! on `mma.sync`, as in `bwd_state`, once the sub-tile's products are done.
//!
//! Registers: the 128 accumulators leave ~125 for everything else, and the kernel takes all
//! 255, so it has none to spare (`SPARE_REGISTERS = false`): what stays outside the walk is not
//! kept across it (the final-state dot is stored at once, the thread's tile coordinates are
//! re-read where used, C'_k for the chunk's dot comes through the staging tile instead of
//! registers): one more live value and the driver's compiler spills. `gpu_kernels`
//! checks the driver's build for local memory.
use super::bwd_state::{GradEngine, GradSubTile, state_grads};
use super::bwd_state_walk as walk;
use super::gates::GateKind;
use super::stage;
use crate::arch::convert::Elem;
use crate::arch::wgmma::{self, Hold, Wgmma};
use crate::arch::{shared, thread};
use crate::tile::{RegTile, SmemTile, a_pos};
use tfla_params::bwd::{BwdParams, state_wg::*};
use tfla_params::fwd::SMEM_ROW_PAD;

/// n-blocks (8 columns) of a warp's accumulator; bytes between the 64-column panels of a dH
/// sub-tile (the LBO of its descriptor).
const NB: usize = (TILE_HV / 8) as usize;
const PANEL_DH: u32 = SUB_L * 128;
const _: () = assert!(
    NB == 32 && SUB_L == 64 && STAGES == 3 && WARPGROUPS == 2,
    "the unroll! counts below assume 32 n-blocks, 64-step sub-tiles, 3 stages, 2 warpgroups"
);

/// Two warpgroups of m64n256 accumulators (warp w: a `RegTile<1, 32>` of rows 16w .. 16w + 16),
/// two items ahead.
pub struct Wg;

/// Shared memory: STAGES × dH sub-tile (swizzled, 1024-byte aligned), STAGES × (Q sub-tile, the
/// sub-tile's α ρ and α δ), scratch, the staging tile of dC̃ (TILE_QK × TILE_HV).
#[inline(always)]
fn base() -> u32 {
    (shared::base() + ALIGN - 1) & !(ALIGN - 1)
}

impl<E: Elem + Wgmma> GradEngine<E, NB> for Wg {
    const TILE: (u32, u32) = (TILE_QK, TILE_HV);
    const SUB_L: u32 = SUB_L;
    const STAGES: u32 = STAGES;
    const AHEAD: u32 = 2;
    const SPARE_REGISTERS: bool = false;
    /// The dH sub-tile's shared address (128-byte swizzle, for `wgmma` descriptors).
    type Dh = u32;

    /// Through `thread::opaque`: the stage's addresses are its base plus constant offsets,
    /// instead of one address per weight and Q row precomputed and kept across the walk (LLVM's
    /// strength reduction of `it % STAGES`: 32 registers that made the driver's compiler spill).
    #[inline(always)]
    fn stage(st: u32) -> (SmemTile, u32, u32) {
        let st = thread::opaque(st);
        let q = SmemTile {
            base: base() + STAGES * dh_bytes() + st * q_bytes(),
            stride: (TILE_QK + SMEM_ROW_PAD) * 2,
        };
        let w = q.base + SUB_L * (TILE_QK + SMEM_ROW_PAD) * 2;
        (q, base() + st * dh_bytes(), w)
    }
    #[inline(always)]
    fn scratch() -> u32 {
        base() + STAGES * (dh_bytes() + q_bytes())
    }
    #[inline(always)]
    fn staging() -> SmemTile {
        SmemTile {
            base: <Self as GradEngine<E, NB>>::scratch() + WARPS * 4,
            stride: (TILE_HV + SMEM_ROW_PAD) * 2,
        }
    }
    /// From the thread index read where used (`thread::thread_idx_here`): beside the 128
    /// accumulators every register counts, and the driver's compiler spilled a kept warp offset.
    #[inline(always)]
    fn local() -> (u32, u32) {
        let t = thread::thread_idx_here();
        ((t / 32) * 16 + (t % 32) / 4, (t % 4) * 2)
    }

    #[inline(always)]
    unsafe fn stage_dh(dh: u32, gdh: u64, steps: (u32, u32), cols: (u32, u32)) {
        unsafe { stage::rows_sw128::<THREADS, { TILE_HV / 8 }>(dh, gdh, steps, cols, SUB_L) }
    }
    #[inline(always)]
    unsafe fn advance(next: Option<u32>, issue: impl Fn(u32)) {
        unsafe { stage::advance_by_for_wgmma::<2>(next, issue) }
    }

    /// Per 16 steps each warp weights its A fragment of Q̂ᵀ in registers and the warpgroup
    /// issues one m64n256k16 `wgmma` with dH from shared memory; the ñ column after them.
    #[inline(always)]
    unsafe fn multiply(acc: &mut RegTile<1, NB>, nacc: &mut [f32; 4], t: GradSubTile<u32>) {
        // The lane through `thread::opaque` for the same reason as the stage in `stage`: each
        // weight's address is then one base plus a constant, not a register of its own.
        let (sq, sdh, sw, lane, warp) = (t.q, t.dh, t.w, thread::opaque(t.lane), t.warp);
        // The weighted A fragments of the sub-tile's four 16-step slices, all before the
        // fence: a register written between two `wgmma`s makes ptxas wait for the first.
        let mut a = [[0u32; 4]; 4];
        unroll!(4, ks => {
            let ks = ks as u32;
            let jj = ks * 16 + a_pos(lane, 0).1;
            let q = unsafe { sq.a_trans(ks * 16, warp * 16, lane) };
            a[ks as usize] = unsafe { walk::weighted::<E>(q, sw, jj, t.scale_c) };
        });
        unsafe {
            wgmma::fence();
            unroll!(4, ks => {
                E::rs_n256_mn(acc.flat_mut(), a[ks], wgmma::mn_major(sdh, ks as u32, PANEL_DH));
            });
            wgmma::commit();
            wgmma::wait_all();
        }
        acc.flat_mut::<{ 4 * NB }>().hold();
        if t.with_n {
            // The ñ column (weights α δ) after the products, from a second `ldmatrix` of the Q
            // fragment: beside the 128 accumulators and the A fragments the registers do not
            // hold both weightings at once.
            let ones = [E::pack(1.0, 1.0); 2];
            unroll!(4, ks => {
                let ks = ks as u32;
                let jj = ks * 16 + a_pos(lane, 0).1;
                let q = unsafe { sq.a_trans(ks * 16, warp * 16, lane) };
                let an = unsafe { walk::weighted::<E>(q, sw + 4 * SUB_L, jj, t.scale_n) };
                unsafe { E::mma(nacc, an, ones) };
            });
        }
    }
}

/// # Safety
/// Launched with `grid(p)`, THREADS threads and `smem_bytes()` bytes of dynamic shared memory
/// after the rows kernel, on parameters validated by the host.
#[inline(always)]
pub unsafe fn bwd_state_wg<E: Elem + Wgmma, G: GateKind>(p: &BwdParams) {
    unsafe { state_grads::<E, G, Wg, NB, THREADS, { TILE_QK / 8 }, { TILE_HV / 8 }>(p) }
}
