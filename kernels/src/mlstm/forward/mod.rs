//! The forward pass: the chunk gate vectors, the chunk-state walk (narrow, wide and `wgmma`
//! tiles), the chunk outputs (`mma.sync` and `wgmma`), both in one kernel for small heads
//! (`chunk_fused`), and the f32 recurrence.
use super::common::{block, gates, out_tile, seqs, slots, stage, state_walk};

pub mod chunk_fused;
pub mod chunk_gates;
pub mod chunk_output;
#[cfg(target_feature = "sm_90a")]
pub mod chunk_output_wg;
pub mod chunk_state;
#[cfg(target_feature = "sm_90a")]
pub mod chunk_state_wg;
pub mod chunk_state_wide;
pub mod recurrent_f32;
