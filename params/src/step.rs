//! The recurrent step (generation): one token per head, the states (C̃, ñ, m) updated in place
//! and h returned, in one launch that reads and writes C̃ exactly once. The kernel takes
//! [`StepParams`] by value.
//!
//! Notation: BH heads, DQK × DHV state. Per head, with q̂ = q·scale, λ = logσ(f̃), ι the log
//! input gate (ĩ for mLSTMexp, logσ(ĩ) for mLSTMsig):
//!   m' = max(λ + m, ι) (mLSTMsig: m' = 0),
//!   C̃' = e^{λ + m − m'} C̃ + e^{ι − m'} k vᵀ, ñ' likewise with k,
//!   h = C̃'ᵀq̂ / (max(|ñ'ᵀq̂|, e^{−m'}) + eps) (mLSTMsig: floor 1; without normalizer h = C̃'ᵀq̂).
//!
//! One block owns a DQK × TILE_HV slab of one head's C̃; ñ'ᵀq̂ (DQK values) is computed by every
//! block of the head, and the block that arrives last writes ñ' and m' (see
//! [`StepPointers::tiles_done`]).

use crate::{Gates, Pointer, WARP, div_ceil};

/// Element type of q, k, v and h in the step kernel (the forward's [`crate::Dtype`] plus f32:
/// the step runs on the CUDA cores, so f32 inputs need no separate path).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InputDtype {
    Bf16 = 0,
    F16 = 1,
    F32 = 2,
}

/// Element type of the stored state C̃ (ñ and m are always f32; arithmetic is always f32).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StateDtype {
    F32 = 0,
    /// Half the bytes of C̃ per step, at the cost of one bf16 rounding of C̃ per step. ñ stays
    /// f32: ñ'ᵀq̂ can be a small difference of large terms and divides a whole row of h, so
    /// a rounded ñ would cost far more accuracy than its DQK values save in bytes.
    Bf16 = 1,
}

impl InputDtype {
    pub const ALL: [InputDtype; 3] = [InputDtype::Bf16, InputDtype::F16, InputDtype::F32];
}

impl StateDtype {
    pub const ALL: [StateDtype; 2] = [StateDtype::F32, StateDtype::Bf16];
}

/// Device addresses of every tensor the step kernel reads or writes; every tensor contiguous,
/// row-major, in the shape its comment gives. Part of [`StepParams`]; the host's raw-pointer
/// entry point takes it as it is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepPointers {
    /// (BH, DQK) in the input dtype.
    pub q: u64,
    /// (BH, DQK) in the input dtype.
    pub k: u64,
    /// (BH, DHV) in the input dtype.
    pub v: u64,
    /// Input-gate pre-activation ĩ: (BH,) f32.
    pub i: u64,
    /// Forget-gate pre-activation f̃: (BH,) f32.
    pub f: u64,
    /// C̃: (BH, DQK, DHV) in the state dtype, read and overwritten with C̃'. With `slots`, a
    /// state pool (num_slots·NH, DQK, DHV) instead; likewise ñ, m and `tiles_done`, all
    /// indexed by the *state head* (see `slots`).
    pub c: u64,
    /// ñ: (BH, DQK) f32, read and overwritten with ñ' (without the normalizer neither read
    /// nor written).
    pub n: u64,
    /// m: (BH,) f32, read and overwritten with m' (mLSTMsig: written 0, never read).
    pub m: u64,
    /// Output h: (BH, DHV) in the input dtype.
    pub h: u64,
    /// (BH,) u32 arrival counters, zero before a launch and left zero by it. Every column tile
    /// of a head needs the old ñ and m, so whichever tile wrote ñ', m' first would race with
    /// the tiles of the same head not yet started. Instead each tile, once its threads have
    /// read ñ and m, increments its head's counter (release/acquire at GPU scope); the tile
    /// that sees it reach the tile count is the last reader, writes ñ' and m', and resets the
    /// counter to zero. Indexed by the state head (with `slots`: (num_slots·NH,)); the tiles
    /// of one head of the launch share one counter, and no two heads share one.
    pub tiles_done: u64,
    /// State-pool slot of each batch row: (B,) u32, or 0 for none. Head bh = b·NH + h reads
    /// q, k, v, ĩ, f̃ and writes h at bh, and updates C̃, ñ, m and counts in `tiles_done` at
    /// *state head* `slots[b]·NH + h` (without slots: bh). The host checks that every slot is
    /// below the pool's slot count and that no two rows share one (two heads updating one
    /// state would race, and would share a counter).
    pub slots: u64,
}

