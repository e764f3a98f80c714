//! The backward pass: per-row coefficients, the reverse state walk (narrow and `wgmma`
//! tiles, sharing `bwd_state_walk`), the score tiles and the dq, dk, dv combines (`mma.sync`
//! and `wgmma` tiles, sharing `bwd_combine`'s roles; in one kernel for small heads,
//! `bwd_chunk`, on `wgmma` `bwd_chunk_wg`), the gate gradients, the max-state path, and the
//! f32 reverse recurrence.
use super::common::{block, gates, seqs, stage};

pub mod bwd_chunk;
pub mod bwd_chunk_terms;
#[cfg(target_feature = "sm_90a")]
pub mod bwd_chunk_wg;
pub mod bwd_combine;
#[cfg(target_feature = "sm_90a")]
pub mod bwd_combine_wg;
pub mod bwd_gates;
pub mod bwd_max_path;
pub mod bwd_recurrent_f32;
pub mod bwd_rows;
pub mod bwd_scores;
pub mod bwd_state;
pub mod bwd_state_walk;
#[cfg(target_feature = "sm_90a")]
pub mod bwd_state_wg;
