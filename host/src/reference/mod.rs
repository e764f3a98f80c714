//! Float64 CPU reference of the mLSTM: the ground truth every GPU kernel is checked against.
//!
//! Notation (as in mlstm_kernels):
//! - `B`: batch size, `NH`: number of heads, `S`: sequence length,
//! - `DQK`: query/key head dimension, `DHV`: value (and output) head dimension,
//! - `L`: chunk size, `NC = ⌈S / L⌉`: number of chunks.
//!
//! Per (batch, head), with q̂_t = q_t·scale (scale usually 1/√DQK):
//! - log forget gate λ_t = logσ(f̃_t); log input gate ι_t = ĩ_t (mLSTMexp) or logσ(ĩ_t) (mLSTMsig).
//! - mLSTMexp: m_t = max(λ_t + m_{t−1}, ι_t),
//!   C̃_t = e^{λ_t + m_{t−1} − m_t} C̃_{t−1} + e^{ι_t − m_t} k_t v_tᵀ,
//!   ñ_t = e^{λ_t + m_{t−1} − m_t} ñ_{t−1} + e^{ι_t − m_t} k_t,
//!   h_t = C̃_tᵀ q̂_t / (max(|ñ_tᵀ q̂_t|, e^{−m_t}) + eps).
//! - mLSTMsig: the same with m_t ≡ 0, i.e. C_t = σ(f̃_t) C_{t−1} + σ(ĩ_t) k_t v_tᵀ (n likewise);
//!   `normalize`: h_t = C_tᵀ q̂_t / (max(|n_tᵀ q̂_t|, 1) + eps), otherwise h_t = C_tᵀ q̂_t. The
//!   reference carries n in every variant (it does not affect h without `normalize`), so final
//!   states are comparable across variants.
//! - Initial state: C̃_0 = c0, ñ_0 = n0 (default 0), m_0 = m0 (mLSTMexp only, default 0).
//!
//! The three forward forms compute the same function: [`recurrent()`] (step by step),
//! [`parallel()`] (quadratic, one row of gate weights per step) and [`chunkwise()`] (the TFLA form
//! of `shared/MATH.md`: states at chunk boundaries, [`chunk_states`], plus an intra-chunk part).
//! [`backward()`] is the hand-written reverse of the recurrence, exact or with a detached
//! normalizer ([`GradMode`]); [`chunkwise_backward()`] computes it the way the chunkwise
//! backward kernels will (state gradients at chunk boundaries, then intra-chunk terms).

mod backward;
mod chunkwise;
mod chunkwise_backward;
mod gates;
mod head;
mod parallel;
mod random;
mod recurrent;
mod state;
#[cfg(test)]
mod test_util;

pub use backward::{GradMode, RefGradOutputs, RefGrads, backward};
pub use chunkwise::{ChunkStates, chunk_states, chunkwise};
pub use chunkwise_backward::{ChunkGrads, chunkwise_backward};
pub use parallel::parallel;
pub use recurrent::{KinkMargins, ReadoutTerms, kink_margins, readout_terms, recurrent};

use crate::Variant;

/// Problem dimensions: `B`, `NH`, `S`, `DQK`, `DHV`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    /// Batch size `B`.
    pub b: usize,
    /// Number of heads `NH`.
    pub nh: usize,
    /// Sequence length `S` (may be 0).
    pub s: usize,
    /// Query/key head dimension `DQK` (at least 1).
    pub dqk: usize,
    /// Value/output head dimension `DHV` (at least 1).
    pub dhv: usize,
}

impl Shape {
    /// Number of independent (batch, head) sequences, `B·NH`.
    pub fn heads(&self) -> usize {
        self.b * self.nh
    }

    /// Number of chunks `NC = ⌈S / L⌉` for chunk size `chunk` (`L`, positive).
    pub fn num_chunks(&self, chunk: usize) -> usize {
        self.s.div_ceil(chunk)
    }
}

