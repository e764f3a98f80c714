//! Chunk states (forward, inter-chunk) in the wide shape (`tfla_params::fwd::state_wide`): the
//! engine of `chunk_state`'s walk (see its docs for the notation and the rules) for a 128 × 256
//! state tile held by 8 warps, each a 64 × 64 sub-tile (4 m-tiles × 8
//! n-blocks) in registers across the whole walk. Per 16 steps a warp loads 4 weighted A
//! fragments of K̃ᵀ and 4 pairs of V fragments and issues 32 `mma`s: a B fragment serves 4
//! m-tiles, and every staged sub-tile serves the whole 128 × 256 tile.
//!
//! ñ rides along as in `chunk_state` (an n-block of ones times K̃ in a 16-bit head and tail),
//! in the blocks of the first DHV tile, spread over all 8 warps: warp w sums the 16 rows
//! 16w.. of the tile (one of its own m-tiles, wm = w / 4), so each warp adds one A fragment
//! and 2 `mma`s per 16 steps and no warp waits for another at the barrier. (Only the first
//! warp column carrying ñ for its 64 rows, as the narrow kernel's layout would suggest, costs
//! 16 head-and-tail registers per m-tile beside the 128-register tile, past what the driver's
//! compiler holds without spilling.)
use super::chunk_state::{StateEngine, SubTile, chunk_states};
use super::gates::GateKind;
use super::stage;
use super::state_walk::{self, StateSmem};
use crate::arch::convert::Elem;
use crate::arch::thread;
use crate::tile::{RegTile, SmemTile};
use tfla_params::fwd::{FwdParams, state_wide::*};

const MT: usize = (WARP_QK / 16) as usize;
const NT: usize = (WARP_HV / 8) as usize;
const _: () = assert!(
    MT == 4 && NT == 8 && SUB_L == 64 && STAGES == 3,
    "the unroll! counts below assume 4 m-tiles, 8 n-blocks, 64-step sub-tiles, 3 stages"
);

/// 8 warps as WARPS_M × WARPS_N, each a 64 × 64 `RegTile<4, 8>`, two items ahead.
pub struct Wide;

impl<E: Elem> StateEngine<E, MT, NT> for Wide {
    const TILE: (u32, u32) = (TILE_QK, TILE_HV);
    const SUB_L: u32 = SUB_L;
    const AHEAD: u32 = 2;
    const STAGES: u32 = STAGES;
    type V = SmemTile;

    #[inline(always)]
    fn warp_origin(warp: u32) -> (u32, u32) {
        ((warp / WARPS_N) * WARP_QK, (warp % WARPS_N) * WARP_HV)
    }
    #[inline(always)]
    fn stage(st: u32) -> (SmemTile, SmemTile, u32) {
        let smem = StateSmem(TILES);
        (smem.k(st), smem.v(st), smem.u(st))
    }
    #[inline(always)]
    fn staging() -> SmemTile {
        StateSmem(TILES).staging()
    }

    #[inline(always)]
    unsafe fn stage_v(v: SmemTile, gv: u64, steps: (u32, u32), cols: (u32, u32)) {
        unsafe { stage::rows::<THREADS, { TILE_HV / 8 }>(v, gv, steps, cols, SUB_L) }
    }
    #[inline(always)]
    unsafe fn advance(next: Option<u32>, issue: impl Fn(u32)) {
        unsafe { stage::advance_by::<2>(next, issue) }
    }

    /// Per 16 steps a warp loads 4 weighted A fragments of K̃ᵀ (its m-tiles) and 4 pairs of V
    /// fragments and issues 32 `mma`s; ñ of its rows 16·warp.. (one of its own m-tiles) takes
    /// one more weighted A fragment, in a 16-bit head and tail, and 2 `mma`s.
    #[inline(always)]
    unsafe fn multiply(acc: &mut RegTile<MT, NT>, nacc: &mut [f32; 4], t: SubTile<SmemTile>) {
        let (sk, sv, su, lane, warp) = (t.k, t.v, t.u, t.lane, t.warp);
        let (log_w0, with_n) = (t.log_w0, t.with_n);
        let (wm, wn) = (warp / WARPS_N, warp % WARPS_N);
        let ones = [E::pack(1.0, 1.0); 2];
        // A rolled loop over the 16-step slices (through `opaque`, which the unroller cannot
        // see through): fully unrolled, the fragments of later slices are loaded early and
        // held beside the 128-register tile, and the kernel spills.
        for ks in 0..thread::opaque(SUB_L / 16) {
            // Weights of the steps in this thread's A elements (as in `chunk_state`).
            let w = unsafe { state_walk::key_weights(su, ks, lane, log_w0) };
            let mut a = [[0u32; 4]; MT];
            unroll!(4, mt => {
                let raw = unsafe { sk.a_trans(ks * 16, wm * WARP_QK + mt as u32 * 16, lane) };
                unroll!(4, r => {
                    let (lo, hi) = E::unpack(raw[r]);
                    let wi = (r / 2) * 2;
                    a[mt][r] = E::pack(lo * w[wi], hi * w[wi + 1]);
                });
            });
            if with_n {
                // The weighted K̃ of this warp's ñ rows, head and tail (as `chunk_state`).
                let raw = unsafe { sk.a_trans(ks * 16, warp * 16, lane) };
                let (hi, lo) = state_walk::weighted_split::<E>(raw, w);
                unsafe {
                    E::mma(nacc, hi, ones);
                    E::mma(nacc, lo, ones);
                }
            }
            unroll!(4, pair => {
                let b = unsafe { sv.b_kn(ks * 16, wn * WARP_HV + pair as u32 * 16, lane) };
                unroll!(4, mt => {
                    unsafe {
                        E::mma(&mut acc.0[mt][2 * pair], a[mt], b[0]);
                        E::mma(&mut acc.0[mt][2 * pair + 1], a[mt], b[1]);
                    }
                });
            });
        }
    }
}

/// # Safety
/// Launched with `TILES.grid(p)`, THREADS threads and `TILES.smem_bytes()` bytes of dynamic
/// shared memory, on parameters validated by the host (shapes, alignment, chunk size).
#[inline(always)]
pub unsafe fn chunk_state_wide<E: Elem, G: GateKind>(p: &FwdParams) {
    unsafe { chunk_states::<E, G, Wide, MT, NT, THREADS, { TILE_QK / 8 }, { TILE_HV / 8 }>(p) }
}
