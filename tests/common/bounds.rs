//! Error bounds derived from each case's conditioning, by statistical condition estimation
//! (Kenney & Laub, "Small-sample statistical condition estimation for general matrix
//! functions", SIAM J. Sci. Comput. 15, 1994): the float64 reference is run again on inputs
//! moved by their rounding, and how far each output row moves is that row's sensitivity to
//! rounding. A kernel that computes with unit roundoff u (its 16-bit operands, f32
//! accumulation) makes errors equivalent to relative input perturbations of a few u, so its
//! error in row t is at most a small multiple of the reference's spread in row t — tight where
//! the row is well conditioned, and as loose as the row really is where its readout cancels
//! (κ_n = ‖ñ_t∘q̂_t‖/den_t large), its denominator is small or dh_t·h_t cancels. The tests that
//! use it redraw nothing to make the bound hold (only Exact-mode rows within rounding of a
//! kink of the gradient move, `away_from_kinks`); a kernel that drops a term is off by O(1) in
//! well conditioned rows and fails (`tests/bounds.rs` checks both on the CPU).

use super::norm;
use rand::Rng;
use tfla::Dtype;
use tfla::reference::{RefGradOutputs, RefInputs};

/// Reruns of the reference per case. Where a row's error lies along one direction (its
/// denominator's, where the readout cancels) one sample's spread is |N(0, 1)|-distributed and
/// can come out near 0 by chance; the largest of four rarely does (below).
pub const SAMPLES: usize = 4;

/// A row's bound is this many times its spread ([`row_bounds`]). A rounding of u moves an
/// operand by at most u (the samples move every input by exactly u), but a kernel rounds
/// intermediates too (P, the weighted keys, the chunk states, h read back by the backward),
/// each again up to u, and sums them in another order.
pub const FACTOR: f64 = 8.0;

/// A tensor passes when the root mean square over its rows of error / bound is at most 1 (for
/// tensors of few rows see [`MEAN_ROWS`]) and no row's is over this. The mean is what a correct
/// kernel keeps (with a kernel error c times the samples' along one direction, the worst case,
/// E[(c|N₀| / (FACTOR·max₄|Nᵢ|))²] is 0.05
/// for c = 2, 0.12 for c = 3); single rows are |N|-distributed and 1 in ~250 such rows of a
/// correct kernel exceeds ratio 1 at c = 2, 1 in 10⁵ exceeds 4 and fewer than 1 in 10⁶ exceed
/// this. A kernel that drops a term is off by O(1): 1 / (FACTOR·u) ≈ 32 in bf16 rows.
pub const MAX_ROW_RATIO: f64 = 8.0;

/// The mean over rows is the criterion from this many rows on. Over fewer it is the mean of
/// too few |N|-distributed ratios to average their tail out (a tensor of one row, such as dm̃_0
/// with one value per head, has its one row's ratio for RMS, which the model above puts over 1
/// in ~1 of 250 rows of a correct kernel), so there the sum of squares may reach this many:
/// RMS up to 4 for one row, 2 for four rows (1 in ~10⁵ single rows of a correct kernel exceeds
/// 4; a dropped term, ≥ 32 in bf16, still fails).
pub const MEAN_ROWS: usize = 16;

/// The RMS a tensor of `rows` rows may reach ([`MEAN_ROWS`]).
pub fn rms_limit(rows: usize) -> f64 {
    (MEAN_ROWS as f64 / rows.max(1) as f64).sqrt().max(1.0)
}

/// Unit roundoff of a dtype's kernels: 16-bit inputs are multiplied in their own precision
/// (bf16 2⁻⁸, f16 2⁻¹¹) with f32 accumulation; f32 inputs run the f32 recurrence, whose
/// states accumulate a rounding of 2⁻²⁴ per step: 2⁻²⁰ stands for sums over up to ~256
/// comparable terms (√256 · 2⁻²⁴).
pub fn unit_roundoff(dtype: Dtype) -> f64 {
    match dtype {
        Dtype::Bf16 => 2f64.powi(-8),
        Dtype::F16 => 2f64.powi(-11),
        Dtype::F32 => 2f64.powi(-20),
    }
}

/// f32 arithmetic of the gates, states and accumulators, which every dtype's kernels run in
/// (the gates' cumulative sums over a chunk of up to 512 steps: 2⁻²⁴ · √512 ≈ 2⁻¹⁹·⁵).
const GATE_ROUNDOFF: f64 = 1.0 / (1u64 << 20) as f64;

