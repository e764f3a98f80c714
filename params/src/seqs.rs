//! Packed variable-length batches (`cu_seqlens`, as FLA takes them): N sequences of different
//! lengths in one call, q, k, v, ĩ, f̃ packed as (T, NH, ·) with sequence n at steps
//! cu[n]..cu[n+1].
//!
//! The host repacks them per head, (1, NH, T', ·): the sequences one after another along the
//! step axis, each starting at a chunk boundary and padded to whole chunks with steps that
//! change nothing (q = k = v = 0, ĩ = [`PAD_I`], f̃ = [`PAD_F`]: λ = 0 and ι = −1e30, so C̃, ñ and
//! m pass through unchanged and the padded steps' gradients are zero). No chunk mixes two
//! sequences, so every chunk-local kernel runs as it is; the kernels that carry a state across
//! chunks (the forward's chunk_state and recurrent_f32, the backward's state walks and its
//! max-state path) take one block row per sequence, each walking its own chunk range
//! (`seq_chunks`) from its own initial state to its own final state, and chunk_gates seeds ñ_k,
//! m_k at each sequence's first chunk. The padding costs at most L − 1 steps per sequence.
use crate::div_ceil;

/// ĩ of a padding step: ι = −1e30 for both gate variants (e^ι = 0, and no max state moves).
pub const PAD_I: f32 = -1e30;
/// f̃ of a padding step: λ = logσ(1e30) = 0 exactly (the decay is 1).
pub const PAD_F: f32 = 1e30;

/// Parameters of the repacking kernel: rows of `words` u32 between the packed (T, NH, words)
/// layout and the padded per-head (NH, T', words) one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PackParams {
    /// Source and destination (packed → padded, or padded → packed with `unpack`).
    pub src: u64,
    pub dst: u64,
    /// (N + 1,) u32: the packed offsets cu_seqlens, and the chunk offsets of the padded layout.
    pub cu_seqlens: u64,
    pub seq_chunks: u64,
    pub seqs: u32,
    pub nh: u32,
    pub chunk: u32,
    /// T (packed steps) and T' (padded steps, a multiple of the chunk).
    pub total: u32,
    pub padded: u32,
    /// u32 words per row (D for f32, D / 2 for 16-bit elements, 1 for a gate).
    pub words: u32,
    /// The bits a padding step gets (packing only).
    pub pad: u32,
    /// 0: packed → padded (every padded step written); 1: padded → packed (every packed step).
    pub unpack: u32,
}

pub mod pack {
    use super::*;
    pub const THREADS: u32 = 256;
    /// Destination rows per block: one per warp.
    pub const ROWS: u32 = THREADS / crate::WARP;
    /// (destination steps of one head / ROWS, NH, 1).
    pub const fn grid(p: &PackParams) -> (u32, u32, u32) {
        let steps = if p.unpack != 0 { p.total } else { p.padded };
        (div_ceil(steps, ROWS), p.nh, 1)
    }
    pub const ENTRY: &str = crate::entries::names::varlen_pack;
}
