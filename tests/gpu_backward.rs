//! The backward kernels on the GPU against the float64 stepwise backward
//! (`reference::backward`): fresh random inputs and upstream gradients per case, gradients and
//! workspace poisoned with NaN before each launch, both gradient modes, every variant, both
//! 16-bit dtypes, ragged shapes, DQK ≠ DHV, chunk sizes, initial states and final-state
//! gradients given or not, hard gate regimes, a long sequence, state passing, typed errors.
//!
//! These tests need an NVIDIA GPU (8.0 or later; Hopper runs the sm_90a module, TFLA_PORTABLE=1
//! the sm_80 one): they are `#[ignore]`d so a machine without one
//! reports them as ignored; run them with `cargo test -- --include-ignored` (there a missing
//! GPU is a failure, see `common::runtime`). Every case prints its measured errors.
mod common;

use common::*;
use tfla::reference::{self, RefGradOutputs, RefGrads, RefInputs, RefParams, Shape};
use tfla::{
    Dtype, GradMode, MlstmConfig, MlstmGradOutputs, MlstmGrads, MlstmInputs, MlstmOutputs, Runtime,
    Variant,
};

const EXP: Variant = Variant::Exp;
const SIG: Variant = Variant::Sig { normalize: true };
const SIG_NONORM: Variant = Variant::Sig { normalize: false };
const VARIANTS: [Variant; 3] = [EXP, SIG, SIG_NONORM];
const MODES: [GradMode; 2] = [GradMode::Exact, GradMode::DetachedNormalizer];
const BF16: Dtype = Dtype::Bf16;
const F16: Dtype = Dtype::F16;
const F32: Dtype = Dtype::F32;

fn shape(b: usize, nh: usize, s: usize, dqk: usize, dhv: usize) -> Shape {
    Shape { b, nh, s, dqk, dhv }
}

/// Gate pre-activations of a case: the random ones of `RefInputs::random`, or a hard regime.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Gates {
    Random,
    /// Forget gates near 0: the state is reset nearly every step.
    ForgetNear0,
    /// Forget gates near 1: long memory, |s| far below ‖ñ‖‖q‖ (the normalizer's hard case).
    ForgetNear1,
    /// Rare input gates large enough to move the max state.
    BigInput,
}

impl Gates {
    /// (ĩ_t, f̃_t) at step t (`HARD_GATES`, shared with the forward and step tests).
    fn at(self, t: usize) -> Option<(f64, f64)> {
        let regime = match self {
            Gates::Random => return None,
            Gates::ForgetNear0 => 0,
            Gates::ForgetNear1 => 1,
            Gates::BigInput => 2,
        };
        Some((HARD_GATES[regime].1)(t))
    }