/// The step's pointers for inputs of `x` bytes per element: all required but the slots.
/// Alignments are the kernel's vector widths: pairs of q, k and ñ, quads of v and h, 16 bytes
/// of C̃.
pub const fn pointers(p: &StepPointers, x: u64) -> [Pointer; 11] {
    use Pointer as P;
    [
        P::required("q", p.q, 2 * x),
        P::required("k", p.k, 2 * x),
        P::required("v", p.v, 4 * x),
        P::required("i", p.i, 4),
        P::required("f", p.f, 4),
        P::required("c", p.c, 16),
        P::required("n", p.n, 8),
        P::required("m", p.m, 4),
        P::required("h", p.h, 4 * x),
        P::required("tiles_done", p.tiles_done, 4),
        P::optional("slots", p.slots, 4),
    ]
}

/// Parameters of the step kernel, passed by value. Built only from validated host arguments.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepParams {
    pub ptr: StepPointers,
    pub bh: u32,
    /// NH: heads per batch row (maps a head to its batch row's slot).
    pub nh: u32,
    pub dqk: u32,
    pub dhv: u32,
    /// q̂ = q·scale.
    pub scale: f32,
    pub eps: f32,
}

pub const WARPS: u32 = 8;
pub const THREADS: u32 = WARPS * WARP;
/// State columns (DHV) per block: B·NH = 64 heads at DHV = 512 make 512 blocks, one wave at
/// four resident blocks per SM (528 on 132 SMs; see [`MAX_REGISTERS`]).
pub const TILE_HV: u32 = 64;
/// Columns per thread: two groups of four (16 bytes of f32 state each, or together 16 bytes
/// of bf16 state), so every C̃ access is a 16-byte vector access.
pub const COLS: u32 = 8;
/// Threads across the columns of the tile.
pub const COL_THREADS: u32 = TILE_HV / COLS;
/// Threads down the rows: thread (g, c) = (tid / COL_THREADS, tid % COL_THREADS) owns rows
/// g + j·ROW_GROUPS.
pub const ROW_GROUPS: u32 = THREADS / COL_THREADS;
/// Rows a thread loads before it uses any of them, per state dtype: 2 rows of f32 (four
/// 16-byte vectors), 4 rows of bf16 (four 16-byte vectors). Either way 64 bytes of C̃ per
/// thread in flight and 16 registers of loaded state, which keeps every entry within
/// [`MAX_REGISTERS`]. A pass of the block covers rows(state) · ROW_GROUPS rows: 64 (f32) or
/// 128 (bf16); DQK = 256 takes four or two passes.
pub const fn rows(state: StateDtype) -> u32 {
    match state {
        StateDtype::F32 => 2,
        StateDtype::Bf16 => 4,
    }
}
/// The largest [`rows`] (the kernel's row loop is unrolled this far).
pub const MAX_ROWS: u32 = 4;
/// Registers per thread at which four blocks are resident per SM (65536 / (4 · THREADS)):
/// the step entries must not need more (`cargo xtask build-ptx` reports them), or B·NH = 64
/// at DHV = 512 no longer fits one wave.
pub const MAX_REGISTERS: u32 = 64;

/// Partial column sums (WARPS × TILE_HV f32), k and q̂ (2 × DQK f32), the reduction scratch
/// (WARPS f32) and the arrival flag (one u32, padded to 16 bytes).
pub const fn smem_bytes(dqk: u32) -> u32 {
    (WARPS * TILE_HV + 2 * dqk + WARPS) * 4 + 16
}

