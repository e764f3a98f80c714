//! The step kernel (generation) on the GPU against the float64 reference: S tokens stepped
//! one at a time from random or zero initial states; every step's h and the states after the
//! last step compared with `reference::recurrent` over the same S tokens. Every variant,
//! bf16 / f16 / f32 inputs, f32 and bf16 states, DQK ≠ DHV, head dims 16..512 with ragged
//! column tiles, hard gate regimes; the accuracy cost of bf16 states over 1000 steps; a
//! chunkwise-forward prefill followed by steps equals one forward; the kernel's occupancy (one
//! wave at B·NH = 64); a state pool (slots) against separate states, bit-exact; typed errors.
//! Every h is poisoned with NaN before its step.
//!
//! The states are held to the bounds of their error model (`state_tol`); h row by row (one
//! head, one step) to the output rounding plus the state bounds times that row's conditioning
//! (`Conditioning`, from the float64 replay): where the normalizer readout ñᵀq̂ cancels, h is
//! large and carries the states' error amplified, so a bound for all of h at once either fails
//! there or says nothing elsewhere.
//!
//! These tests need an NVIDIA GPU (8.0 or later; Hopper runs the sm_90a module, TFLA_PORTABLE=1
//! the sm_80 one): they are `#[ignore]`d so a machine without one
//! reports them as ignored; run them with `cargo test -- --include-ignored` (the bundle does).
mod common;

use common::*;
use tfla::reference::{self, RefInputs, RefParams, Shape};
use tfla::{
    Dtype, MlstmConfig, Runtime, StepDims, StepInputs, StepPointers, StepStates, Tensor, Variant,
};

const EXP: Variant = Variant::Exp;
const SIG: Variant = Variant::Sig { normalize: true };
const SIG_NONORM: Variant = Variant::Sig { normalize: false };
const VARIANTS: [Variant; 3] = [EXP, SIG, SIG_NONORM];

/// Unit roundoff of bf16 (8 significand bits): the largest relative error of one rounding.
const BF16_U: f64 = 1.0 / 256.0;

/// Relative error of f32 states after a step or a few dozen: the arithmetic is f32 on inputs
/// the reference sees exactly, so what remains is f32 rounding and the approximate exponentials
/// (ex2/lg2.approx, ~2 ulp); the forward's f32 recurrence (same math) meets the same bound.
const F32_STATE_TOL: f64 = 1e-5;

/// Error every step adds to the decay in f32, at worst: lg2.approx (2^-22 absolute, 1.7e-7
/// in logσ), ex2.approx (2 ulp, 1.2e-7 near 1) and 1 + e^{−f̃} rounded to f32 (6e-8), of one
/// sign over a run of similar gates. The state keeps it for its memory length, at most G steps.
const F32_GATE_ERR: f64 = 4e-7;

fn shape(b: usize, nh: usize, s: usize, dqk: usize, dhv: usize) -> Shape {
    Shape { b, nh, s, dqk, dhv }
}

/// G = max over heads and steps of G_t = 1 + σ(f̃_t)² G_{t−1} (G_0 = 1 for a state that holds
/// rounding already, 0 for an exact one; we start from 0: the initial states are uploaded
/// exactly). A rounding error made at step s has the weight Π_{s<r≤t} σ(f̃_r) at step t, so
/// with independent errors of relative size ε the state's relative error is about ε·√G_t.
fn memory(inp: &RefInputs) -> f64 {
    let s = inp.shape.s;
    let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
    let mut g_max: f64 = 1.0;
    for head in inp.f.chunks_exact(s) {
        let mut g = 0.0;
        for &f in head {
            g = 1.0 + sigmoid(f).powi(2) * g;
            g_max = g_max.max(g);
        }
    }
    g_max
}

/// Bound on the relative state error (C̃, ñ) after steps with memory `g`. bf16 states (C̃
/// rounded, ñ f32): one rounding per step, rms ≈ 0.43·u (round to nearest, values uniform in
/// log scale), so 2·u·√G is about five standard deviations of the random-walk model. f32:
/// [`F32_STATE_TOL`] plus the gates' error kept over G steps.
fn state_tol(state: Dtype, g: f64) -> f64 {
    match state {
        Dtype::Bf16 => 2.0 * BF16_U * g.sqrt(),
        _ => F32_STATE_TOL + F32_GATE_ERR * g,
    }
}

/// How the states' errors reach h, per row (head, step) of h, from the float64 recurrence
/// (`reference::readout_terms`). With h_t = C̃_tᵀq̂_t / den_t, a relative error ε of C̃_t moves
/// the numerator relatively by ε·κ_C and one of ñ_t moves den_t relatively by ε·κ_n, where
///   κ_C = ‖diag(q̂_t) C̃_t‖_F / ‖C̃_tᵀq̂_t‖,   κ_n = ‖ñ_t ∘ q̂_t‖ / den_t
/// are the root-mean-square amplifications for errors independent across entries and
/// proportional to them, which the states' errors are: bf16 C̃ takes one rounding per step,
/// f32 states take f32 roundings and per-step gate errors that reweight past contributions
/// with signs that vary from step to step. Both are ~1 for a generic q̂ and large where the
/// readout cancels: with long memory ñ_t sums many keys and |ñ_tᵀq̂_t| can be a small
/// difference of large terms, so den_t is small, h_t large, and its relative error is the
/// state's amplified by κ_n. Both are taken at least 1: an error common to all entries (a
/// scale) passes through unamplified. The worst case, an error aligned with q̂
/// (κ = ‖ñ_t‖‖q̂_t‖/den_t, √DQK times larger for a generic q̂), is printed for the record: with
/// the state bounds below it makes the bound vacuous (≳ 1) exactly where h is largest.
struct Conditioning {
    /// κ_C per row, (B·NH·S).
    kappa_c: Vec<f64>,
    /// κ_n per row (0 without the normalizer, where ñ does not reach h).
    kappa_n: Vec<f64>,
    /// ‖ñ_t‖‖q̂_t‖/den_t per row (printed only).
    kappa_n_worst: Vec<f64>,
}

