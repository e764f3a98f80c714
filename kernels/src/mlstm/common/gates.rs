//! The gate variants as types, so each kernel is written once and monomorphized per variant.
use crate::arch::math;

/// How a variant turns gate pre-activations into log gates, and what it tracks.
pub trait GateKind {
    /// Whether the max state m stabilizes the exponentials (mLSTMexp); otherwise m ≡ 0.
    const STABILIZED: bool;
    /// Whether h is divided by the normalizer (and so n is carried).
    const NORMALIZED: bool;
    /// Log input gate ι from ĩ.
    fn log_input(i: f32) -> f32;
}

/// mLSTMexp: ι = ĩ, stabilized, normalized.
pub struct ExpGates;
/// mLSTMsig: ι = logσ(ĩ), normalized.
pub struct SigGates;
/// mLSTMsig without the normalizer.
pub struct SigNoNormGates;

impl GateKind for ExpGates {
    const STABILIZED: bool = true;
    const NORMALIZED: bool = true;
    #[inline(always)]
    fn log_input(i: f32) -> f32 {
        i
    }
}

impl GateKind for SigGates {
    const STABILIZED: bool = false;
    const NORMALIZED: bool = true;
    #[inline(always)]
    fn log_input(i: f32) -> f32 {
        math::log_sigmoid(i)
    }
}

impl GateKind for SigNoNormGates {
    const STABILIZED: bool = false;
    const NORMALIZED: bool = false;
    #[inline(always)]
    fn log_input(i: f32) -> f32 {
        math::log_sigmoid(i)
    }
}
