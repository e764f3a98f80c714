//! Generation: one step of the recurrence per token (`step`).
use super::common::{block, gates, slots};

pub mod step;