impl Conditioning {
    fn of(inp: &RefInputs, p: &RefParams) -> Self {
        let t = reference::readout_terms(inp, p);
        let rows = t.den.len();
        let norm = p.variant.normalizes();
        let kappa_n = |r: usize, top: f64| if norm { (top / t.den[r]).max(1.0) } else { 0.0 };
        Conditioning {
            kappa_c: (0..rows)
                .map(|r| (t.cq_norm[r] / t.num_norm[r]).max(1.0))
                .collect(),
            kappa_n: (0..rows).map(|r| kappa_n(r, t.nq_norm[r])).collect(),
            kappa_n_worst: (0..rows)
                .map(|r| kappa_n(r, t.n_norm[r] * t.q_norm[r]))
                .collect(),
        }
    }
}

/// Bound on the relative error of one row of h: the output rounding of the input dtype (the
/// forward's bound) plus the state errors it reads, amplified by the row's conditioning: C̃ in
/// the state dtype, ñ in f32 in every state dtype.
fn h_row_tol(dtype: Dtype, state: Dtype, g: f64, kappa_c: f64, kappa_n: f64) -> f64 {
    fwd_tolerance(dtype) + state_tol(state, g) * kappa_c + state_tol(Dtype::F32, g) * kappa_n
}

/// h against [`h_row_tol`] row by row.
struct HCheck {
    /// Largest error / bound over the rows: ≤ 1 passes.
    worst_ratio: f64,
    /// Error and bound of that row.
    worst_err: f64,
    worst_bound: f64,
    /// The rows' bounds in root mean square weighted by ‖h_row‖², which bounds the relative
    /// error of all of h (`rel_err`) once every row is within its bound.
    bound: f64,
    /// Largest relative error of a row (whatever its bound).
    largest_err: f64,
}

fn check_h(
    got: &[f32],
    want: &[f64],
    dhv: usize,
    cond: &Conditioning,
    tol: impl Fn(f64, f64) -> f64,
) -> HCheck {
    let mut out = HCheck {
        worst_ratio: 0.0,
        worst_err: 0.0,
        worst_bound: 0.0,
        bound: 0.0,
        largest_err: 0.0,
    };
    let (mut num, mut den) = (0.0, 0.0);
    for (r, (g, w)) in got
        .chunks_exact(dhv)
        .zip(want.chunks_exact(dhv))
        .enumerate()
    {
        let (err, bound) = (rel_err(g, w), tol(cond.kappa_c[r], cond.kappa_n[r]));
        // A NaN (an output NaN against an infinite bound) fails.
        let ratio = if (err / bound).is_nan() {
            f64::INFINITY
        } else {
            err / bound
        };
        if ratio > out.worst_ratio || r == 0 {
            (out.worst_ratio, out.worst_err, out.worst_bound) = (ratio, err, bound);
        }
        out.largest_err = out.largest_err.max(err);
        let w2 = w.iter().map(|x| x * x).sum::<f64>();
        (num, den) = (num + bound * bound * w2, den + w2);
    }
    out.bound = (num / den.max(f64::MIN_POSITIVE)).sqrt();
    out
}

/// Largest and median of `x`.
fn max_median(x: &[f64]) -> (f64, f64) {
    let mut v = x.to_vec();
    v.sort_by(f64::total_cmp);
    (
        v.last().copied().unwrap_or(0.0),
        v.get(v.len() / 2).copied().unwrap_or(0.0),
    )
}

/// "κ_n max … (median …), κ_C max … (median …)" for a line of output.
fn kappa_text(cond: &Conditioning) -> String {
    let (n, n_med) = max_median(&cond.kappa_n);
    let (c, c_med) = max_median(&cond.kappa_c);
    let (w, w_med) = max_median(&cond.kappa_n_worst);
    format!(
        "κ_n max {n:.0} (median {n_med:.1}; worst case ‖ñ‖‖q̂‖/den max {w:.0}, median {w_med:.1}), \
         κ_C max {c:.0} (median {c_med:.1})"
    )
}

#[derive(Clone, Copy, Debug)]
struct Case {
    shape: Shape,
    variant: Variant,
    dtype: Dtype,
    state: Dtype,
    initial_state: bool,
}

/// What the steps produced: h of every step in (B, NH, S, DHV) order, and the final states.
struct Stepped {
    h: Vec<f32>,
    c: Vec<f32>,
    n: Vec<f32>,
    m: Vec<f32>,
}

/// Token t of every head of a (B, NH, S, D) tensor, as (B, NH, D).
fn token(x: &[f64], shape: Shape, d: usize, t: usize) -> Vec<f32> {
    (0..shape.heads())
        .flat_map(|h| to_f32(&x[(h * shape.s + t) * d..(h * shape.s + t + 1) * d]))
        .collect()
}

/// Step t of every head of a (BH, S, D) array, as (BH, D).
fn at_step<T: Copy>(x: &[T], shape: Shape, d: usize, t: usize) -> Vec<T> {
    (0..shape.heads())
        .flat_map(|h| x[(h * shape.s + t) * d..(h * shape.s + t + 1) * d].to_vec())
        .collect()
}

/// Rounds the initial C̃ to what the states hold (ñ and m are f32 in every state dtype).
fn round_states(inp: &mut RefInputs, state: Dtype) {
    if let Some(c0) = &mut inp.c0 {
        *c0 = round_to(state, c0);
    }
}

