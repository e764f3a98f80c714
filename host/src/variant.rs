//! The two gate variants of the mLSTM (see `reference` for the formulas) and the two gradients
//! of the backward pass: what both the kernels and the float64 reference are asked for, in a
//! module that reaches neither the device nor the error type.

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

/// Which gradient the backward pass computes (the GPU backward and `reference::backward`).
///
/// Both agree wherever the normalizer's denominator and the max state do not move with the
/// inputs; on random mLSTMexp inputs they differ by ~100% in dq, dk, dĩ and df̃
/// (`shared/MATH.md`), so pick the one the rest of the model expects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum GradMode {
    /// The true gradient of the forward as defined, including the paths through the
    /// denominator max(|s|, floor) + eps and (mLSTMexp) through the max state m, which is
    /// piecewise linear in the gates. Exact except on the measure-zero set where a max ties.
    /// Costs one more value column (the normalizer) in the state and score products and a
    /// per-row scan.
    #[default]
    Exact,
    /// The denominator and the max state held constant (what the TFLA authors' Triton kernels
    /// compute): ds = 0 and no path through m. No gradient flows through ñ: the upstream dn and
    /// dm are ignored and dn0 = dm0 = 0. This is the exact gradient of a forward whose m_t and
    /// den_t are frozen copies of their values.
    DetachedNormalizer,
}

impl GradMode {
    /// Parses "exact" or "detached" (the command line's names).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "exact" => Some(GradMode::Exact),
            "detached" | "detached-normalizer" => Some(GradMode::DetachedNormalizer),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GradMode::Exact => "exact",
            GradMode::DetachedNormalizer => "detached",
        }
    }
}
