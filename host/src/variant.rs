//! The two gate variants of the mLSTM (see `reference` for the formulas).

/// Which mLSTM gate variant a kernel or the reference computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    /// mLSTMexp: exponential input gate ι = ĩ, forget gate logσ(f̃), max-state stabilizer m,
    /// normalizer n, h = C̃ᵀq̂ / (max(|ñᵀq̂|, e^{-m}) + eps).
    Exp,
    /// mLSTMsig: input gate σ(ĩ), forget gate σ(f̃), no max state. With `normalize`,
    /// h = Cᵀq̂ / (max(|nᵀq̂|, 1) + eps); without it h = Cᵀq̂ and n is never formed.
    Sig { normalize: bool },
}

impl Variant {
    /// Whether the output is divided by the normalizer (and so n is tracked).
    pub fn normalizes(self) -> bool {
        !matches!(self, Variant::Sig { normalize: false })
    }
}
