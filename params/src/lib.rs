//! The one owner of tfla's launch configuration, compiled into both the device crate (`kernels/`,
//! nvptx64) and the host crate: kernel parameter structs (`#[repr(C)]`, passed by value), tile
//! shapes, shared-memory sizes and grids. The host never repeats a kernel constant.
//!
//! Notation: B batch, NH heads, S sequence length, DQK query/key head dim, DHV value head dim,
//! L chunk size, NC = ceil(S / L) chunks, BH = B·NH.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod bwd;
pub mod fwd;
pub mod seqs;
pub mod step;

/// Threads in a warp.
pub const WARP: u32 = 32;

/// Granularity of the head dims: every head dim is a multiple of this (the `mma.sync` k-step).
pub const HEAD_DIM_MULTIPLE: u32 = 16;
/// Largest supported head dim (DQK and DHV), bounded by the chunk-output kernel's shared memory.
pub const MAX_HEAD_DIM: u32 = 512;
/// Chunk sizes the kernels support: multiples of the row tile, powers of two.
pub const CHUNK_SIZES: [u32; 5] = [64, 128, 256, 512, 1024];

/// Element type of q, k, v, h (gates and states are always f32).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    Bf16 = 0,
    F16 = 1,
}

/// Gate variant as the kernels see it (the host's `Variant` maps onto this).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Gates {
    /// mLSTMexp: exponential input gate, max-state stabilizer, normalizer.
    Exp = 0,
    /// mLSTMsig with the normalizer.
    Sig = 1,
    /// mLSTMsig without the normalizer (h = Cᵀq̂, n never formed).
    SigNoNorm = 2,
}

/// Registers per thread left to a kernel of `threads` threads per block when `blocks` blocks
/// share one SM (65,536 registers; allocated per thread in units of 8).
pub const fn register_budget(threads: u32, blocks: u32) -> u32 {
    65536 / (threads * blocks) / 8 * 8
}

/// `ceil(a / b)` for the grid arithmetic.
pub const fn div_ceil(a: u32, b: u32) -> u32 {
    a.div_ceil(b)
}

/// Round `a` up to a multiple of `b`.
pub const fn round_up(a: u32, b: u32) -> u32 {
    div_ceil(a, b) * b
}