/// Variant and scalars of the cell.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RefParams {
    /// Gate variant (and whether the output is normalized).
    pub variant: Variant,
    /// Added to the denominator: h = num / (max(|s|, floor) + eps).
    pub eps: f64,
    /// Query scale: q̂ = q·scale.
    pub scale: f64,
}

impl RefParams {
    /// The usual parameters: eps = 1e-6, scale = 1/√DQK.
    pub fn new(variant: Variant, dqk: usize) -> Self {
        Self {
            variant,
            eps: 1e-6,
            scale: 1.0 / (dqk as f64).sqrt(),
        }
    }
}

/// Inputs of the mLSTM, float64, row-major contiguous.
#[derive(Clone, Debug, PartialEq)]
pub struct RefInputs {
    /// Problem dimensions.
    pub shape: Shape,
    /// Queries, (B, NH, S, DQK).
    pub q: Vec<f64>,
    /// Keys, (B, NH, S, DQK).
    pub k: Vec<f64>,
    /// Values, (B, NH, S, DHV).
    pub v: Vec<f64>,
    /// Input gate pre-activations ĩ, (B, NH, S).
    pub i: Vec<f64>,
    /// Forget gate pre-activations f̃, (B, NH, S).
    pub f: Vec<f64>,
    /// Initial (stabilized) state C̃_0, (B, NH, DQK, DHV); `None` means zeros.
    pub c0: Option<Vec<f64>>,
    /// Initial (stabilized) normalizer ñ_0, (B, NH, DQK); `None` means zeros.
    pub n0: Option<Vec<f64>>,
    /// Initial max state m_0, (B, NH); mLSTMexp only (ignored for mLSTMsig); `None` means zeros.
    pub m0: Option<Vec<f64>>,
}

impl RefInputs {
    /// Asserts that every tensor has the length its shape implies.
    fn validate(&self) {
        let Shape { b, nh, s, dqk, dhv } = self.shape;
        assert!(
            dqk > 0 && dhv > 0,
            "reference: head dimensions must be positive, got DQK = {dqk}, DHV = {dhv}"
        );
        check_len("q", &self.q, "B·NH·S·DQK", b * nh * s * dqk);
        check_len("k", &self.k, "B·NH·S·DQK", b * nh * s * dqk);
        check_len("v", &self.v, "B·NH·S·DHV", b * nh * s * dhv);
        check_len("i", &self.i, "B·NH·S", b * nh * s);
        check_len("f", &self.f, "B·NH·S", b * nh * s);
        check_opt_len("c0", &self.c0, "B·NH·DQK·DHV", b * nh * dqk * dhv);
        check_opt_len("n0", &self.n0, "B·NH·DQK", b * nh * dqk);
        check_opt_len("m0", &self.m0, "B·NH", b * nh);
    }
}

/// Outputs of a forward form, float64, row-major contiguous.
#[derive(Clone, Debug, PartialEq)]
pub struct RefOutputs {
    /// Hidden states h, (B, NH, S, DHV).
    pub h: Vec<f64>,
    /// Final (stabilized) state C̃_S, (B, NH, DQK, DHV).
    pub c: Vec<f64>,
    /// Final (stabilized) normalizer ñ_S, (B, NH, DQK).
    pub n: Vec<f64>,
    /// Final max state m_S, (B, NH); all zeros for mLSTMsig.
    pub m: Vec<f64>,
}

/// Asserts `data.len() == expected`, naming the tensor and its shape in the message.
fn check_len(name: &str, data: &[f64], dims: &str, expected: usize) {
    assert!(
        data.len() == expected,
        "reference: `{name}` has {} elements, expected {dims} = {expected}",
        data.len()
    );
}

/// [`check_len`] for an optional tensor.
fn check_opt_len(name: &str, data: &Option<Vec<f64>>, dims: &str, expected: usize) {
    if let Some(data) = data {
        check_len(name, data, dims, expected);
    }
}