/// Moves every element by ±u·|x| (sign at random): a relative rounding of exactly u.
fn nudge(x: &[f64], u: f64, rng: &mut impl Rng) -> Vec<f64> {
    x.iter()
        .map(|&v| v * (1.0 + if rng.gen_bool(0.5) { u } else { -u }))
        .collect()
}

/// Moves every element by ±u·(1 + |x|): gates live in log space, where an absolute error is
/// what a rounding of the sums they enter leaves.
fn nudge_log(x: &[f64], u: f64, rng: &mut impl Rng) -> Vec<f64> {
    x.iter()
        .map(|&v| v + if rng.gen_bool(0.5) { u } else { -u } * (1.0 + v.abs()))
        .collect()
}

/// `inp` with every input moved by its rounding in a `dtype` kernel: q, k, v and the initial
/// states by the dtype's unit roundoff (the kernels round the states to it before each
/// product), the gates and m0 by the f32 arithmetic they run in.
pub fn perturbed_inputs(inp: &RefInputs, dtype: Dtype, rng: &mut impl Rng) -> RefInputs {
    let u = unit_roundoff(dtype);
    RefInputs {
        shape: inp.shape,
        q: nudge(&inp.q, u, rng),
        k: nudge(&inp.k, u, rng),
        v: nudge(&inp.v, u, rng),
        i: nudge_log(&inp.i, GATE_ROUNDOFF, rng),
        f: nudge_log(&inp.f, GATE_ROUNDOFF, rng),
        c0: inp.c0.as_ref().map(|x| nudge(x, u, rng)),
        n0: inp.n0.as_ref().map(|x| nudge(x, u, rng)),
        m0: inp.m0.as_ref().map(|x| nudge_log(x, GATE_ROUNDOFF, rng)),
    }
}

/// `g` with every upstream gradient moved by the dtype's unit roundoff (the backward rounds
/// dP, dh-weighted values and the state gradients dC̃ to it before each product).
pub fn perturbed_grad_outputs(
    g: &RefGradOutputs,
    dtype: Dtype,
    rng: &mut impl Rng,
) -> RefGradOutputs {
    let u = unit_roundoff(dtype);
    RefGradOutputs {
        dh: nudge(&g.dh, u, rng),
        dc: g.dc.as_ref().map(|x| nudge(x, u, rng)),
        dn: g.dn.as_ref().map(|x| nudge(x, u, rng)),
        dm: g.dm.as_ref().map(|x| nudge_log(x, GATE_ROUNDOFF, rng)),
    }
}

/// One output tensor's check against its conditioning-derived bounds.
#[derive(Clone, Copy, Debug)]
pub struct Verdict {
    /// Root mean square over rows of ‖got_t − want_t‖ / bound_t (+∞ where `got` holds NaN or
    /// ±∞).
    pub rms: f64,
    /// What `rms` may reach: 1, or more for a tensor of few rows ([`rms_limit`]).
    pub rms_limit: f64,
    /// The largest row ratio, and that row.
    pub worst: f64,
    pub row: usize,
    /// That row's relative error ‖got_t − want_t‖ / ‖want_t‖ and its bound on the same scale
    /// (what the row's conditioning allows).
    pub rel_err: f64,
    pub rel_bound: f64,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.rms <= self.rms_limit && self.worst <= MAX_ROW_RATIO
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.2}/{:.2} (row {}: {:.1e} of {:.1e})",
            self.rms, self.worst, self.row, self.rel_err, self.rel_bound
        )
    }
}

/// Terms a kernel forms from separately rounded operands and adds: the result is their sum,
/// and however much the terms cancel, each carries its own error — its own sensitivity to the
/// inputs' rounding, and a rounding of u relative to itself. The samples of the sum cannot show
/// this (they move the inputs, and the terms move together and keep cancelling). The Exact
/// gradient is such a sum: the detached-normalizer gradient plus the term through the
/// normalizer, which the backward forms from the 16-bit h the forward stored.
pub struct Terms {
    pub u: f64,
    /// Each term and its value in each sample.
    pub parts: Vec<(Vec<f64>, Vec<Vec<f64>>)>,
}