/// Runs the S tokens of `inp` through the step kernel, one launch per token, from `inp`'s
/// initial states (or zeros). The tokens are uploaded once, token-major ((S, B, NH, D)), and
/// each launch points at its token (`mlstm_step_raw`), so that long runs (100,000 steps) cost
/// one upload, not one per token; the typed entry (`mlstm_step_into`) is what every other
/// test of this file and the state-pool tests call.
fn run_steps(
    rt: &Runtime,
    inp: &RefInputs,
    variant: Variant,
    dtype: Dtype,
    state: Dtype,
) -> Stepped {
    let Shape { b, nh, s, dqk, dhv } = inp.shape;
    let sh = inp.shape;
    let up = |dt, x: Vec<f32>, shape: &[usize]| Tensor::from_f32_as(rt, dt, &x, shape).unwrap();
    let major = |x: &[f64], d: usize| (0..s).flat_map(|t| token(x, sh, d, t)).collect::<Vec<_>>();
    // Every upload and NaN fill first: they run on the legacy default stream, which the
    // runtime's stream does not wait for, and the states' constructor waits for all of them.
    let q = up(dtype, major(&inp.q, dqk), &[s, b, nh, dqk]);
    let k = up(dtype, major(&inp.k, dqk), &[s, b, nh, dqk]);
    let v = up(dtype, major(&inp.v, dhv), &[s, b, nh, dhv]);
    let i = up(Dtype::F32, major(&inp.i, 1), &[s, b, nh]);
    let f = up(Dtype::F32, major(&inp.f, 1), &[s, b, nh]);
    let mut hs = Tensor::uninit(rt, dtype, &[s, b, nh, dhv]).unwrap();
    hs.fill_nan().unwrap();
    let states = match (&inp.c0, &inp.n0, &inp.m0) {
        (Some(c0), Some(n0), Some(m0)) => StepStates::new(
            rt,
            up(state, to_f32(c0), &[b, nh, dqk, dhv]),
            up(Dtype::F32, to_f32(n0), &[b, nh, dqk]),
            up(Dtype::F32, to_f32(m0), &[b, nh]),
        )
        .unwrap(),
        _ => StepStates::alloc_zeros(rt, b, nh, dqk, dhv, state).unwrap(),
    };
    assert_eq!(states.dtype(), state);
    let cfg = MlstmConfig::new(variant);
    let base = tfla::step_pointers(&StepInputs::new(&q, &k, &v, &i, &f), &states, &hs);
    let (bh, size) = ((b * nh) as u64, dtype.size() as u64);
    let dims = StepDims { b, nh, dqk, dhv };
    for t in 0..s as u64 {
        let ptrs = StepPointers {
            q: base.q + t * bh * dqk as u64 * size,
            k: base.k + t * bh * dqk as u64 * size,
            v: base.v + t * bh * dhv as u64 * size,
            i: base.i + t * bh * 4,
            f: base.f + t * bh * 4,
            h: base.h + t * bh * dhv as u64 * size,
            ..base
        };
        // SAFETY: token t's rows of the (S, B, NH, ·) buffers above (in bounds for t < S;
        // every offset is a whole number of rows of 16·size bytes, or of f32 gates, which is
        // the alignment `params::step::pointers` asks), and the states and zeroed counters of
        // `states`.
        unsafe { tfla::mlstm_step_raw(rt, rt.raw_stream(), &ptrs, dims, dtype, state, &cfg) }
            .unwrap();
    }
    rt.synchronize().unwrap();
    let hs = hs.to_f32_vec().unwrap();
    let mut h = vec![0f32; b * nh * s * dhv];
    for t in 0..s {
        for head in 0..b * nh {
            h[(head * s + t) * dhv..(head * s + t + 1) * dhv]
                .copy_from_slice(&hs[(t * b * nh + head) * dhv..(t * b * nh + head + 1) * dhv]);
        }
    }
    Stepped {
        h,
        c: states.c.to_f32_vec().unwrap(),
        n: states.n.to_f32_vec().unwrap(),
        m: states.m.to_f32_vec().unwrap(),
    }
}

/// Errors of a stepped run against the reference: [relative error of h over all steps (the
/// forward tests' measure), relative error of the final C̃ and ñ, largest absolute error of the
/// final m].
fn errors(got: &Stepped, want: &reference::RefOutputs, variant: Variant) -> [f64; 3] {
    let h = rel_err(&got.h, &want.h);
    let mut state = rel_err(&got.c, &want.c);
    if variant.normalizes() {
        // Without the normalizer the kernel neither reads nor writes ñ.
        state = state.max(rel_err(&got.n, &want.n));
    }
    let m = got
        .m
        .iter()
        .zip(&want.m)
        .map(|(&g, &w)| {
            if g.is_finite() {
                (g as f64 - w).abs()
            } else {
                f64::INFINITY
            }
        })
        .fold(0.0, f64::max);
    [h, state, m]
}

/// Runs `case` on `inp` (rounded here to the case's dtypes) and checks it against the
/// reference; returns whether it passed.
fn check(rt: &Runtime, case: Case, inp: &mut RefInputs, label: &str) -> bool {
    round_inputs(inp, case.dtype);
    round_states(inp, case.state);
    let got = run_steps(rt, inp, case.variant, case.dtype, case.state);
    let p = RefParams::new(case.variant, case.shape.dqk);
    let want = reference::recurrent(inp, &p);
    let cond = Conditioning::of(inp, &p);
    let [h, st, m] = errors(&got, &want, case.variant);
    let g = memory(inp);
    let hc = check_h(&got.h, &want.h, case.shape.dhv, &cond, |kc, kn| {
        h_row_tol(case.dtype, case.state, g, kc, kn)
    });
    let st_bound = state_tol(case.state, g);
    // m is a running max of sums of f32 gates: each step adds the gates' error and one f32
    // rounding of m itself.
    let m_max = want.m.iter().fold(1.0f64, |a, &x| a.max(x.abs()));
    let m_bound = (1e-5 + F32_GATE_ERR * case.shape.s as f64) * m_max;
    let ok = hc.worst_ratio <= 1.0 && st <= st_bound && m <= m_bound;
    eprintln!(
        "{} {label} {case:?} (G = {g:.1}): h {h:.2e} (≤ {:.1e}), rows of h within \
         {:.0}% of their bounds (worst {:.2e} ≤ {:.1e}; largest {:.2e}), {}; states {st:.2e} \
         (≤ {st_bound:.1e}), m {m:.1e}",
        if ok { "ok  " } else { "FAIL" },
        hc.bound,
        100.0 * hc.worst_ratio,
        hc.worst_err,
        hc.worst_bound,
        hc.largest_err,
        kappa_text(&cond),
    );
    ok
}

