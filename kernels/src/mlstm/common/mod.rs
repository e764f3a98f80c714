//! Building blocks every pass shares: block-wide scans (`block`), the gate variants
//! (`gates`), `cp.async` staging and whole-sector stores (`stage`), the state walk's load,
//! store and gate scalars (`state_walk`), the output tile's row terms (`out_tile`), packed
//! sequences and state-pool slots (`seqs`, `slots`), and the packed batch's repacking kernel
//! (`pack`).
pub mod block;
pub mod gates;
pub mod out_tile;
pub mod pack;
pub mod seqs;
pub mod slots;
pub mod stage;
pub mod state_walk;