    fn apply(self, inp: &mut RefInputs) {
        let s = inp.shape.s;
        for (t, (i, f)) in inp.i.iter_mut().zip(inp.f.iter_mut()).enumerate() {
            if let Some(g) = self.at(t % s) {
                (*i, *f) = g;
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Case {
    shape: Shape,
    chunk: usize,
    variant: Variant,
    dtype: Dtype,
    mode: GradMode,
    initial_state: bool,
    final_grads: bool,
    gates: Gates,
}

/// A case with initial states, final-state gradients and random gates.
fn case(shape: Shape, chunk: usize, variant: Variant, dtype: Dtype, mode: GradMode) -> Case {
    Case {
        shape,
        chunk,
        variant,
        dtype,
        mode,
        initial_state: true,
        final_grads: true,
        gates: Gates::Random,
    }
}

impl Case {
    fn without_initial_state(self) -> Self {
        Case {
            initial_state: false,
            ..self
        }
    }
    fn without_final_grads(self) -> Self {
        Case {
            final_grads: false,
            ..self
        }
    }
    fn with_gates(self, gates: Gates) -> Self {
        Case { gates, ..self }
    }
    fn config(&self) -> MlstmConfig {
        MlstmConfig {
            row_stats: true,
            ..MlstmConfig::new(self.variant).with_chunk_size(self.chunk)
        }
    }
}

/// Fresh random inputs (rounded to the device precision) and upstream gradients of `case`.
fn case_data(case: &Case, rng: &mut impl rand::Rng) -> (RefInputs, RefGradOutputs) {
    case_data_with(case, rng, |_| {})
}

/// [`case_data`] with `edit` applied to the random inputs (after the case's gates, before
/// rounding and moving them off the exact gradient's kinks).
fn case_data_with(
    case: &Case,
    rng: &mut impl rand::Rng,
    edit: impl FnOnce(&mut RefInputs),
) -> (RefInputs, RefGradOutputs) {
    let mut inp = RefInputs::random(case.shape, case.initial_state, rng);
    case.gates.apply(&mut inp);
    edit(&mut inp);
    round_inputs(&mut inp, case.dtype);
    if case.mode == GradMode::Exact {
        away_from_kinks(&mut inp, case.variant, case.dtype, rng);
    }
    let g = random_grad_outputs(case.shape, case.variant, case.dtype, case.final_grads, rng);
    (inp, g)
}

/// Fills every gradient and the workspace with NaN, so nothing unwritten (or read before it
/// is written) can pass.
fn poison(grads: &mut MlstmGrads) {
    let ws = &mut grads.workspace;
    let outs = [
        &mut grads.dq,
        &mut grads.dk,
        &mut grads.dv,
        &mut grads.di,
        &mut grads.df,
    ];
    let initial = [&mut grads.dc0, &mut grads.dn0, &mut grads.dm0];
    let scratch = [
        &mut ws.row_coef,
        &mut ws.dc_states,
        &mut ws.dn_states,
        &mut ws.scores_p,
        &mut ws.scores_dp,
        &mut ws.row_dots,
        &mut ws.state_dots,
        &mut ws.pair_sums,
        &mut ws.segments,
    ];
    outs.into_iter()
        .chain(initial.into_iter().flatten())
        .chain(scratch)
        .for_each(|t| t.fill_nan().unwrap());
}

/// The reference gradients of a case: those of `inp` and `g`, of [`SAMPLES`] copies of both
/// moved by their rounding in a `dtype` kernel, and in Exact mode (normalized variants) the
/// detached-normalizer gradients of the same, whose differences to the Exact ones are the terms
/// through the normalizer.
struct ReferenceGrads {
    want: RefGrads,
    samples: Vec<RefGrads>,
    detached: Option<(RefGrads, Vec<RefGrads>)>,
    u: f64,
}

fn reference_grads(
    inp: &RefInputs,
    g: &RefGradOutputs,
    variant: Variant,
    dtype: Dtype,
    mode: GradMode,
    rng: &mut impl rand::Rng,
) -> ReferenceGrads {
    let p = RefParams::new(variant, inp.shape.dqk);
    let split = mode == GradMode::Exact && variant.normalizes();
    let draws: Vec<_> = (0..SAMPLES)
        .map(|_| {
            (
                perturbed_inputs(inp, dtype, rng),
                perturbed_grad_outputs(g, dtype, rng),
            )
        })
        .collect();
    let run = |mode| -> (RefGrads, Vec<RefGrads>) {
        let samples = draws
            .iter()
            .map(|(x, dy)| reference::backward(x, &p, dy, mode))
            .collect();
        (reference::backward(inp, &p, g, mode), samples)
    };
    let (want, samples) = run(mode);
    ReferenceGrads {
        want,
        samples,
        detached: split.then(|| run(GradMode::DetachedNormalizer)),
        u: unit_roundoff(dtype),
    }
}

/// A gradient's name, where [`RefGrads`] holds it, and its row length.
type GradRows = (&'static str, fn(&RefGrads) -> &[f64], usize);

/// Every gradient the kernels returned against its bound from the case's conditioning
/// ([`check_rows`]): dq, dk, dv, dC̃_0 and dñ_0 row by row; dĩ and df̃ (one number per step)
/// one row per head; dm_0 (one per head) as one row. In Exact mode each row also carries the
/// rounding of its two terms, the detached gradient and the term through the normalizer
/// ([`Terms`]): the backward forms the second from the 16-bit h, and where they cancel (the
/// gradient of a row is small beside them) that rounding is the row's error.
fn grad_verdicts(
    got: &dyn Fn(&str) -> Option<Vec<f32>>,
    r: &ReferenceGrads,
    shape: Shape,
) -> Vec<(&'static str, Verdict)> {
    let Shape { s, dqk, dhv, .. } = shape;
    let pick: [GradRows; 8] = [
        ("dq", |g| &g.dq, dqk),
        ("dk", |g| &g.dk, dqk),
        ("dv", |g| &g.dv, dhv),
        ("di", |g| &g.di, s),
        ("df", |g| &g.df, s),
        ("dc0", |g| &g.dc0, dhv),
        ("dn0", |g| &g.dn0, dqk),
        ("dm0", |g| &g.dm0, shape.heads()),
    ];
    pick.into_iter()
        .filter(|&(_, w, per)| per > 0 && !w(&r.want).is_empty())
        .filter_map(|(name, w, per)| {
            let t = got(name)?;
            let samples = views(&r.samples, w);
            let terms = r.detached.as_ref().map(|(d, ds)| {
                Terms::exact_split(r.u, (w(&r.want), &samples), (w(d), &views(ds, w)))
            });
            Some((
                name,
                check_rows(&t, w(&r.want), &samples, terms.as_ref(), per),
            ))
        })
        .collect()
}

/// The gradients of `g` by name, as [`grad_verdicts`] reads them (None where absent).
fn device_grads(g: &MlstmGrads) -> impl Fn(&str) -> Option<Vec<f32>> + '_ {
    move |name| {
        let t = match name {
            "dq" => Some(&g.dq),
            "dk" => Some(&g.dk),
            "dv" => Some(&g.dv),
            "di" => Some(&g.di),
            "df" => Some(&g.df),
            "dc0" => g.dc0.as_ref(),
            "dn0" => g.dn0.as_ref(),
            "dm0" => g.dm0.as_ref(),
            other => panic!("no gradient `{other}`"),
        };
        t.map(|t| t.to_f32_vec().unwrap())
    }
}

/// The gradients (dq … dm0) whose relative error of `got` against `want` exceeds `bound`, with
/// that error.
fn grads_over(want: &MlstmGrads, got: &MlstmGrads, bound: f64) -> Vec<(&'static str, f64)> {
    let (want, got) = (device_grads(want), device_grads(got));
    ["dq", "dk", "dv", "di", "df", "dc0", "dn0", "dm0"]
        .into_iter()
        .filter_map(|name| {
            let w: Vec<f64> = want(name).unwrap().iter().map(|&x| x as f64).collect();
            let err = rel_err(&got(name).unwrap(), &w);
            (err > bound).then_some((name, err))
        })
        .collect()
}

/// Forward (with row statistics) and backward of `case` on the device, into poisoned
/// gradients, against the stepwise float64 backward of the same (rounded) inputs.
fn check(
    rt: &Runtime,
    case: &Case,
    inp: &RefInputs,
    g: &RefGradOutputs,
    rng: &mut impl rand::Rng,
) -> Vec<(&'static str, Verdict)> {
    let dev = upload(rt, inp, case.dtype);
    let dev_g = upload_grad_outputs(rt, g, case.shape, case.dtype);
    let (inputs, cfg) = (dev.as_inputs(), case.config());
    let fwd = tfla::mlstm_fwd(rt, &inputs, &cfg).unwrap();
    let mut grads = MlstmGrads::alloc(rt, &inputs, &cfg).unwrap();
    poison(&mut grads);
    let grad_out = dev_g.as_grad_outputs();
    tfla::mlstm_bwd_into(rt, &inputs, &fwd, &grad_out, &cfg, case.mode, &mut grads).unwrap();
    rt.synchronize().unwrap();
    let r = reference_grads(inp, g, case.variant, case.dtype, case.mode, rng);
    grad_verdicts(&device_grads(&grads), &r, case.shape)
}

/// Runs every case on fresh random data; fails listing the cases over the dtype's bound.
fn run(cases: &[Case], name: &str) {
    let rt = runtime();
    let mut rng = rng(name);
    let mut failures = Vec::new();
    for c in cases {
        let (inp, g) = case_data(c, &mut rng);
        if !report(&format!("{c:?}"), &check(&rt, c, &inp, &g, &mut rng)) {
            failures.push(*c);
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
fn backward_matches_reference_all_variants_modes_and_dtypes() {
    let mut cases = Vec::new();
    for variant in VARIANTS {
        for mode in MODES {
            for dtype in [BF16, F16, F32] {
                cases.push(case(shape(1, 2, 300, 64, 128), 64, variant, dtype, mode));
                cases.push(
                    case(shape(2, 1, 200, 128, 64), 128, variant, dtype, mode)
                        .without_initial_state()
                        .without_final_grads(),
                );
            }
        }
    }
    run(
        &cases,
        "backward_matches_reference_all_variants_modes_and_dtypes",
    );
}

/// Shapes of the wide state tile (`fwd::wide_state`: 128 × 256; the state gradients on `wgmma`
/// in sm_90a builds from L = 256, `bwd::state_wg::applies`): every variant, mode and 16-bit
/// dtype with partial tiles in both directions and initial states at L = 256 (and bf16 at
/// L = 128, the narrow state-gradient kernel), and the xLSTM-7B head shape with a ragged last
/// chunk.
#[test]
#[ignore = "needs an NVIDIA GPU (compute capability 8.0 or later); run with --include-ignored"]
fn backward_wide_state_tile_shapes() {
    let mut cases = Vec::new();
    for variant in VARIANTS {
        for mode in MODES {
            for dtype in [BF16, F16] {
                cases.push(case(shape(1, 2, 300, 144, 272), 256, variant, dtype, mode));
            }
            cases.push(case(shape(1, 2, 300, 144, 272), 128, variant, BF16, mode));
            cases.push(
                case(shape(1, 1, 296, 256, 512), 256, variant, BF16, mode).without_final_grads(),
            );
        }
    }
    run(&cases, "backward_wide_state_tile_shapes");
}

#[test]
#[ignore = "needs an NVIDIA GPU (compute capability 8.0 or later); run with --include-ignored"]
fn backward_ragged_shapes_and_chunk_sizes() {
    use GradMode::{DetachedNormalizer as Detached, Exact};
    let mut cases = vec![
        // S = 1 (one partial chunk); smallest head dims.
        case(shape(2, 1, 1, 16, 16), 64, EXP, BF16, Exact),
        case(shape(2, 1, 1, 16, 16), 64, SIG, F16, Detached).without_final_grads(),
        // Head dims that are not multiples of the 64/128 tiles; S not a multiple of 16.
        case(shape(1, 2, 513, 48, 80), 256, SIG, BF16, Exact),
        case(shape(1, 1, 77, 208, 144), 64, EXP, F16, Detached).without_initial_state(),
        // DQK ≠ DHV both ways.
        case(shape(1, 2, 250, 64, 128), 128, EXP, BF16, Detached),
        case(shape(1, 2, 250, 128, 64), 128, EXP, BF16, Exact).without_final_grads(),
        case(shape(1, 1, 130, 256, 512), 64, SIG_NONORM, BF16, Exact),
        // The largest head dims, once.
        case(shape(1, 1, 200, 512, 512), 128, EXP, BF16, Exact),
        // f32 (the reverse recurrence): S = 1, ragged S and head dims, a chunk longer than its
        // segments (L = 256: 16 checkpoints of 16 steps), the largest head dims.
        case(shape(2, 1, 1, 16, 16), 64, EXP, F32, Exact),
        case(shape(1, 2, 513, 48, 80), 256, SIG, F32, Exact),
        case(shape(1, 1, 77, 208, 144), 64, EXP, F32, Detached).without_initial_state(),
        case(shape(1, 1, 130, 256, 512), 64, SIG_NONORM, F32, Exact),
        case(shape(1, 1, 100, 512, 512), 128, EXP, F32, Exact),
    ];
    for (chunk, mode) in [(64, Exact), (128, Detached), (256, Exact)] {
        for variant in [EXP, SIG] {
            cases.push(case(
                shape(1, 2, 2 * chunk + 37, 64, 64),
                chunk,
                variant,
                BF16,
                mode,
            ));
        }
    }
    run(&cases, "backward_ragged_shapes_and_chunk_sizes");
}

/// Shapes of the one-kernel chunk gradients (`bwd::chunk`: L = 128, heads up to 128): every
/// variant, mode and 16-bit dtype at 128/128 with a last chunk of 44 steps (one row tile, five
/// warps without rows); a last chunk of 80 (a partial second row tile) with head dims below
/// the tile; S = 1 with the smallest heads; DHV < DQK without a ragged end; 1000 steps.
#[test]
#[ignore = "needs an NVIDIA GPU (compute capability 8.0 or later); run with --include-ignored"]
fn backward_chunk_kernel_small_head_shapes() {
    use GradMode::{DetachedNormalizer as Detached, Exact};
    let mut cases = Vec::new();
    for variant in VARIANTS {
        for mode in MODES {
            for dtype in [BF16, F16] {
                cases.push(case(shape(1, 2, 300, 128, 128), 128, variant, dtype, mode));
            }
        }
    }
    cases.extend([
        case(shape(1, 2, 208, 48, 80), 128, EXP, BF16, Exact),
        case(shape(1, 2, 208, 80, 48), 128, SIG, F16, Detached).without_initial_state(),
        case(shape(2, 1, 1, 16, 16), 128, EXP, BF16, Exact),
        case(shape(2, 1, 1, 16, 16), 128, SIG, F16, Detached).without_final_grads(),
        case(shape(1, 2, 256, 128, 32), 128, EXP, BF16, Detached),
        case(shape(1, 1, 1000, 128, 128), 128, SIG_NONORM, BF16, Exact),
        case(shape(1, 1, 1000, 128, 128), 128, EXP, BF16, Exact).without_initial_state(),
    ]);
    run(&cases, "backward_chunk_kernel_small_head_shapes");
}

#[test]
#[ignore = "needs an NVIDIA GPU (compute capability 8.0 or later); run with --include-ignored"]
fn backward_hard_gate_regimes() {
    let mut cases = Vec::new();
    for gates in [Gates::ForgetNear0, Gates::ForgetNear1, Gates::BigInput] {
        for variant in [EXP, SIG] {
            for mode in MODES {
                for dtype in [BF16, F32] {
                    cases.push(
                        case(shape(1, 2, 333, 64, 64), 128, variant, dtype, mode).with_gates(gates),
                    );
                }
            }
        }
    }
    run(&cases, "backward_hard_gate_regimes");
}

/// Chunks whose every live row lies ~86.5 below the chunk's entry stabilizer in log space: from
/// the second chunk on, six forget gates of e^{-14.42} open each chunk (their queries zero, so
/// their normalizer takes its floor and δ = 0), and every later row has α = e^{m_k − M_i} ≈
/// e^{-86.5} = 2.7e-38, just above f32's smallest normal (the other forget gates, σ(6), move
/// it little and keep the max state's branches apart); with small upstream gradients (|δ| ≲
/// 1e-3) every α δ is subnormal. The state-gradient walk scales a chunk's products by its
/// largest weight (`bwd::state::product_scale`), whose reciprocal must stay finite: a
/// subnormal one overflows 1 / scale to ∞ and makes dñ, dk, dĩ and df̃ NaN, as training can
/// reach when forget gates close hard inside a chunk. bf16, Exact mode, mLSTMexp and mLSTMsig
/// (α = e^{b_i} there); the small heads' `mma.sync` state kernel, the wide ones' at L = 128 and
/// their `wgmma` one at L = 256 (sm_90a).
#[test]
#[ignore = "needs an NVIDIA GPU (compute capability 8.0 or later); run with --include-ignored"]
fn backward_chunks_of_subnormal_row_weights() {
    let rt = runtime();
    let mut rng = rng("backward_chunks_of_subnormal_row_weights");
    let mut failures = Vec::new();
    for (sh, chunk) in [
        (shape(1, 2, 300, 32, 64), 128),
        (shape(1, 1, 300, 144, 272), 128),
        (shape(1, 1, 600, 144, 272), 256),
    ] {
        for variant in [EXP, SIG] {
            let c = case(sh, chunk, variant, BF16, GradMode::Exact)
                .without_initial_state()
                .without_final_grads();
            let (s, dqk) = (sh.s, sh.dqk);
            let (inp, mut g) = case_data_with(&c, &mut rng, |inp| {
                for bh in 0..sh.b * sh.nh {
                    for t in 0..s {
                        let at = bh * s + t;
                        let opening = t >= chunk && t % chunk < 6;
                        inp.i[at] = 0.0;
                        inp.f[at] = if opening { -86.5 / 6.0 } else { 6.0 };
                        if opening {
                            inp.q[at * dqk..(at + 1) * dqk].fill(0.0);
                        }
                    }
                }
            });
            // 2^-16: exact in bf16, and small enough that every |α δ| is subnormal.
            g.dh.iter_mut().for_each(|x| *x *= 2f64.powi(-16));
            let verdicts = check(&rt, &c, &inp, &g, &mut rng);
            if !report(&format!("{c:?} (subnormal row weights)"), &verdicts) {
                failures.push(c);
            }
        }
    }
    assert!(failures.is_empty(), "over tolerance: {failures:?}");
}

#[test]
#[ignore = "needs an NVIDIA GPU (compute capability 8.0 or later); run with --include-ignored"]
fn backward_recomputes_released_chunk_states() {
    // A forward whose chunk states were released: the backward recomputes them and returns
    // the gradients of a backward from the kept states (twice, the second reusing the
    // workspace's recomputed states), and the outputs hold less memory.
    let rt = runtime();
    let mut rng = rng("backward_recomputes_released_chunk_states");
    let mut failures = Vec::new();
    for (variant, dtype, chunk) in [
        (EXP, BF16, 64),
        (SIG, F16, 128),
        (SIG_NONORM, BF16, 128),
        (EXP, F32, 64),
    ] {
        let c = case(
            shape(1, 2, 300, 64, 128),
            chunk,
            variant,
            dtype,
            GradMode::Exact,
        );
        let (inp, g) = case_data(&c, &mut rng);
        let dev = upload(&rt, &inp, dtype);
        let dev_g = upload_grad_outputs(&rt, &g, c.shape, dtype);
        let (inputs, cfg, grad_out) = (dev.as_inputs(), c.config(), dev_g.as_grad_outputs());
        let mut fwd = tfla::mlstm_fwd(&rt, &inputs, &cfg).unwrap();
        let kept = tfla::mlstm_bwd(&rt, &inputs, &fwd, &grad_out, &cfg, c.mode).unwrap();
        let (before, states) = (fwd.bytes(), fwd.states.c.numel() * dtype.size());
        fwd.release_chunk_states(&rt).unwrap();
        assert!(fwd.states.released());
        // (The released tensor keeps a one-element allocation.)
        assert_eq!(before - fwd.bytes(), states, "released bytes");
        let mut grads = MlstmGrads::alloc(&rt, &inputs, &cfg).unwrap();
        for round in 0..2 {
            poison(&mut grads);
            tfla::mlstm_bwd_into(&rt, &inputs, &fwd, &grad_out, &cfg, c.mode, &mut grads).unwrap();
            rt.synchronize().unwrap();
            // 16-bit: the same kernels on the same states, bit for bit; f32: its atomics add
            // the column tiles in any order, and a sum with cancellation (dm0) keeps that
            // reordering's rounding relative to its terms (2.3e-6 seen; a wrong recompute is
            // off by O(1)).
            let bound = if dtype == Dtype::F32 { 1e-4 } else { 1e-6 };
            for (name, err) in grads_over(&kept, &grads, bound) {
                failures.push(format!(
                    "{variant:?} {dtype:?} round {round} {name}: {err:.2e}"
                ));
            }
        }
        // A forward into released outputs is refused (they lack the states it writes).
        let e = tfla::mlstm_fwd_into(&rt, &inputs, &cfg, &mut fwd).unwrap_err();
        assert!(
            matches!(
                e,
                tfla::Error::Shape {
                    arg: "states.c",
                    ..
                }
            ),
            "{e}"
        );
        eprintln!("ok   {variant:?} {dtype:?} L = {chunk}: released {states} bytes");
    }
    assert!(failures.is_empty(), "{failures:?}");
}

#[test]
#[ignore = "needs an NVIDIA GPU (compute capability 8.0 or later); run with --include-ignored"]
fn forward_without_row_stats_keeps_no_chunk_states_where_one_kernel_runs() {
    // Without row_stats, at the heads and L of the one-kernel forward (and where the device
    // runs it), the outputs hold no chunk states and the kernel stores none; h and the final
    // states equal, bit for bit, those of the forward that keeps them (which the forward tests
    // hold to the float64 reference). A backward from such outputs (the no-normalizer variant:
    // the others need the row statistics) recomputes C̃_k and returns the same gradients.
    let rt = runtime();
    let mut rng = rng("forward_without_row_stats_keeps_no_chunk_states_where_one_kernel_runs");
    let mut failures = Vec::new();
    for (variant, dtype, shape) in [
        (EXP, BF16, shape(1, 2, 300, 128, 128)),
        (SIG, F16, shape(2, 1, 200, 48, 80)),
        (SIG_NONORM, BF16, shape(1, 3, 1500, 64, 128)),
        (SIG_NONORM, F16, shape(2, 1, 300, 128, 128)),
    ] {
        let c = case(shape, 128, variant, dtype, GradMode::Exact);
        let (inp, g) = case_data(&c, &mut rng);
        let dev = upload(&rt, &inp, dtype);
        let dev_g = upload_grad_outputs(&rt, &g, c.shape, dtype);
        let (inputs, kept_cfg, grad_out) = (dev.as_inputs(), c.config(), dev_g.as_grad_outputs());
        let cfg = MlstmConfig {
            row_stats: false,
            ..kept_cfg
        };
        let dims = inputs.dims().unwrap();
        let kept = tfla::mlstm_fwd(&rt, &inputs, &kept_cfg).unwrap();
        let mut out = MlstmOutputs::alloc(&rt, &dims, dtype, &cfg).unwrap();
        let one_kernel =
            tfla_params::fwd::use_fused(&rt.plan_device(), 128, shape.dqk as u32, shape.dhv as u32);
        assert_eq!(
            out.states.released(),
            one_kernel,
            "{variant:?} {dtype:?} {shape:?}"
        );
        for t in [&mut out.h, &mut out.c, &mut out.n, &mut out.m] {
            t.fill_nan().unwrap();
        }
        tfla::mlstm_fwd_into(&rt, &inputs, &cfg, &mut out).unwrap();
        rt.synchronize().unwrap();
        for (name, got, want) in [
            ("h", &out.h, &kept.h),
            ("c", &out.c, &kept.c),
            ("n", &out.n, &kept.n),
            ("m", &out.m, &kept.m),
        ] {
            if bits(got) != bits(want) {
                failures.push(format!("{variant:?} {dtype:?} {shape:?}: {name} differs"));
            }
        }
        if variant == SIG_NONORM {
            let want = tfla::mlstm_bwd(&rt, &inputs, &kept, &grad_out, &kept_cfg, c.mode).unwrap();
            let mut grads = MlstmGrads::alloc(&rt, &inputs, &cfg).unwrap();
            poison(&mut grads);
            tfla::mlstm_bwd_into(&rt, &inputs, &out, &grad_out, &cfg, c.mode, &mut grads).unwrap();
            rt.synchronize().unwrap();
            // The same kernels on the same states, bit for bit (as after a release).
            for (name, err) in grads_over(&want, &grads, 1e-6) {
                failures.push(format!("{variant:?} {dtype:?} {shape:?} {name}: {err:.2e}"));
            }
        }
        eprintln!(
            "ok   {variant:?} {dtype:?} {shape:?}: {} chunk-state bytes (kept: {})",
            out.states.c.numel() * dtype.size(),
            kept.states.c.numel() * dtype.size()
        );
    }
    assert!(failures.is_empty(), "{failures:?}");
}

#[test]
#[ignore = "needs an NVIDIA GPU (compute capability 8.0 or later); run with --include-ignored"]
fn backward_long_sequence() {
    // S = 8192: 64 chunks of state gradients walked in reverse, df̃ summed over the whole row.
    let mut cases: Vec<Case> = MODES
        .iter()
        .flat_map(|&mode| [EXP, SIG].map(|v| case(shape(1, 2, 8192, 64, 64), 128, v, BF16, mode)))
        .collect();
    cases.push(case(
        shape(1, 2, 8192, 64, 64),
        128,
        EXP,
        F32,
        GradMode::Exact,
    ));
    run(&cases, "backward_long_sequence");
}

/// Per-head rows [lo, hi) of a (BH, S, per) tensor.
fn rows(x: &[f64], heads: usize, s: usize, lo: usize, hi: usize, per: usize) -> Vec<f64> {
    (0..heads)
        .flat_map(|h| x[(h * s + lo) * per..(h * s + hi) * per].to_vec())
        .collect()
}

/// Per-head concatenation of (BH, S1, ·) and (BH, S2, ·).
fn concat(a: &[f64], b: &[f64], heads: usize) -> Vec<f64> {
    let (la, lb) = (a.len() / heads, b.len() / heads);
    (0..heads)
        .flat_map(|h| [&a[h * la..(h + 1) * la], &b[h * lb..(h + 1) * lb]].concat())
        .collect()
}

#[test]
#[ignore = "needs an NVIDIA GPU (compute capability 8.0 or later); run with --include-ignored"]
fn backward_state_passing_equals_one_call() {
    // Forward over [0, S1) → final states → forward over [S1, S) from them; the backward of the
    // second part gives dC̃_0, dñ_0, dm_0, which are the first part's upstream final-state
    // gradients. The concatenated gradients equal one call over the whole sequence.
    let rt = runtime();
    let mut rng = rng("backward_state_passing_equals_one_call");
    let (s1, s2, dqk, dhv, nh) = (193, 150, 64, 48, 2);
    let s = s1 + s2;
    let mut failures = Vec::new();
    for variant in VARIANTS {
        for mode in MODES {
            let c = case(shape(1, nh, s, dqk, dhv), 64, variant, BF16, mode);
            let (whole, g) = case_data(&c, &mut rng);
            let cfg = c.config();
            let up = |x: &RefInputs| upload(&rt, x, BF16);
            let part = |lo, hi| RefInputs {
                shape: shape(1, nh, hi - lo, dqk, dhv),
                q: rows(&whole.q, nh, s, lo, hi, dqk),
                k: rows(&whole.k, nh, s, lo, hi, dqk),
                v: rows(&whole.v, nh, s, lo, hi, dhv),
                i: rows(&whole.i, nh, s, lo, hi, 1),
                f: rows(&whole.f, nh, s, lo, hi, 1),
                c0: None,
                n0: None,
                m0: None,
            };
            let dh_part = |lo, hi| RefGradOutputs {
                dh: rows(&g.dh, nh, s, lo, hi, dhv),
                dc: None,
                dn: None,
                dm: None,
            };

            // One call.
            let dev_whole = up(&whole);
            let g_whole = upload_grad_outputs(&rt, &g, whole.shape, BF16);
            let (_, one) = tfla::mlstm_fwd_bwd(
                &rt,
                &dev_whole.as_inputs(),
                &g_whole.as_grad_outputs(),
                &cfg,
                mode,
            )
            .unwrap();

            // Two calls: forward of the first part, then forward and backward of the second.
            let mut first = part(0, s1);
            (first.c0, first.n0, first.m0) = (whole.c0.clone(), whole.n0.clone(), whole.m0.clone());
            let dev_first = up(&first);
            let fwd_first = tfla::mlstm_fwd(&rt, &dev_first.as_inputs(), &cfg).unwrap();
            let dev_second = up(&part(s1, s));
            let second = MlstmInputs {
                c0: Some(&fwd_first.c),
                n0: Some(&fwd_first.n),
                m0: Some(&fwd_first.m),
                ..dev_second.as_inputs()
            };
            let g_second = upload_grad_outputs(
                &rt,
                &RefGradOutputs {
                    dc: g.dc.clone(),
                    dn: g.dn.clone(),
                    dm: g.dm.clone(),
                    ..dh_part(s1, s)
                },
                second.dims().map(to_shape).unwrap(),
                BF16,
            );
            let (_, grads_second) =
                tfla::mlstm_fwd_bwd(&rt, &second, &g_second.as_grad_outputs(), &cfg, mode).unwrap();
            // The second part's initial-state gradients are the first part's upstream ones.
            let g_first = upload_grad_outputs(&rt, &dh_part(0, s1), first.shape, BF16);
            let grad_out_first = MlstmGradOutputs {
                dc: grads_second.dc0.as_ref(),
                dn: grads_second.dn0.as_ref(),
                dm: grads_second.dm0.as_ref(),
                ..g_first.as_grad_outputs()
            };
            let grads_first = tfla::mlstm_bwd(
                &rt,
                &dev_first.as_inputs(),
                &fwd_first,
                &grad_out_first,
                &cfg,
                mode,
            )
            .unwrap();
            rt.synchronize().unwrap();

            // Both against the reference of the whole sequence: the chunk boundaries move
            // and the boundary states round-trip through f32, so the two agree within the
            // bound of the whole problem's conditioning.
            let split = |name: &str| -> Option<Vec<f32>> {
                let parts = |a: &tfla::Tensor, b: &tfla::Tensor| {
                    let split = concat(&to_f64(a), &to_f64(b), nh);
                    Some(split.iter().map(|&x| x as f32).collect())
                };
                match name {
                    "dq" => parts(&grads_first.dq, &grads_second.dq),
                    "dk" => parts(&grads_first.dk, &grads_second.dk),
                    "dv" => parts(&grads_first.dv, &grads_second.dv),
                    "di" => parts(&grads_first.di, &grads_second.di),
                    "df" => parts(&grads_first.df, &grads_second.df),
                    "dc0" => grads_first.dc0.as_ref().map(|t| t.to_f32_vec().unwrap()),
                    "dn0" => grads_first.dn0.as_ref().map(|t| t.to_f32_vec().unwrap()),
                    "dm0" => grads_first.dm0.as_ref().map(|t| t.to_f32_vec().unwrap()),
                    other => panic!("no gradient `{other}`"),
                }
            };
            let r = reference_grads(&whole, &g, variant, BF16, mode, &mut rng);
            for (label, got) in [
                (
                    "one call",
                    &device_grads(&one) as &dyn Fn(&str) -> Option<Vec<f32>>,
                ),
                ("split", &split),
            ] {
                let verdicts = grad_verdicts(got, &r, whole.shape);
                if !report(&format!("{variant:?} {mode:?} {label}"), &verdicts) {
                    failures.push(format!("{variant:?} {mode:?} {label}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "state passing differs: {failures:?}");
}

fn to_shape(d: tfla::Dims) -> Shape {
    shape(d.b, d.nh, d.s, d.dqk, d.dhv)
}

#[test]
#[ignore = "needs an NVIDIA GPU (compute capability 8.0 or later); run with --include-ignored"]
fn bad_arguments_get_typed_errors() {
    use tfla::{Error, Tensor};
    let rt = runtime();
    let t = |dt, shape: &[usize]| Tensor::zeros(&rt, dt, shape).unwrap();
    let (q, k, v) = (
        t(BF16, &[1, 2, 8, 64]),
        t(BF16, &[1, 2, 8, 64]),
        t(BF16, &[1, 2, 8, 32]),
    );
    let (i, f) = (t(Dtype::F32, &[1, 2, 8]), t(Dtype::F32, &[1, 2, 8]));
    let inputs = MlstmInputs::new(&q, &k, &v, &i, &f);
    let cfg = MlstmConfig {
        row_stats: true,
        ..MlstmConfig::new(EXP)
    };
    let mode = GradMode::Exact;
    let fwd = tfla::mlstm_fwd(&rt, &inputs, &cfg).unwrap();
    let dh = t(BF16, &[1, 2, 8, 32]);
    let ok = MlstmGradOutputs::new(&dh);
    let bwd =
        |inputs: &MlstmInputs, fwd: &MlstmOutputs, g: &MlstmGradOutputs, cfg: &MlstmConfig| {
            tfla::mlstm_bwd(&rt, inputs, fwd, g, cfg, mode).unwrap_err()
        };

    // Upstream gradients: shape and dtype, naming the argument.
    let dh_bad = t(BF16, &[1, 2, 8, 64]);
    let e = bwd(&inputs, &fwd, &MlstmGradOutputs::new(&dh_bad), &cfg);
    assert!(matches!(e, Error::Shape { arg: "dh", .. }), "{e}");
    let dh_f16 = t(F16, &[1, 2, 8, 32]);
    let e = bwd(&inputs, &fwd, &MlstmGradOutputs::new(&dh_f16), &cfg);
    assert!(matches!(e, Error::Dtype { arg: "dh", .. }), "{e}");
    let dc_bad = t(Dtype::F32, &[1, 2, 32, 64]);
    let e = bwd(
        &inputs,
        &fwd,
        &MlstmGradOutputs {
            dc: Some(&dc_bad),
            ..ok
        },
        &cfg,
    );
    assert!(matches!(e, Error::Shape { arg: "dc", .. }), "{e}");
    let dn_bf16 = t(BF16, &[1, 2, 64]);
    let e = bwd(
        &inputs,
        &fwd,
        &MlstmGradOutputs {
            dn: Some(&dn_bf16),
            ..ok
        },
        &cfg,
    );
    assert!(matches!(e, Error::Dtype { arg: "dn", .. }), "{e}");
    let dm_bad = t(Dtype::F32, &[2, 1]);
    let e = bwd(
        &inputs,
        &fwd,
        &MlstmGradOutputs {
            dm: Some(&dm_bad),
            ..ok
        },
        &cfg,
    );
    assert!(matches!(e, Error::Shape { arg: "dm", .. }), "{e}");

    // The forward's outputs: without row statistics, or for another chunk size.
    let plain = MlstmConfig::new(EXP);
    let fwd_plain = tfla::mlstm_fwd(&rt, &inputs, &plain).unwrap();
    let e = bwd(&inputs, &fwd_plain, &ok, &plain);
    assert!(
        matches!(
            e,
            Error::Invalid {
                arg: "fwd.row_stats",
                ..
            }
        ),
        "{e}"
    );
    // mLSTMsig without normalizer needs no row statistics.
    let nonorm = MlstmConfig::new(SIG_NONORM);
    let fwd_nonorm = tfla::mlstm_fwd(&rt, &inputs, &nonorm).unwrap();
    assert!(tfla::mlstm_bwd(&rt, &inputs, &fwd_nonorm, &ok, &nonorm, mode).is_ok());
    let e = bwd(&inputs, &fwd, &ok, &cfg.with_chunk_size(128));
    assert!(
        matches!(
            e,
            Error::Invalid {
                arg: "states.chunk_size",
                ..
            }
        ),
        "{e}"
    );
    let e = bwd(&inputs, &fwd, &ok, &cfg.with_chunk_size(100));
    assert!(matches!(e, Error::ChunkSize { value: 100, .. }), "{e}");

    // f32 inputs take f32 upstream gradients.
    let (q32, k32, v32) = (
        t(Dtype::F32, &[1, 2, 8, 64]),
        t(Dtype::F32, &[1, 2, 8, 64]),
        t(Dtype::F32, &[1, 2, 8, 32]),
    );
    let inputs32 = MlstmInputs::new(&q32, &k32, &v32, &i, &f);
    let fwd32 = tfla::mlstm_fwd(&rt, &inputs32, &cfg).unwrap();
    let dh16 = t(Dtype::Bf16, &[1, 2, 8, 32]);
    let e = bwd(&inputs32, &fwd32, &MlstmGradOutputs::new(&dh16), &cfg);
    assert!(
        matches!(
            e,
            Error::Dtype {
                arg: "dh",
                got: Dtype::Bf16,
                ..
            }
        ),
        "{e}"
    );

    // Gradients allocated for other inputs: an initial state the grads have no slot for.
    let c0 = t(Dtype::F32, &[1, 2, 64, 32]);
    let with_c0 = MlstmInputs {
        c0: Some(&c0),
        ..inputs
    };
    let mut grads = MlstmGrads::alloc(&rt, &inputs, &cfg).unwrap();
    let e = tfla::mlstm_bwd_into(&rt, &with_c0, &fwd, &ok, &cfg, mode, &mut grads).unwrap_err();
    assert!(matches!(e, Error::Invalid { arg: "dc0", .. }), "{e}");

    // Raw entry point: misaligned and null pointers.
    let dims = inputs.dims().unwrap();
    let mut ptrs = tfla::bwd_pointers(&inputs, &fwd, &ok, &grads);
    let raw = |p: &tfla::BwdPointers| {
        // SAFETY: rejected before any launch (the test passes a bad pointer each time).
        unsafe { tfla::mlstm_bwd_raw(&rt, rt.raw_stream(), p, dims, BF16, &cfg, mode) }.unwrap_err()
    };
    ptrs.dh += 2;
    let e = raw(&ptrs);
    assert!(matches!(e, Error::Invalid { arg: "dh", .. }), "{e}");
    ptrs.dh = dh.device_ptr();
    ptrs.row_coef += 4;
    let e = raw(&ptrs);
    assert!(
        matches!(
            e,
            Error::Invalid {
                arg: "row_coef",
                ..
            }
        ),
        "{e}"
    );
    ptrs.row_coef = grads.workspace.row_coef.device_ptr();
    ptrs.norm_rows = 0;
    let e = raw(&ptrs);
    assert!(
        matches!(
            e,
            Error::Invalid {
                arg: "norm_rows",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU (compute capability 8.0 or later); run with --include-ignored"]
fn safetensors_file_with_dh_runs_the_backward() {
    use std::collections::HashMap;
    use tfla::io::{HostTensor, write_tensors};
    let rt = runtime();
    let mut rng = rng("safetensors_file_with_dh_runs_the_backward");
    let c = case(shape(1, 2, 150, 64, 32), 64, EXP, BF16, GradMode::Exact);
    let (inp, g) = case_data(&c, &mut rng);
    let Shape { b, nh, s, dqk, dhv } = c.shape;
    let t = |dtype, shape: &[usize], x: &[f64]| HostTensor {
        dtype,
        shape: shape.to_vec(),
        data: to_f32(x),
    };
    let f32_ = Dtype::F32;
    let tensors = [
        ("q", t(BF16, &[b, nh, s, dqk], &inp.q)),
        ("k", t(BF16, &[b, nh, s, dqk], &inp.k)),
        ("v", t(BF16, &[b, nh, s, dhv], &inp.v)),
        ("i", t(f32_, &[b, nh, s], &inp.i)),
        ("f", t(f32_, &[b, nh, s], &inp.f)),
        ("c0", t(f32_, &[b, nh, dqk, dhv], inp.c0.as_ref().unwrap())),
        ("n0", t(f32_, &[b, nh, dqk], inp.n0.as_ref().unwrap())),
        ("m0", t(f32_, &[b, nh], inp.m0.as_ref().unwrap())),
        ("dh", t(BF16, &[b, nh, s, dhv], &g.dh)),
        ("dc", t(f32_, &[b, nh, dqk, dhv], g.dc.as_ref().unwrap())),
        ("dn", t(f32_, &[b, nh, dqk], g.dn.as_ref().unwrap())),
        ("dm", t(f32_, &[b, nh], g.dm.as_ref().unwrap())),
    ];
    let dir = std::env::temp_dir();
    let pid = std::process::id();
    let (input, output) = (
        dir.join(format!("tfla-gpu-bwd-in-{pid}.safetensors")),
        dir.join(format!("tfla-gpu-bwd-out-{pid}.safetensors")),
    );
    write_tensors(&input, &tensors, HashMap::new()).unwrap();
    tfla::io::run_file(&rt, &input, &output, BF16, &c.config(), c.mode).unwrap();
    let bytes = std::fs::read(&output).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let read = |name: &str| -> Vec<f32> {
        let view = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("`{name}` missing from the output"));
        match view.dtype() {
            safetensors::Dtype::BF16 => view
                .data()
                .chunks_exact(2)
                .map(|x| half::bf16::from_le_bytes([x[0], x[1]]).to_f32())
                .collect(),
            safetensors::Dtype::F32 => view
                .data()
                .chunks_exact(4)
                .map(|x| f32::from_le_bytes([x[0], x[1], x[2], x[3]]))
                .collect(),
            other => panic!("`{name}` has dtype {other:?}"),
        }
    };
    let r = reference_grads(&inp, &g, EXP, BF16, c.mode, &mut rng);
    let verdicts = grad_verdicts(&|name: &str| Some(read(name)), &r, c.shape);
    let _ = std::fs::remove_file(&input);
    let _ = std::fs::remove_file(&output);
    assert!(
        st.tensor("h").is_ok(),
        "the forward outputs are written too"
    );
    assert!(
        report("file round trip", &verdicts),
        "file gradients over their bounds"
    );
}

/// The Exact-mode inputs of every hard regime can be moved off the gradient's kinks (CPU only).
#[test]
fn hard_regime_inputs_move_off_kinks() {
    let mut rng = rng("hard_regime_inputs_move_off_kinks");
    for gates in [
        Gates::Random,
        Gates::ForgetNear0,
        Gates::ForgetNear1,
        Gates::BigInput,
    ] {
        for variant in [EXP, SIG] {
            let c = case(
                shape(1, 2, 333, 64, 64),
                128,
                variant,
                BF16,
                GradMode::Exact,
            )
            .with_gates(gates);
            let (inp, _) = case_data(&c, &mut rng);
            let m = reference::kink_margins(&inp, &RefParams::new(variant, 64));
            assert!(m.den.iter().all(|&d| d >= 2e-2), "{gates:?} {variant:?}");
            assert!(
                m.branch.iter().all(|&b| b.abs() >= 1e-3),
                "{gates:?} {variant:?}"
            );
        }
    }
}