fn run(cases: &[Case], name: &str) {
    let rt = runtime();
    let mut rng = rng(name);
    let mut failures = Vec::new();
    for &case in cases {
        let mut inp = RefInputs::random(case.shape, case.initial_state, &mut rng);
        if !check(&rt, case, &mut inp, "") {
            failures.push(case);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases over tolerance: {failures:?}",
        failures.len(),
        cases.len()
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU (compute capability 8.0 or later); run with --include-ignored"]
fn step_matches_reference_all_variants_dtypes_and_state_dtypes() {
    let mut cases = Vec::new();
    for variant in VARIANTS {
        for dtype in [Dtype::Bf16, Dtype::F16, Dtype::F32] {
            for state in [Dtype::F32, Dtype::Bf16] {
                // Two column tiles, DQK ≠ DHV, random initial states.
                cases.push(Case {
                    shape: shape(1, 3, 20, 64, 128),
                    variant,
                    dtype,
                    state,
                    initial_state: true,
                });
                // DHV = 48: one ragged tile; zero initial states (m = 0).
                cases.push(Case {
                    shape: shape(2, 1, 12, 128, 48),
                    variant,
                    dtype,
                    state,
                    initial_state: false,
                });
            }
        }
    }
    run(
        &cases,
        "step_matches_reference_all_variants_dtypes_and_state_dtypes",
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU (compute capability 8.0 or later); run with --include-ignored"]
fn step_head_dims_and_ragged_tiles() {
    let mut cases = Vec::new();
    // (DQK, DHV): the smallest and largest head dims, DHV = 80 and 144 (a 16-column last
    // tile), DQK not a multiple of the 128-row pass, and the benchmark's 256 × 512 at
    // B·NH = 64 (512 blocks: eight column tiles per head race for ñ and m).
    let dims = [
        (1, 2, 16, 16),
        (1, 2, 48, 80),
        (1, 2, 208, 144),
        (1, 1, 512, 512),
        (1, 2, 512, 16),
        (1, 2, 16, 512),
        (1, 1, 336, 272),
        (8, 8, 256, 512),
    ];
    for (b, nh, dqk, dhv) in dims {
        let steps = if b * nh > 8 { 4 } else { 10 };
        for (variant, dtype) in [
            (EXP, Dtype::Bf16),
            (SIG, Dtype::F32),
            (SIG_NONORM, Dtype::F16),
        ] {
            for state in [Dtype::F32, Dtype::Bf16] {
                cases.push(Case {
                    shape: shape(b, nh, steps, dqk, dhv),
                    variant,
                    dtype,
                    state,
                    initial_state: true,
                });
            }
        }
    }
    run(&cases, "step_head_dims_and_ragged_tiles");
}

#[test]
#[ignore = "needs an NVIDIA GPU (compute capability 8.0 or later); run with --include-ignored"]
fn step_hard_gate_regimes() {
    let rt = runtime();
    let mut rng = rng("step_hard_gate_regimes");
    let mut failures = Vec::new();
    for variant in [EXP, SIG] {
        for (label, gate) in HARD_GATES {
            for state in [Dtype::F32, Dtype::Bf16] {
                let case = Case {
                    shape: shape(1, 2, 48, 64, 80),
                    variant,
                    dtype: Dtype::Bf16,
                    state,
                    initial_state: true,
                };
                let mut inp = RefInputs::random(case.shape, true, &mut rng);
                for (t, (i, f)) in inp.i.iter_mut().zip(inp.f.iter_mut()).enumerate() {
                    (*i, *f) = gate(t % case.shape.s);
                }
                if !check(&rt, case, &mut inp, label) {
                    failures.push(format!("{label} {variant:?} {state:?}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "over tolerance: {failures:?}");
}

#[test]
#[ignore = "needs an NVIDIA GPU (compute capability 8.0 or later); run with --include-ignored"]
fn bf16_states_accuracy_over_1000_steps() {
    states_accuracy(
        "bf16_states_accuracy_over_1000_steps",
        shape(1, 4, 1000, 64, 64),
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU (compute capability 8.0 or later); run with --include-ignored"]
fn bf16_states_drift_over_100000_steps() {
    // Generation far past any training context: the state error must stay at the random-walk
    // model's √G, set by the memory G of the forget gates, not grow with the step count.
    states_accuracy(
        "bf16_states_drift_over_100000_steps",
        shape(1, 2, 100_000, 64, 64),
    );
}

/// The accuracy cost of bf16 states: f32 inputs (so only the state dtype differs), S steps,
/// errors of h and of the final states against float64 for both state dtypes, printed next to
/// the model u/√3·√G (README, `tfla::step`).
fn states_accuracy(test: &str, sh: Shape) {
    let rt = runtime();
    let mut rng = rng(test);
    let mut failures = Vec::new();
    // (label, forget-gate pre-activation): the random inputs' gates (mostly open, a reset
    // every ~10 steps), and long memory (σ(f̃) ∈ [0.993, 0.9999], no resets).
    type Forget = Option<fn(&mut rand::rngs::StdRng) -> f64>;
    let regimes: [(&str, Forget); 2] = [
        ("random gates", None),
        ("long memory", Some(|r| rand::Rng::gen_range(r, 5.0..9.0))),
    ];
    for variant in [EXP, SIG] {
        for (label, forget) in regimes {
            let mut inp = RefInputs::random(sh, true, &mut rng);
            if let Some(forget) = forget {
                inp.f.iter_mut().for_each(|f| *f = forget(&mut rng));
            }
            round_inputs(&mut inp, Dtype::F32);
            round_states(&mut inp, Dtype::Bf16); // both runs start from the same states
            let p = RefParams::new(variant, sh.dqk);
            let want = reference::recurrent(&inp, &p);
            let cond = Conditioning::of(&inp, &p);
            let g = memory(&inp);
            let mut line = format!(
                "{variant:?}, {label}, G = {g:.0}, model u/√3·√G = {:.1e}, {}:",
                BF16_U / 3f64.sqrt() * g.sqrt(),
                kappa_text(&cond)
            );
            let mut last_h = Vec::new();
            for state in [Dtype::F32, Dtype::Bf16] {
                let got = run_steps(&rt, &inp, variant, Dtype::F32, state);
                let [h, st, m] = errors(&got, &want, variant);
                let hc = check_h(&got.h, &want.h, sh.dhv, &cond, |kc, kn| {
                    h_row_tol(Dtype::F32, state, g, kc, kn)
                });
                let h_last = rel_err(
                    &at_step(&got.h, sh, sh.dhv, sh.s - 1),
                    &at_step(&want.h, sh, sh.dhv, sh.s - 1),
                );
                let c = rel_err(&got.c, &want.c);
                let n = rel_err(&got.n, &want.n);
                line += &format!(
                    " [{} states: h {h:.2e} (≤ {:.1e}; rows within {:.0}% of their bounds, \
                     worst {:.2e} ≤ {:.1e}; largest row {:.2e}; last step {h_last:.2e}), \
                     C {c:.2e}, n {n:.2e} (≤ {:.1e}), m {m:.1e}]",
                    state.name(),
                    hc.bound,
                    100.0 * hc.worst_ratio,
                    hc.worst_err,
                    hc.worst_bound,
                    hc.largest_err,
                    state_tol(state, g),
                );
                if !(hc.worst_ratio <= 1.0 && st <= state_tol(state, g)) {
                    failures.push(format!("{variant:?} {label} {state:?}"));
                }
                last_h.push(got.h);
            }
            let f64s: Vec<f64> = last_h[0].iter().map(|&x| x as f64).collect();
            line += &format!(" bf16 vs f32 states, h: {:.2e}", rel_err(&last_h[1], &f64s));
            eprintln!("{line}");
        }
    }
    assert!(
        failures.is_empty(),
        "over the bounds (states: 2u√G or the f32 tolerance; rows of h: that times their \
         conditioning, plus the output rounding): {failures:?}"
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU (compute capability 8.0 or later); run with --include-ignored"]
fn prefill_with_forward_then_steps_equals_one_forward() {
    // The chunkwise forward over S tokens, its final states into StepStates, then T steps:
    // h of the stepped tokens and the final states equal one forward over S + T tokens.
    let rt = runtime();
    let mut rng = rng("prefill_with_forward_then_steps_equals_one_forward");
    let (s, t) = (130, 20);
    let (b, nh, dqk, dhv) = (1, 2, 64, 80);
    let mut failures = Vec::new();
    let mut cases = Vec::new();
    for variant in VARIANTS {
        for dtype in [Dtype::Bf16, Dtype::F16, Dtype::F32] {
            cases.push((variant, dtype, Dtype::F32));
        }
        cases.push((variant, Dtype::Bf16, Dtype::Bf16));
    }
    for (variant, dtype, state) in cases {
        let mut whole = RefInputs::random(shape(b, nh, s + t, dqk, dhv), true, &mut rng);
        round_inputs(&mut whole, dtype);
        let cut = |lo: usize, hi: usize, d: usize, x: &[f64]| -> Vec<f64> {
            (0..b * nh)
                .flat_map(|h| x[(h * (s + t) + lo) * d..(h * (s + t) + hi) * d].to_vec())
                .collect()
        };
        let part = |lo: usize, hi: usize| RefInputs {
            shape: shape(b, nh, hi - lo, dqk, dhv),
            q: cut(lo, hi, dqk, &whole.q),
            k: cut(lo, hi, dqk, &whole.k),
            v: cut(lo, hi, dhv, &whole.v),
            i: cut(lo, hi, 1, &whole.i),
            f: cut(lo, hi, 1, &whole.f),
            c0: None,
            n0: None,
            m0: None,
        };
        let mut prefill = part(0, s);
        (prefill.c0, prefill.n0, prefill.m0) =
            (whole.c0.clone(), whole.n0.clone(), whole.m0.clone());
        let cfg = MlstmConfig::new(variant).with_chunk_size(64);
        let dev_whole = upload(&rt, &whole, dtype);
        let dev_prefill = upload(&rt, &prefill, dtype);
        let out_whole = tfla::mlstm_fwd(&rt, &dev_whole.as_inputs(), &cfg).unwrap();
        let out_prefill = tfla::mlstm_fwd(&rt, &dev_prefill.as_inputs(), &cfg).unwrap();
        // The T tokens, uploaded before the states are made (their constructor waits for the
        // uploads, which run on the legacy default stream), then stepped.
        let rest = part(s, s + t);
        let sh = rest.shape;
        let up =
            |dt, x: Vec<f32>, shape: &[usize]| Tensor::from_f32_as(&rt, dt, &x, shape).unwrap();
        let tokens: Vec<[Tensor; 5]> = (0..t)
            .map(|j| {
                [
                    up(dtype, token(&rest.q, sh, dqk, j), &[b, nh, dqk]),
                    up(dtype, token(&rest.k, sh, dqk, j), &[b, nh, dqk]),
                    up(dtype, token(&rest.v, sh, dhv, j), &[b, nh, dhv]),
                    up(Dtype::F32, token(&rest.i, sh, 1, j), &[b, nh]),
                    up(Dtype::F32, token(&rest.f, sh, 1, j), &[b, nh]),
                ]
            })
            .collect();
        let mut states = StepStates::from_forward(&rt, out_prefill, state).unwrap();
        let hs: Vec<Tensor> = tokens
            .iter()
            .map(|x| {
                let inputs = StepInputs::new(&x[0], &x[1], &x[2], &x[3], &x[4]);
                tfla::mlstm_step(&rt, &inputs, &mut states, &cfg).unwrap()
            })
            .collect();
        rt.synchronize().unwrap();
        let h_steps: Vec<Vec<f32>> = hs.iter().map(|h| h.to_f32_vec().unwrap()).collect();
        // (T, BH, DHV) → (BH, T, DHV), as the forward's rows S..S+T.
        let h_stepped: Vec<f32> = (0..b * nh)
            .flat_map(|head| {
                h_steps
                    .iter()
                    .flat_map(move |x| x[head * dhv..(head + 1) * dhv].to_vec())
                    .collect::<Vec<_>>()
            })
            .collect();
        let h_fwd = cut(s, s + t, dhv, &to_f64(&out_whole.h));
        let h_err = rel_err(&h_stepped, &h_fwd);
        let c_err = rel_err(&states.c.to_f32_vec().unwrap(), &to_f64(&out_whole.c));
        let n_err = if variant.normalizes() {
            rel_err(&states.n.to_f32_vec().unwrap(), &to_f64(&out_whole.n))
        } else {
            0.0
        };
        let m_err = states
            .m
            .to_f32_vec()
            .unwrap()
            .iter()
            .zip(to_f64(&out_whole.m))
            .map(|(&g, w)| (g as f64 - w).abs())
            .fold(0.0, f64::max);
        // Against float64, for the record.
        let want = reference::recurrent(&whole, &RefParams::new(variant, dqk));
        let ref_err = rel_err(&h_stepped, &cut(s, s + t, dhv, &want.h));
        // Both sides hold the forward's error (the prefill's states, the whole run's h); the
        // steps add the output rounding and, with bf16 states, the state rounding over T steps.
        let g = memory(&rest);
        let tol = match state {
            Dtype::Bf16 => fwd_tolerance(dtype) + 2.0 * BF16_U * g.sqrt(),
            _ => fwd_tolerance(dtype),
        };
        // m: the forward sums the gates per chunk, the steps one by one (f32 rounding of sums
        // up to ~100), compared absolutely as the forward test compares its chunk max states.
        let ok = h_err <= tol && c_err <= tol && n_err <= tol && m_err <= 1e-3;
        eprintln!(
            "{} {variant:?} {dtype:?} states {state:?}: stepped h vs forward {h_err:.2e}, \
             C {c_err:.2e}, n {n_err:.2e}, m {m_err:.1e} (tolerance {tol:.1e}); stepped h vs \
             float64 {ref_err:.2e}",
            if ok { "ok  " } else { "FAIL" }
        );
        if !ok {
            failures.push(format!("{variant:?} {dtype:?} {state:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "prefill + steps differ from one forward: {failures:?}"
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU (compute capability 8.0 or later); run with --include-ignored"]
fn step_runs_64_heads_in_one_wave() {
    // The premise of the kernel's shape (`params::step`): every entry as the driver compiled it
    // keeps four blocks per SM, so B·NH = 64 at DQK = 256, DHV = 512 (512 blocks) fits one wave
    // on a device of 128 SMs or more.
    let rt = runtime();
    let dims = tfla::StepDims {
        b: 8,
        nh: 8,
        dqk: 256,
        dhv: 512,
    };
    let mut failures = Vec::new();
    for variant in VARIANTS {
        for dtype in [Dtype::Bf16, Dtype::F16, Dtype::F32] {
            for state in [Dtype::F32, Dtype::Bf16] {
                let o = tfla::step::step_occupancy(&rt, dims, dtype, state, variant).unwrap();
                eprintln!(
                    "{variant:?} {dtype:?} states {state:?}: {} registers, {} blocks/SM × {} SMs, \
                     {} blocks = {:.2} waves",
                    o.registers,
                    o.blocks_per_sm,
                    o.sms,
                    o.blocks,
                    o.waves()
                );
                if o.blocks_per_sm < 4 || (o.sms >= 128 && o.waves() > 1.0) {
                    failures.push(format!("{variant:?} {dtype:?} {state:?}: {o:?}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "more than one wave: {failures:?}");
}

#[test]
#[ignore = "needs an NVIDIA GPU (compute capability 8.0 or later); run with --include-ignored"]
fn step_bad_arguments_get_typed_errors() {
    use tfla::Error;
    let rt = runtime();
    let t = |dt, shape: &[usize]| Tensor::zeros(&rt, dt, shape).unwrap();
    let (b, nh, dqk, dhv) = (2, 3, 64, 32);
    let (q, k, v) = (
        t(Dtype::Bf16, &[b, nh, dqk]),
        t(Dtype::Bf16, &[b, nh, dqk]),
        t(Dtype::Bf16, &[b, nh, dhv]),
    );
    let (i, f) = (t(Dtype::F32, &[b, nh]), t(Dtype::F32, &[b, nh]));
    let cfg = MlstmConfig::new(EXP);
    let ok = StepInputs::new(&q, &k, &v, &i, &f);
    let mut states = StepStates::alloc_zeros(&rt, b, nh, dqk, dhv, Dtype::F32).unwrap();
    assert!(tfla::mlstm_step(&rt, &ok, &mut states, &cfg).is_ok());
    let mut step = |inputs: &StepInputs| tfla::mlstm_step(&rt, inputs, &mut states, &cfg);

    let q2 = t(Dtype::Bf16, &[b, dqk]);
    let e = step(&StepInputs { q: &q2, ..ok }).unwrap_err();
    assert!(matches!(e, Error::Invalid { arg: "q", .. }), "{e}");
    let k_bad = t(Dtype::Bf16, &[b, nh, dqk + 16]);
    let e = step(&StepInputs { k: &k_bad, ..ok }).unwrap_err();
    assert!(matches!(e, Error::Shape { arg: "k", .. }), "{e}");
    let v_f16 = t(Dtype::F16, &[b, nh, dhv]);
    let e = step(&StepInputs { v: &v_f16, ..ok }).unwrap_err();
    assert!(matches!(e, Error::Dtype { arg: "v", .. }), "{e}");
    let i_bf16 = t(Dtype::Bf16, &[b, nh]);
    let e = step(&StepInputs { i: &i_bf16, ..ok }).unwrap_err();
    assert!(matches!(e, Error::Dtype { arg: "i", .. }), "{e}");
    let f3 = t(Dtype::F32, &[b, nh, 1]);
    let e = step(&StepInputs { f: &f3, ..ok }).unwrap_err();
    assert!(matches!(e, Error::Shape { arg: "f", .. }), "{e}");
    let (q40, k40) = (t(Dtype::Bf16, &[b, nh, 40]), t(Dtype::Bf16, &[b, nh, 40]));
    let e = step(&StepInputs {
        q: &q40,
        k: &k40,
        ..ok
    })
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::HeadDim {
                arg: "DQK",
                value: 40
            }
        ),
        "{e}"
    );
    // States of other dimensions than the inputs.
    let (q32, k32) = (t(Dtype::Bf16, &[b, nh, 32]), t(Dtype::Bf16, &[b, nh, 32]));
    let e = step(&StepInputs {
        q: &q32,
        k: &k32,
        ..ok
    })
    .unwrap_err();
    assert!(matches!(e, Error::Shape { arg: "c", .. }), "{e}");

    // States: f16 C̃, ñ or m not f32.
    let e = StepStates::alloc_zeros(&rt, b, nh, dqk, dhv, Dtype::F16).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Dtype {
                arg: "state_dtype",
                ..
            }
        ),
        "{e}"
    );
    let e = StepStates::new(
        &rt,
        t(Dtype::F16, &[b, nh, dqk, dhv]),
        t(Dtype::F32, &[b, nh, dqk]),
        t(Dtype::F32, &[b, nh]),
    )
    .unwrap_err();
    assert!(matches!(e, Error::Dtype { arg: "c", .. }), "{e}");
    let e = StepStates::new(
        &rt,
        t(Dtype::Bf16, &[b, nh, dqk, dhv]),
        t(Dtype::Bf16, &[b, nh, dqk]),
        t(Dtype::F32, &[b, nh]),
    )
    .unwrap_err();
    assert!(matches!(e, Error::Dtype { arg: "n", .. }), "{e}");
    let e = StepStates::new(
        &rt,
        t(Dtype::Bf16, &[b, nh, dqk, dhv]),
        t(Dtype::F32, &[b, nh, dqk]),
        t(Dtype::Bf16, &[b, nh]),
    )
    .unwrap_err();
    assert!(matches!(e, Error::Dtype { arg: "m", .. }), "{e}");
    let e = StepStates::new(
        &rt,
        t(Dtype::F32, &[b, nh, dqk, dhv]),
        t(Dtype::F32, &[b, nh, dqk + 16]),
        t(Dtype::F32, &[b, nh]),
    )
    .unwrap_err();
    assert!(matches!(e, Error::Shape { arg: "n", .. }), "{e}");

    // h: shape and dtype.
    let mut states = StepStates::alloc_zeros(&rt, b, nh, dqk, dhv, Dtype::Bf16).unwrap();
    let mut h_bad = t(Dtype::Bf16, &[b, nh, dhv + 16]);
    let e = tfla::mlstm_step_into(&rt, &ok, &mut states, &cfg, &mut h_bad).unwrap_err();
    assert!(matches!(e, Error::Shape { arg: "h", .. }), "{e}");
    let mut h_f32 = t(Dtype::F32, &[b, nh, dhv]);
    let e = tfla::mlstm_step_into(&rt, &ok, &mut states, &cfg, &mut h_f32).unwrap_err();
    assert!(matches!(e, Error::Dtype { arg: "h", .. }), "{e}");
    let bad_eps = MlstmConfig { eps: -1.0, ..cfg };
    let e = tfla::mlstm_step(&rt, &ok, &mut states, &bad_eps).unwrap_err();
    assert!(matches!(e, Error::Invalid { arg: "eps", .. }), "{e}");

    // Raw entry point: misaligned and null pointers, a state dtype that does not exist.
    let h = t(Dtype::Bf16, &[b, nh, dhv]);
    let dims = ok.dims().unwrap();
    let good = tfla::step_pointers(&ok, &states, &h);
    let raw = |ptrs: &tfla::StepPointers, state| {
        // SAFETY: every call below is rejected before a launch.
        unsafe { tfla::mlstm_step_raw(&rt, rt.raw_stream(), ptrs, dims, Dtype::Bf16, state, &cfg) }
            .unwrap_err()
    };
    let e = raw(
        &tfla::StepPointers {
            c: good.c + 8,
            ..good
        },
        Dtype::Bf16,
    );
    assert!(matches!(e, Error::Invalid { arg: "c", .. }), "{e}");
    let e = raw(
        &tfla::StepPointers {
            v: good.v + 2,
            ..good
        },
        Dtype::Bf16,
    );
    assert!(matches!(e, Error::Invalid { arg: "v", .. }), "{e}");
    let e = raw(
        &tfla::StepPointers {
            tiles_done: 0,
            ..good
        },
        Dtype::Bf16,
    );
    assert!(
        matches!(
            e,
            Error::Invalid {
                arg: "tiles_done",
                ..
            }
        ),
        "{e}"
    );
    let e = raw(&good, Dtype::F16);
    assert!(
        matches!(
            e,
            Error::Dtype {
                arg: "state_dtype",
                ..
            }
        ),
        "{e}"
    );
    // The valid call still works after the rejected ones (nothing was launched).
    assert!(tfla::mlstm_step(&rt, &ok, &mut states, &cfg).is_ok());
    rt.synchronize().unwrap();
}

#[test]
#[ignore = "needs an NVIDIA GPU (compute capability 8.0 or later); run with --include-ignored"]
fn step_on_a_state_pool_equals_separate_states_bit_exact() {
    // A pool of 5 slots with random states, B = 2 rows on slots [3, 1], 4 steps: every h equals
    // the same steps on separate StepStates holding those slots' states, slots 3 and 1 end equal
    // to the separate states and the other slots are untouched (bit-exact: the same kernel, the
    // same arithmetic, only the state addresses differ). Then bad slots: typed errors, nothing
    // written.
    use tfla::{Error, Slots, StatePool};
    let rt = runtime();
    let mut rng = rng("step_on_a_state_pool_equals_separate_states_bit_exact");
    let (num_slots, b, nh, dqk, dhv, steps) = (5usize, 2usize, 3usize, 64usize, 96usize, 4);
    let ids = [3u32, 1];
    let bits = |t: &Tensor| -> Vec<u32> {
        rt.synchronize().unwrap();
        t.to_f32_vec()
            .unwrap()
            .into_iter()
            .map(f32::to_bits)
            .collect()
    };
    for variant in VARIANTS {
        let mut rand = |n: usize, s: f64| -> Vec<f32> {
            (0..n).map(|_| (s * normal(&mut rng)) as f32).collect()
        };
        let (cs, ns) = (nh * dqk * dhv, nh * dqk);
        let (c0, n0, m0) = (
            rand(num_slots * cs, 1.0),
            rand(num_slots * ns, 1.0),
            rand(num_slots * nh, 0.5),
        );
        let up = |x: &[f32], shape: &[usize]| Tensor::from_f32(&rt, x, shape).unwrap();
        let mut pool = StatePool::new(
            up(&c0, &[num_slots, nh, dqk, dhv]),
            up(&n0, &[num_slots, nh, dqk]),
            up(&m0, &[num_slots, nh]),
        )
        .unwrap();
        // The slots' states, row by row.
        let rows = |x: &[f32], per: usize| -> Vec<f32> {
            ids.iter()
                .flat_map(|&s| x[s as usize * per..(s as usize + 1) * per].to_vec())
                .collect()
        };
        let mut states = StepStates::new(
            &rt,
            up(&rows(&c0, cs), &[b, nh, dqk, dhv]),
            up(&rows(&n0, ns), &[b, nh, dqk]),
            up(&rows(&m0, nh), &[b, nh]),
        )
        .unwrap();
        let slots = Slots::new(&rt, &ids).unwrap();
        let cfg = MlstmConfig::new(variant);
        for t in 0..steps {
            let x = |dt, data: Vec<f32>, shape: &[usize]| {
                Tensor::from_f32_as(&rt, dt, &data, shape).unwrap()
            };
            let q = x(Dtype::Bf16, rand(b * nh * dqk, 1.0), &[b, nh, dqk]);
            let k = x(Dtype::Bf16, rand(b * nh * dqk, 1.0), &[b, nh, dqk]);
            let v = x(Dtype::Bf16, rand(b * nh * dhv, 1.0), &[b, nh, dhv]);
            let i = x(Dtype::F32, rand(b * nh, 1.0), &[b, nh]);
            let f = x(Dtype::F32, rand(b * nh, 2.0), &[b, nh]);
            let inputs = StepInputs::new(&q, &k, &v, &i, &f);
            let mut h_pool = x(Dtype::Bf16, vec![f32::NAN; b * nh * dhv], &[b, nh, dhv]);
            tfla::mlstm_step_pool_into(&rt, &inputs, &mut pool, &slots, &cfg, &mut h_pool).unwrap();
            let h_sep = tfla::mlstm_step(&rt, &inputs, &mut states, &cfg).unwrap();
            assert!(
                bits(&h_pool) == bits(&h_sep),
                "{variant:?} step {t}: h on the pool differs from h on separate states"
            );
        }
        // Slots 3 and 1 hold the separate states; the others their initial states.
        for (name, pooled, sep, init, per) in [
            ("c", &pool.c, &states.c, &c0, cs),
            ("n", &pool.n, &states.n, &n0, ns),
            ("m", &pool.m, &states.m, &m0, nh),
        ] {
            let (got, sep) = (bits(pooled), bits(sep));
            for slot in 0..num_slots {
                let want = match ids.iter().position(|&s| s as usize == slot) {
                    Some(row) => sep[row * per..(row + 1) * per].to_vec(),
                    None => init[slot * per..(slot + 1) * per]
                        .iter()
                        .map(|x| x.to_bits())
                        .collect(),
                };
                assert!(
                    got[slot * per..(slot + 1) * per] == want[..],
                    "{variant:?}: pool.{name} slot {slot} differs"
                );
            }
        }

        // Bad slots: typed errors before launch; neither the pool nor h is written.
        let before = [bits(&pool.c), bits(&pool.n), bits(&pool.m)];
        let z = |dt, shape: &[usize]| Tensor::zeros(&rt, dt, shape).unwrap();
        let (q, k, v) = (
            z(Dtype::Bf16, &[b, nh, dqk]),
            z(Dtype::Bf16, &[b, nh, dqk]),
            z(Dtype::Bf16, &[b, nh, dhv]),
        );
        let (i, f) = (z(Dtype::F32, &[b, nh]), z(Dtype::F32, &[b, nh]));
        let inputs = StepInputs::new(&q, &k, &v, &i, &f);
        let mut h =
            Tensor::from_f32_as(&rt, Dtype::Bf16, &vec![7.0; b * nh * dhv], &[b, nh, dhv]).unwrap();
        let h_before = bits(&h);
        for bad in [&[1u32, 1][..], &[3, 5], &[0, 9], &[3]] {
            let bad_slots = Slots::new(&rt, bad).unwrap();
            let e = tfla::mlstm_step_pool_into(&rt, &inputs, &mut pool, &bad_slots, &cfg, &mut h)
                .unwrap_err();
            let want = if bad.len() == b {
                matches!(e, Error::Invalid { arg: "slots", .. })
            } else {
                matches!(e, Error::Shape { arg: "slots", .. })
            };
            assert!(want, "{variant:?}: slots {bad:?}: {e}");
            let e = tfla::mlstm_step_pool(&rt, &inputs, &mut pool, &bad_slots, &cfg).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::Invalid { arg: "slots", .. } | Error::Shape { arg: "slots", .. }
                ),
                "{variant:?}: slots {bad:?}: {e}"
            );
        }
        assert!(bits(&h) == h_before, "{variant:?}: h written on an error");
        let after = [bits(&pool.c), bits(&pool.n), bits(&pool.m)];
        assert!(
            after == before,
            "{variant:?}: the pool was written on an error"
        );
        // Pools are f32: a bf16 C̃ swapped in is rejected.
        pool.c = z(Dtype::Bf16, &[num_slots, nh, dqk, dhv]);
        let e = tfla::mlstm_step_pool(&rt, &inputs, &mut pool, &slots, &cfg).unwrap_err();
        assert!(matches!(e, Error::Dtype { arg: "pool.c", .. }), "{e}");
    }
}