/// (DHV tiles, BH, 1).
pub const fn grid(p: &StepParams) -> (u32, u32, u32) {
    (div_ceil(p.dhv, TILE_HV), p.bh, 1)
}

/// Entry point of the step kernel for (gates, input dtype, C̃ dtype): one entry per triple.
/// The names are [`crate::entries`]' table, from the list the device crate instantiates.
pub const fn entry_name(gates: Gates, dtype: InputDtype, state: StateDtype) -> &'static str {
    crate::entries::names::step[gates as usize][state as usize][dtype as usize]
}

/// Bytes per element of C̃.
pub const fn state_bytes(state: StateDtype) -> u32 {
    match state {
        StateDtype::F32 => 4,
        StateDtype::Bf16 => 2,
    }
}

/// Every step entry point.
pub fn entry_names() -> impl Iterator<Item = &'static str> {
    [Gates::Exp, Gates::Sig, Gates::SigNoNorm]
        .into_iter()
        .flat_map(|g| {
            InputDtype::ALL
                .into_iter()
                .flat_map(move |d| StateDtype::ALL.map(move |s| entry_name(g, d, s)))
        })
}

// SAFETY: #[repr(C)], every field a u64.
unsafe impl crate::PointerStruct for StepPointers {
    fn each(p: &Self, f: &mut dyn FnMut(Pointer)) {
        pointers(p, 2).into_iter().for_each(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HEAD_DIM_MULTIPLE, MAX_HEAD_DIM};

    #[test]
    fn thread_layout_covers_the_tile() {
        assert_eq!(COL_THREADS * ROW_GROUPS, THREADS);
        // Lanes of one warp that share a column group are 8 apart (two shuffle steps).
        assert_eq!(WARP / COL_THREADS, 4);
        // The per-thread row loop is unrolled by `unroll!(4, …)`, up to the state's row count.
        assert_eq!(MAX_ROWS, 4);
        for state in StateDtype::ALL {
            assert!(rows(state) <= MAX_ROWS);
            // Four 16-byte vectors of C̃ per thread per pass, in either dtype.
            let vectors = rows(state) * COLS * state_bytes(state) / 16;
            assert_eq!(vectors, 4, "{state:?}");
        }
        // Four blocks per SM by registers.
        assert_eq!(65536 / (THREADS * MAX_REGISTERS), 4);
        // A DHV tile is whole 16-column groups except the ragged last one, so a thread's
        // 8 columns (4-aligned quads) are each wholly inside or outside DHV.
        assert_eq!(TILE_HV % HEAD_DIM_MULTIPLE, 0);
        // Each thread takes two elements of q, k, ñ: THREADS · 2 covers the largest DQK.
        const { assert!(2 * THREADS >= MAX_HEAD_DIM) };
    }

    #[test]
    fn fits_in_the_default_shared_memory() {
        // 48 KiB needs no opt-in on any device.
        assert!(smem_bytes(MAX_HEAD_DIM) <= 48 * 1024);
        // Partial sums first, 16-byte aligned for vector access; k and q̂ after them.
        assert_eq!((WARPS * TILE_HV * 4) % 16, 0);
    }

    #[test]
    fn grid_covers_ragged_dhv() {
        let p = |dhv| StepParams {
            bh: 6,
            dqk: 64,
            dhv,
            ..Default::default()
        };
        assert_eq!(grid(&p(512)), (8, 6, 1));
        assert_eq!(grid(&p(80)), (2, 6, 1));
        assert_eq!(grid(&p(16)), (1, 6, 1));
    }

    #[test]
    fn entry_names_are_distinct() {
        let mut names: std::vec::Vec<_> = entry_names().collect();
        assert_eq!(names.len(), 18);
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 18);
        assert!(names.iter().all(|n| n.starts_with("mlstm_step_")));
    }
}
