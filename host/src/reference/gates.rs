//! The scalar parts of the cell: log gates, the max-state stabilizer and the denominator.
//!
//! Notation: `S` sequence length; λ log forget gate, ι log input gate, m max state,
//! s = ñᵀq̂ the normalizer readout.

use super::RefParams;
use crate::Variant;

/// logσ(x) = −softplus(−x) = min(x, 0) − ln(1 + e^{−|x|}), accurate for every x.
pub(super) fn log_sigmoid(x: f64) -> f64 {
    x.min(0.0) - (-x.abs()).exp().ln_1p()
}

/// σ(x) = 1 / (1 + e^{−x}), without overflow for large |x|.
pub(super) fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Log gates of one head.
#[derive(Clone, Debug)]
pub(super) struct LogGates {
    /// λ_t = logσ(f̃_t), (S).
    pub lambda: Vec<f64>,
    /// ι_t = ĩ_t (mLSTMexp) or logσ(ĩ_t) (mLSTMsig), (S).
    pub iota: Vec<f64>,
}

impl LogGates {
    /// Gates from the pre-activations ĩ (S) and f̃ (S).
    pub fn new(variant: Variant, i: &[f64], f: &[f64]) -> Self {
        let iota = match variant {
            Variant::Exp => i.to_vec(),
            Variant::Sig { .. } => i.iter().map(|&x| log_sigmoid(x)).collect(),
        };
        Self {
            lambda: f.iter().map(|&x| log_sigmoid(x)).collect(),
            iota,
        }
    }
}

/// Whether the variant carries a max state m (mLSTMexp); otherwise m ≡ 0.
pub(super) fn is_stabilized(variant: Variant) -> bool {
    matches!(variant, Variant::Exp)
}

/// The stabilizer of a gated sum with log weight `init_log` on the previous state and
/// `key_logs` on new keys: their maximum (mLSTMexp), or 0 (mLSTMsig).
pub(super) fn stabilizer(variant: Variant, init_log: f64, key_logs: &[f64]) -> f64 {
    if is_stabilized(variant) {
        key_logs.iter().fold(init_log, |m, &x| m.max(x))
    } else {
        0.0
    }
}

/// The denominator max(|s|, e^{−m}) + eps, or 1 when the variant does not normalize.
pub(super) fn denominator(p: &RefParams, s: f64, m: f64) -> f64 {
    if p.variant.normalizes() {
        s.abs().max((-m).exp()) + p.eps
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// logσ and σ against direct formulas where those are accurate, and at extreme arguments.
    #[test]
    fn log_sigmoid_and_sigmoid_are_accurate() {
        for x in [-30.0, -5.0, -0.5, 0.0, 0.7, 4.0, 30.0] {
            let direct = 1.0 / (1.0 + f64::exp(-x));
            assert!((sigmoid(x) - direct).abs() <= 1e-16, "σ({x})");
            assert!((log_sigmoid(x) - direct.ln()).abs() <= 1e-15, "logσ({x})");
        }
        assert_eq!(log_sigmoid(-1000.0), -1000.0);
        assert_eq!(log_sigmoid(1000.0), 0.0);
        assert!((log_sigmoid(40.0) + f64::exp(-40.0)).abs() <= 1e-30);
        assert_eq!(sigmoid(-1000.0), 0.0);
        assert_eq!(sigmoid(1000.0), 1.0);
    }
}
