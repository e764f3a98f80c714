//! Helpers shared by the reference's tests: seeded randomness, error measures, slicing in time.
//!
//! Notation: `B`, `NH`, `S`, `DQK`, `DHV` as in the parent module.

use std::ops::Range;

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::head::head_slice;
use super::{RefInputs, RefOutputs, Shape};
use crate::Variant;

/// The three variant settings every test covers.
pub(super) const VARIANTS: [Variant; 3] = [
    Variant::Exp,
    Variant::Sig { normalize: true },
    Variant::Sig { normalize: false },
];

/// A generator with a fresh seed, or the seed in `TFLA_REF_SEED`; the seed is printed (and so
/// shown when the test fails) to reproduce a run.
pub(super) fn seeded_rng(test: &str) -> StdRng {
    let seed = std::env::var("TFLA_REF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("{test}: seed {seed} (rerun with TFLA_REF_SEED={seed})");
    StdRng::seed_from_u64(seed)
}

/// Tolerance (normwise relative) for two forward forms to agree in float64. Observed: up to
/// 3e-13 over 300 random runs. Rounding in s = ñᵀq̂ is amplified by Σ|terms| / |s| in rows
/// where |s| is just above a small floor e^{−m}, and those rows have the largest h, so the
/// bound leaves headroom.
pub(super) const FORMS_TOL: f64 = 1e-10;

/// `Shape { b, nh, s, dqk, dhv }`, compactly.
pub(super) const fn shape(b: usize, nh: usize, s: usize, dqk: usize, dhv: usize) -> Shape {
    Shape { b, nh, s, dqk, dhv }
}

/// Normwise relative error max|got − want| / max|want| (0 when both are all zeros).
pub(super) fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "rel_err: lengths differ");
    let diff = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    let size = want.iter().map(|x| x.abs()).fold(0.0, f64::max);
    if diff == 0.0 { 0.0 } else { diff / size }
}

/// Asserts [`rel_err`] ≤ `tol` and returns the error.
pub(super) fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) -> f64 {
    let err = rel_err(got, want);
    assert!(err <= tol, "{what}: relative error {err:e} > {tol:e}");
    err
}

/// Asserts that two forward results agree to `tol` in h and every final state; returns the
/// largest relative error.
pub(super) fn assert_outputs_close(
    what: &str,
    got: &RefOutputs,
    want: &RefOutputs,
    tol: f64,
) -> f64 {
    [
        assert_close(&format!("{what}: h"), &got.h, &want.h, tol),
        assert_close(&format!("{what}: c"), &got.c, &want.c, tol),
        assert_close(&format!("{what}: n"), &got.n, &want.n, tol),
        assert_close(&format!("{what}: m"), &got.m, &want.m, tol),
    ]
    .into_iter()
    .fold(0.0, f64::max)
}

/// Steps `range` of every sequence of `inp`, starting from the final states of `from` (or from
/// `inp`'s own initial states when `None`).
pub(super) fn time_slice(
    inp: &RefInputs,
    range: Range<usize>,
    from: Option<&RefOutputs>,
) -> RefInputs {
    let Shape { s, dqk, dhv, .. } = inp.shape;
    let shape = Shape {
        s: range.len(),
        ..inp.shape
    };
    let slice = |data: &[f64], width: usize| -> Vec<f64> {
        (0..inp.shape.heads())
            .flat_map(|bh| {
                head_slice(data, bh, s * width)[range.start * width..range.end * width].to_vec()
            })
            .collect()
    };
    let (c0, n0, m0) = match from {
        Some(out) => (
            Some(out.c.clone()),
            Some(out.n.clone()),
            Some(out.m.clone()),
        ),
        None => (inp.c0.clone(), inp.n0.clone(), inp.m0.clone()),
    };
    RefInputs {
        shape,
        q: slice(&inp.q, dqk),
        k: slice(&inp.k, dqk),
        v: slice(&inp.v, dhv),
        i: slice(&inp.i, 1),
        f: slice(&inp.f, 1),
        c0,
        n0,
        m0,
    }
}
