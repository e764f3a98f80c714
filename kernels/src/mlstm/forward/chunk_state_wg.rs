//! Chunk states (forward, inter-chunk) on `wgmma` (sm_90a builds; `tfla_params::fwd::state_wg`):
//! the engine of `chunk_state`'s walk (see its docs for the notation and the rules) for the
//! wide 128 × 256 state tile of `chunk_state_wide`, held by two warpgroups as
//! m64n256 accumulators (warp w: state rows 16w .. 16w + 16 of the tile, all 256 columns).
//!
//! Per 16 steps each warp loads its A fragment of K̃ᵀ (`ldmatrix.trans` of the staged K
//! sub-tile) and weights it by the steps' e^{log w0 + u_j} in registers, as the `mma.sync`
//! kernel does; the warpgroup then multiplies it with the V sub-tile straight from shared
//! memory (128-byte swizzle), one m64n256k16 `wgmma` per 16 steps. ñ rides along on the
//! same A fragment (head and tail times a column of ones, `mma.sync`), in the blocks of the
//! first DHV tile: warp w's ñ rows are its own 16 state rows.
use super::chunk_state::{StateEngine, SubTile, chunk_states};
use super::gates::GateKind;
use super::stage;
use super::state_walk;
use crate::arch::convert::Elem;
use crate::arch::shared;
use crate::arch::wgmma::{self, Hold, Wgmma};
use crate::tile::{RegTile, SmemTile, split2};
use tfla_params::fwd::{FwdParams, SMEM_ROW_PAD, state_wg::*};

/// n-blocks (8 columns) of a warp's accumulator; bytes between the 64-column panels of a V
/// sub-tile (the LBO of its descriptor).
const NB: usize = (TILE_HV / 8) as usize;
const PANEL_V: u32 = stage::sw128_panel(SUB_L);
const _: () = assert!(
    NB == 32 && SUB_L == 64 && STAGES == 3 && WARPGROUPS == 2,
    "the unroll! counts below assume 32 n-blocks, 64-step sub-tiles, 3 stages, 2 warpgroups"
);

/// Two warpgroups, each an m64n256 accumulator: warp w's `RegTile<1, 32>` is state rows 16w ..
/// 16w + 16 of the tile, all 256 columns. Two items ahead.
pub struct Wg;

/// Shared memory: STAGES × V sub-tile (swizzled, 1024-byte aligned), STAGES × (K sub-tile, u of
/// the sub-tile), the staging tile of C̃_k (TILE_QK × TILE_HV).
#[inline(always)]
fn base() -> u32 {
    (shared::base() + ALIGN - 1) & !(ALIGN - 1)
}

impl<E: Elem + Wgmma> StateEngine<E, 1, NB> for Wg {
    const TILE: (u32, u32) = (TILE_QK, TILE_HV);
    const SUB_L: u32 = SUB_L;
    const AHEAD: u32 = 2;
    const STAGES: u32 = STAGES;
    /// The V sub-tile's shared address (128-byte swizzle, for `wgmma` descriptors).
    type V = u32;

    #[inline(always)]
    fn warp_origin(warp: u32) -> (u32, u32) {
        (warp * 16, 0)
    }
    #[inline(always)]
    fn stage(st: u32) -> (SmemTile, u32, u32) {
        let k = SmemTile {
            base: base() + STAGES * v_bytes() + st * (k_bytes() + SUB_L * 4),
            stride: (TILE_QK + SMEM_ROW_PAD) * 2,
        };
        (k, base() + st * v_bytes(), k.base + k_bytes())
    }
    #[inline(always)]
    fn staging() -> SmemTile {
        SmemTile {
            base: base() + STAGES * (v_bytes() + k_bytes() + SUB_L * 4),
            stride: (TILE_HV + SMEM_ROW_PAD) * 2,
        }
    }

    #[inline(always)]
    unsafe fn stage_v(v: u32, gv: u64, steps: (u32, u32), cols: (u32, u32)) {
        unsafe { stage::rows_sw128::<THREADS, { TILE_HV / 8 }>(v, gv, steps, cols, SUB_L) }
    }
    #[inline(always)]
    unsafe fn advance(next: Option<u32>, issue: impl Fn(u32)) {
        unsafe { stage::advance_by_for_wgmma::<2>(next, issue) }
    }

    /// Per 16 steps each warp weights its A fragment of K̃ᵀ in registers; the warpgroup then
    /// issues one m64n256k16 `wgmma` with V from shared memory; ñ rides on the same A fragment.
    #[inline(always)]
    unsafe fn multiply(acc: &mut RegTile<1, NB>, nacc: &mut [f32; 4], t: SubTile<u32>) {
        let (sk, sv, su, lane, warp) = (t.k, t.v, t.u, t.lane, t.warp);
        let (log_w0, with_n) = (t.log_w0, t.with_n);
        let ones = [E::pack(1.0, 1.0); 2];
        // The weighted A fragments of the sub-tile's four 16-step slices, all before the
        // fence: a register written between two `wgmma`s makes ptxas wait for the first.
        let mut a = [[0u32; 4]; 4];
        unroll!(4, ks => {
            let ks = ks as u32;
            // Weights of the steps in this thread's A elements (as in `chunk_state`).
            let w = unsafe { state_walk::key_weights(su, ks, lane, log_w0) };
            let raw = unsafe { sk.a_trans(ks * 16, warp * 16, lane) };
            let (mut hi, mut lo) = ([0u32; 4], [0u32; 4]);
            unroll!(4, r => {
                let (x0, x1) = E::unpack(raw[r]);
                let wi = (r / 2) * 2;
                let (y0, y1) = (x0 * w[wi], x1 * w[wi + 1]);
                a[ks as usize][r] = E::pack(y0, y1);
                if with_n {
                    (hi[r], lo[r]) = split2::<E>([y0, y1]);
                }
            });
            if with_n {
                // ñ: the weighted K̃ of this warp's rows, head and tail (as `chunk_state`).
                unsafe {
                    E::mma(nacc, hi, ones);
                    E::mma(nacc, lo, ones);
                }
            }
        });
        let flat: &mut [f32; 4 * NB] = acc.flat_mut();
        unsafe {
            wgmma::fence();
            unroll!(4, ks => {
                E::rs_n256_mn(flat, a[ks], wgmma::mn_major(sv, ks as u32, PANEL_V));
            });
            wgmma::commit();
            // All done within the item. Leaving them in flight into the next item needs a
            // group per slice (the next item's A fragments reuse these registers, which an
            // in-flight `wgmma` may still read), and that measured no faster: the walk is
            // bound by its memory traffic, not by the tensor pipe's drain per item.
            wgmma::wait_all();
        }
        flat.hold();
    }
}

/// # Safety
/// Launched with `state_wide::TILES.grid(p)`, THREADS threads and `smem_bytes()` bytes of
/// dynamic shared memory, on parameters validated by the host (shapes, alignment, chunk size).
#[inline(always)]
pub unsafe fn chunk_state_wg<E: Elem + Wgmma, G: GateKind>(p: &FwdParams) {
    unsafe { chunk_states::<E, G, Wg, 1, NB, THREADS, { TILE_QK / 8 }, { TILE_HV / 8 }>(p) }
}