impl Terms {
    /// The two terms of an Exact gradient tensor: the detached-normalizer gradient and the term
    /// through the normalizer (Exact − detached), from the reference and its samples of both
    /// modes (the same draws, in the same order).
    pub fn exact_split(
        u: f64,
        (exact, exact_samples): (&[f64], &[&[f64]]),
        (detached, detached_samples): (&[f64], &[&[f64]]),
    ) -> Self {
        let minus =
            |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(a, b)| a - b).collect() };
        let normalizer_samples = exact_samples
            .iter()
            .zip(detached_samples)
            .map(|(e, d)| minus(e, d))
            .collect();
        let detached_samples = detached_samples.iter().map(|d| d.to_vec()).collect();
        Self {
            u,
            parts: vec![
                (detached.to_vec(), detached_samples),
                (minus(exact, detached), normalizer_samples),
            ],
        }
    }
}

/// Each row's bound (rows of `per` elements): FACTOR · spread_t + floor, where spread_t is the
/// largest ‖sample_s,t − want_t‖ over the samples (the reference on [`perturbed_inputs`] and
/// [`perturbed_grad_outputs`]) or, with [`Terms`], the larger of that and Σ_k (the same for
/// term k + u · ‖term_k,t‖); the floor is the f32 rounding of the tensor's largest row (the
/// kernels return f32; below that, and below f32's smallest normal, which the GPU flushes to
/// zero, a difference is not the kernel's).
pub fn row_bounds(want: &[f64], samples: &[&[f64]], terms: Option<&Terms>, per: usize) -> Vec<f64> {
    assert!(
        per > 0 && want.len().is_multiple_of(per),
        "rows of {per} do not tile {}",
        want.len()
    );
    let largest = want.chunks_exact(per).map(norm).fold(0.0, f64::max);
    let floor = (2f64.powi(-24) * largest).max(f32::MIN_POSITIVE as f64 * (per as f64).sqrt());
    // The largest distance of a row of the samples from the same row of `value`.
    fn spread<S: AsRef<[f64]>>(value: &[f64], samples: &[S], rows: std::ops::Range<usize>) -> f64 {
        samples
            .iter()
            .map(|s| {
                dist(
                    s.as_ref()[rows.clone()].iter().copied(),
                    &value[rows.clone()],
                )
            })
            .fold(0.0, f64::max)
    }
    (0..want.len() / per)
        .map(|row| {
            let rows = row * per..(row + 1) * per;
            let whole = spread(want, samples, rows.clone());
            let parts = terms.map_or(0.0, |t| {
                t.parts
                    .iter()
                    .map(|(value, samples)| {
                        spread(value, samples, rows.clone()) + t.u * norm(&value[rows.clone()])
                    })
                    .sum::<f64>()
            });
            FACTOR * whole.max(parts) + floor
        })
        .collect()
}

/// Checks `got` row by row (rows of `per` elements) against the reference `want` and
/// [`row_bounds`] (see [`MAX_ROW_RATIO`] for the criterion).
pub fn check_rows(
    got: &[f32],
    want: &[f64],
    samples: &[&[f64]],
    terms: Option<&Terms>,
    per: usize,
) -> Verdict {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let bounds = row_bounds(want, samples, terms, per);
    if let Some(at) = got.iter().position(|x| !x.is_finite()) {
        return Verdict {
            rms: f64::INFINITY,
            rms_limit: rms_limit(bounds.len()),
            worst: f64::INFINITY,
            row: at / per,
            rel_err: f64::INFINITY,
            rel_bound: 0.0,
        };
    }
    let mut verdict = Verdict {
        rms: 0.0,
        rms_limit: rms_limit(bounds.len()),
        worst: -1.0,
        row: 0,
        rel_err: 0.0,
        rel_bound: 0.0,
    };
    let mut squares = 0.0;
    for (row, (w, bound)) in want.chunks_exact(per).zip(&bounds).enumerate() {
        let err = dist(got[row * per..(row + 1) * per].iter().map(|&x| x as f64), w);
        let ratio = err / bound;
        squares += ratio * ratio;
        if ratio > verdict.worst {
            let scale = norm(w).max(f64::MIN_POSITIVE);
            (verdict.worst, verdict.row) = (ratio, row);
            (verdict.rel_err, verdict.rel_bound) = (err / scale, bound / scale);
        }
    }
    verdict.rms = (squares / bounds.len().max(1) as f64).sqrt();
    verdict.worst = verdict.worst.max(0.0);
    verdict
}

fn dist(a: impl Iterator<Item = f64>, b: &[f64]) -> f64 {
    a.zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt()
}
