//! The forward kernels on the GPU against the float64 reference: random inputs, outputs
//! poisoned with NaN before each launch, every variant, both 16-bit dtypes, ragged shapes,
//! every chunk size, initial and final states, chunk states, state passing.
//!
//! These tests need an NVIDIA GPU (8.0 or later; Hopper runs the sm_90a module, TFLA_PORTABLE=1
//! the sm_80 one): they are `#[ignore]`d so a machine without one
//! reports them as ignored; run them with `cargo test -- --include-ignored` (the bundle does).
mod common;

use common::*;
use tfla::reference::{self, RefInputs, RefParams, Shape};
use tfla::{Dtype, MlstmConfig, MlstmOutputs, Runtime, Variant};

#[derive(Clone, Copy, Debug)]
struct Case {
    shape: Shape,
    chunk: usize,
    variant: Variant,
    dtype: Dtype,
    initial_state: bool,
}

const EXP: Variant = Variant::Exp;
const SIG: Variant = Variant::Sig { normalize: true };
const SIG_NONORM: Variant = Variant::Sig { normalize: false };

fn shape(b: usize, nh: usize, s: usize, dqk: usize, dhv: usize) -> Shape {
    Shape { b, nh, s, dqk, dhv }
}

/// Runs one case into outputs poisoned with NaN; returns each output's verdict against its
/// bound from the case's conditioning ([`check_rows`]): h per row, the final states per row of
/// C̃ (and ñ, m), the chunk states likewise.
fn check(
    rt: &Runtime,
    case: Case,
    inp: &RefInputs,
    rng: &mut impl rand::Rng,
) -> Vec<(&'static str, Verdict)> {
    let dev = upload(rt, inp, case.dtype);
    let cfg = MlstmConfig {
        row_stats: true,
        ..MlstmConfig::new(case.variant).with_chunk_size(case.chunk)
    };
    let dims = dev.as_inputs().dims().unwrap();
    let mut out = MlstmOutputs::alloc(rt, &dims, case.dtype, &cfg).unwrap();
    for t in [
        &mut out.h,
        &mut out.c,
        &mut out.n,
        &mut out.m,
        &mut out.states.c,
        &mut out.states.n,
        &mut out.states.m,
    ] {
        t.fill_nan().unwrap();
    }
    out.row_stats.as_mut().unwrap().norm.fill_nan().unwrap();
    tfla::mlstm_fwd_into(rt, &dev.as_inputs(), &cfg, &mut out).unwrap();
    rt.synchronize().unwrap();
    if !case.variant.normalizes() {
        // No ñ is formed: the kernels hand back zeros, not the poison.
        for (name, t) in [
            ("n", &out.n),
            ("states.n", &out.states.n),
            ("row_stats.norm", &out.row_stats.as_ref().unwrap().norm),
        ] {
            assert!(
                t.to_f32_vec().unwrap().iter().all(|&x| x == 0.0),
                "{case:?}: {name} not zero without the normalizer"
            );
        }
    }

    let Shape { dqk, dhv, .. } = case.shape;
    let (want, samples) = forward_with_samples(inp, case.variant, case.dtype, rng);
    let got = |t: &tfla::Tensor| t.to_f32_vec().unwrap();
    let mut verdicts = vec![
        (
            "h",
            check_rows(&got(&out.h), &want.h, &views(&samples, |o| &o.h), None, dhv),
        ),
        (
            "c",
            check_rows(&got(&out.c), &want.c, &views(&samples, |o| &o.c), None, dhv),
        ),
        (
            "m",
            max_state_verdict(&got(&out.m), &want.m, fwd_tolerance(case.dtype)),
        ),
    ];
    if case.variant.normalizes() {
        verdicts.push((
            "n",
            check_rows(&got(&out.n), &want.n, &views(&samples, |o| &o.n), None, dqk),
        ));
    }
    // Chunk states: the reference lists NC + 1 boundaries (the last is the final state).
    let p = RefParams::new(case.variant, dqk);
    let cs = reference::chunk_states(inp, &p, case.chunk);
    let cs_samples: Vec<_> = (0..SAMPLES)
        .map(|_| reference::chunk_states(&perturbed_inputs(inp, case.dtype, rng), &p, case.chunk))
        .collect();
    let (bh, nc) = (case.shape.heads(), cs.num_chunks);
    let drop_last = |x: &[f64], per: usize| -> Vec<f64> {
        (0..bh)
            .flat_map(|h| x[h * (nc + 1) * per..(h * (nc + 1) + nc) * per].to_vec())
            .collect()
    };
    let chunk_rows = |got: &tfla::Tensor, pick: fn(&reference::ChunkStates) -> &[f64], per, row| {
        let want = drop_last(pick(&cs), per);
        let samples: Vec<Vec<f64>> = cs_samples.iter().map(|s| drop_last(pick(s), per)).collect();
        let samples: Vec<&[f64]> = samples.iter().map(Vec::as_slice).collect();
        check_rows(&got.to_f32_vec().unwrap(), &want, &samples, None, row)
    };
    verdicts.push((
        "chunk c",
        chunk_rows(&out.states.c, |c| &c.c, dqk * dhv, dhv),
    ));
    if case.variant.normalizes() {
        verdicts.push(("chunk n", chunk_rows(&out.states.n, |c| &c.n, dqk, dqk)));
    }
    if case.variant == EXP {
        let want_m = drop_last(&cs.m, 1);
        verdicts.push((
            "chunk m",
            max_state_verdict(&got(&out.states.m), &want_m, 1e-3),
        ));
    }
    verdicts
}

/// The max states against a fixed bound `tol` on |got − want| / max(|want|, 1): m is a log
/// scale (an absolute error δ in it is a relative error δ in what C̃ and ñ stand for, C =
/// C̃·e^m) summed from up to S log gates in f32, whose rounding grows with S and |m| — not
/// with the inputs' rounding, which [`check_rows`]' samples model. m = 0 is common (a forget
/// gate of e⁻³⁰ at the last step leaves m = ĩ + λ ≈ 0), where a relative error says nothing.
fn max_state_verdict(got: &[f32], want: &[f64], tol: f64) -> Verdict {
    let (mut worst, mut row) = (0.0, 0);
    for (r, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs() / w.abs().max(1.0);
        if err.is_nan() || err > worst {
            (worst, row) = (if err.is_nan() { f64::INFINITY } else { err }, r);
        }
    }
    Verdict {
        rms: worst / tol,
        rms_limit: 1.0,
        worst: worst / tol,
        row,
        rel_err: worst,
        rel_bound: tol,
    }
}

fn run(cases: &[Case], name: &str) {
    let rt = runtime();
    let mut rng = rng(name);
    let mut failures = Vec::new();
    for &case in cases {
        let mut inp = RefInputs::random(case.shape, case.initial_state, &mut rng);
        round_inputs(&mut inp, case.dtype);
        if !report(&format!("{case:?}"), &check(&rt, case, &inp, &mut rng)) {
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
fn forward_matches_reference_all_variants_and_dtypes() {
    let mut cases = Vec::new();
    for variant in tfla::registry::KERNELS.iter().map(|k| k.variant) {
        for dtype in [Dtype::Bf16, Dtype::F16] {
            cases.push(Case {
                shape: shape(1, 2, 300, 64, 128),
                chunk: 64,
                variant,
                dtype,
                initial_state: true,
            });
            cases.push(Case {
                shape: shape(2, 1, 200, 128, 32),
                chunk: 128,
                variant,
                dtype,
                initial_state: false,
            });
        }
        // f32 inputs: the f32 recurrence; ragged S, chunk states at every boundary.
        for (shape, initial_state) in [
            (shape(1, 2, 133, 64, 48), true),
            (shape(1, 1, 70, 512, 16), false),
        ] {
            cases.push(Case {
                shape,
                chunk: 64,
                variant,
                dtype: Dtype::F32,
                initial_state,
            });
        }
    }
    run(&cases, "forward_matches_reference_all_variants_and_dtypes");
}

#[test]
#[ignore = "needs an NVIDIA GPU (compute capability 8.0 or later); run with --include-ignored"]
fn forward_ragged_shapes_and_every_chunk_size() {
    let mut cases = vec![
        // S = 1; smallest head dims.
        Case {
            shape: shape(2, 1, 1, 16, 16),
            chunk: 64,
            variant: EXP,
            dtype: Dtype::Bf16,
            initial_state: true,
        },
        // Head dims that are not multiples of the 64/128 tiles.
        Case {
            shape: shape(1, 2, 513, 48, 80),
            chunk: 256,
            variant: SIG,
            dtype: Dtype::Bf16,
            initial_state: true,
        },
        Case {
            shape: shape(1, 1, 77, 208, 144),
            chunk: 64,
            variant: EXP,
            dtype: Dtype::Bf16,
            initial_state: false,
        },
        // DQK ≠ DHV at the largest head dims.
        Case {
            shape: shape(1, 1, 200, 512, 512),
            chunk: 128,
            variant: EXP,
            dtype: Dtype::Bf16,
            initial_state: true,
        },
        Case {
            shape: shape(1, 1, 130, 256, 512),
            chunk: 64,
            variant: SIG_NONORM,
            dtype: Dtype::Bf16,
            initial_state: false,
        },
        // The wide state tile (128 × 256, `fwd::wide_state`) with partial tiles in both
        // directions, f16, the normalizer, and exactly one tile.
        Case {
            shape: shape(1, 2, 300, 144, 272),
            chunk: 128,
            variant: SIG,
            dtype: Dtype::F16,
            initial_state: true,
        },
        Case {
            shape: shape(2, 1, 333, 128, 256),
            chunk: 256,
            variant: EXP,
            dtype: Dtype::F16,
            initial_state: true,
        },
    ];
    for chunk in [64, 128, 256, 512, 1024] {
        cases.push(Case {
            shape: shape(1, 2, 2 * chunk + 37, 64, 64),
            chunk,
            variant: EXP,
            dtype: Dtype::Bf16,
            initial_state: true,
        });
    }
    run(&cases, "forward_ragged_shapes_and_every_chunk_size");
}

/// Shapes for the `wgmma` output tiles (sm_90a builds: `fwd::output_wg`, 128 rows × 256 or
/// 128 value columns; other builds run the same cases on the `mma.sync` kernel): every variant
/// and dtype at both widths, partial column and head-dim slices (DQK = 80: one K item, its
/// columns past 80 zero; DQK = 192: the second K item's upper Q slice all zero), a ragged last
/// chunk whose second warpgroup has no rows (L = 256, 40 steps), one whose second row tile is empty (L = 256, 100 steps), and the
/// largest head (512/512: all 128 KB of Q slices held).
#[test]
#[ignore = "needs an NVIDIA GPU (compute capability 8.0 or later); run with --include-ignored"]
fn forward_wgmma_output_tile_shapes() {
    let mut cases = Vec::new();
    for variant in tfla::registry::KERNELS.iter().map(|k| k.variant) {
        for dtype in [Dtype::Bf16, Dtype::F16] {
            for (dqk, dhv) in [(80, 272), (128, 128)] {
                cases.push(Case {
                    shape: shape(1, 2, 300, dqk, dhv),
                    chunk: 128,
                    variant,
                    dtype,
                    initial_state: true,
                });
            }
        }
        for (s, dqk, dhv) in [
            (256 + 40, 192, 512),
            (512 + 100, 192, 512),
            (256 + 40, 192, 80),
            (256 + 40, 512, 512),
        ] {
            cases.push(Case {
                shape: shape(1, 1, s, dqk, dhv),
                chunk: 256,
                variant,
                dtype: Dtype::Bf16,
                initial_state: false,
            });
        }
    }
    run(&cases, "forward_wgmma_output_tile_shapes");
}

/// Shapes of the one-kernel forward for small heads (`fwd::fused`: L = 128, DQK ≤ 128,
/// DHV ≤ 128 in 64-column blocks): every variant and dtype at 128/128; a head dim that is not a
/// whole k-step of the block's 128 rows and a value width with a partial second column block
/// (48/80); the smallest heads (16/16, most warps hold no state rows); one step; a ragged last
/// chunk whose second key tile is empty (S = 300: 44 steps); many chunks.
#[test]
#[ignore = "needs an NVIDIA GPU (compute capability 8.0 or later); run with --include-ignored"]
fn forward_fused_small_head_shapes() {
    let mut cases = Vec::new();
    for variant in tfla::registry::KERNELS.iter().map(|k| k.variant) {
        for dtype in [Dtype::Bf16, Dtype::F16] {
            cases.push(Case {
                shape: shape(1, 2, 300, 128, 128),
                chunk: 128,
                variant,
                dtype,
                initial_state: true,
            });
        }
        for (b, nh, s, dqk, dhv, initial_state) in [
            (2, 1, 300, 48, 80, true),
            (1, 3, 200, 16, 16, false),
            (2, 1, 1, 128, 128, true),
            (1, 1, 1500, 64, 128, true),
        ] {
            cases.push(Case {
                shape: shape(b, nh, s, dqk, dhv),
                chunk: 128,
                variant,
                dtype: Dtype::Bf16,
                initial_state,
            });
        }
    }
    run(&cases, "forward_fused_small_head_shapes");
}

/// Runs `case` with gate pre-activations `gate(t)` (ĩ_t, f̃_t) against the reference; a case
/// over its bound is added to `failures` as `label`.
fn run_gated(
    rt: &Runtime,
    rng: &mut impl rand::Rng,
    case: Case,
    gate: impl Fn(usize) -> (f64, f64),
    label: String,
    failures: &mut Vec<String>,
) {
    let mut inp = RefInputs::random(case.shape, case.initial_state, rng);
    for (t, (i, f)) in inp.i.iter_mut().zip(inp.f.iter_mut()).enumerate() {
        (*i, *f) = gate(t % case.shape.s);
    }
    round_inputs(&mut inp, case.dtype);
    if !report(&label, &check(rt, case, &inp, rng)) {
        failures.push(label);
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU (compute capability 8.0 or later); run with --include-ignored"]
fn forward_hard_gate_regimes() {
    let rt = runtime();
    let mut rng = rng("forward_hard_gate_regimes");
    let mut failures = Vec::new();
    for variant in [EXP, SIG] {
        for (label, gate) in HARD_GATES {
            let case = Case {
                shape: shape(1, 2, 333, 64, 64),
                chunk: 128,
                variant,
                dtype: Dtype::Bf16,
                initial_state: true,
            };
            let label = format!("{label} {variant:?}");
            run_gated(&rt, &mut rng, case, gate, label, &mut failures);
        }
    }
    assert!(failures.is_empty(), "over tolerance: {failures:?}");
}

#[test]
#[ignore = "needs an NVIDIA GPU (compute capability 8.0 or later); run with --include-ignored"]
fn forward_65536_tokens() {
    // The max state over 65,536 steps of long memory (forget gates near 1, so m_t keeps
    // growing with Σ log f and the input gates) and the chunk states passed 256 times.
    let rt = runtime();
    let mut rng = rng("forward_65536_tokens");
    let mut failures = Vec::new();
    let gate = |t: usize| ((t % 11) as f64 - 5.0, 6.0 + (t % 5) as f64);
    for variant in [EXP, SIG] {
        let case = Case {
            shape: shape(1, 2, 65_536, 64, 64),
            chunk: 256,
            variant,
            dtype: Dtype::Bf16,
            initial_state: true,
        };
        run_gated(
            &rt,
            &mut rng,
            case,
            gate,
            format!("{variant:?}"),
            &mut failures,
        );
    }
    assert!(failures.is_empty(), "over the tolerance: {failures:?}");
}

#[test]
#[ignore = "needs an NVIDIA GPU (compute capability 8.0 or later); run with --include-ignored"]
fn forward_state_passing_equals_one_call() {
    // Two calls with carried final states equal one call over the concatenation.
    let rt = runtime();
    let mut rng = rng("forward_state_passing_equals_one_call");
    for variant in [EXP, SIG, SIG_NONORM] {
        let (s1, s2) = (193, 150);
        let whole = RefInputs::random(shape(1, 2, s1 + s2, 64, 64), true, &mut rng);
        let mut whole = whole;
        round_inputs(&mut whole, Dtype::Bf16);
        let split = |lo: usize, hi: usize, per: usize, x: &[f64]| -> Vec<f64> {
            (0..2)
                .flat_map(|h| x[(h * (s1 + s2) + lo) * per..(h * (s1 + s2) + hi) * per].to_vec())
                .collect()
        };
        let part = |lo, hi| RefInputs {
            shape: shape(1, 2, hi - lo, 64, 64),
            q: split(lo, hi, 64, &whole.q),
            k: split(lo, hi, 64, &whole.k),
            v: split(lo, hi, 64, &whole.v),
            i: split(lo, hi, 1, &whole.i),
            f: split(lo, hi, 1, &whole.f),
            c0: None,
            n0: None,
            m0: None,
        };
        let mut first = part(0, s1);
        (first.c0, first.n0, first.m0) = (whole.c0.clone(), whole.n0.clone(), whole.m0.clone());
        let cfg = MlstmConfig::new(variant).with_chunk_size(64);
        let dev_whole = upload(&rt, &whole, Dtype::Bf16);
        let dev_first = upload(&rt, &first, Dtype::Bf16);
        let out_whole = tfla::mlstm_fwd(&rt, &dev_whole.as_inputs(), &cfg).unwrap();
        let out_first = tfla::mlstm_fwd(&rt, &dev_first.as_inputs(), &cfg).unwrap();
        let dev_second = upload(&rt, &part(s1, s1 + s2), Dtype::Bf16);
        let mut second = dev_second.as_inputs();
        second.c0 = Some(&out_first.c);
        second.n0 = Some(&out_first.n);
        second.m0 = Some(&out_first.m);
        let out_second = tfla::mlstm_fwd(&rt, &second, &cfg).unwrap();
        rt.synchronize().unwrap();
        let h_whole: Vec<f64> = out_whole
            .h
            .to_f32_vec()
            .unwrap()
            .iter()
            .map(|&x| x as f64)
            .collect();
        let h_second = out_second.h.to_f32_vec().unwrap();
        let err = rel_err(&h_second, &split(s1, s1 + s2, 64, &h_whole));
        let c_err = rel_err(
            &out_second.c.to_f32_vec().unwrap(),
            &out_whole
                .c
                .to_f32_vec()
                .unwrap()
                .iter()
                .map(|&x| x as f64)
                .collect::<Vec<_>>(),
        );
        eprintln!("{variant:?}: second half h {err:.2e}, final C {c_err:.2e}");
        // Same kernels, same inputs; only the chunk boundaries move (f32 state round trip).
        assert!(
            err < 1e-2 && c_err < 1e-2,
            "{variant:?}: state passing differs: h {err:.2e}, C {c_err:.2e}"
        );
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU (compute capability 8.0 or later); run with --include-ignored"]
fn launch_trace_times_each_kernel_in_order_and_changes_nothing() {
    // The trace lists every launch of the traced calls in order, each with a positive time,
    // leaves the outputs bit for bit as an untraced call's, and stops when taken.
    let rt = runtime();
    let mut rng = rng("launch_trace_times_each_kernel_in_order_and_changes_nothing");
    let mut inp = RefInputs::random(shape(2, 3, 700, 256, 512), false, &mut rng);
    round_inputs(&mut inp, Dtype::Bf16);
    let dev = upload(&rt, &inp, Dtype::Bf16);
    for variant in [EXP, SIG_NONORM] {
        let cfg = MlstmConfig::new(variant).with_chunk_size(256);
        let plain = tfla::mlstm_fwd(&rt, &dev.as_inputs(), &cfg).unwrap();
        assert!(
            rt.take_launch_trace().unwrap().is_empty(),
            "tracing was off"
        );
        rt.trace_launches().unwrap();
        let traced = [0, 1].map(|_| tfla::mlstm_fwd(&rt, &dev.as_inputs(), &cfg).unwrap());
        let trace = rt.take_launch_trace().unwrap();
        let after = tfla::mlstm_fwd(&rt, &dev.as_inputs(), &cfg).unwrap();
        assert!(
            rt.take_launch_trace().unwrap().is_empty(),
            "tracing stopped when taken"
        );
        eprintln!("{variant:?}: {trace:?}");
        let per = trace.len() / 2;
        assert!(
            per >= 2 && trace.len() == 2 * per,
            "{variant:?}: {} launches",
            trace.len()
        );
        for (i, k) in trace.iter().enumerate() {
            assert!(
                k.name.starts_with("mlstm_fwd_"),
                "{variant:?}: launch {i} is {}",
                k.name
            );
            assert!(
                k.ms > 0.0 && k.ms.is_finite(),
                "{variant:?}: {} took {} ms",
                k.name,
                k.ms
            );
            assert!(
                k.gap_ms >= 0.0 && k.gap_ms.is_finite(),
                "{variant:?}: gap {}",
                k.gap_ms
            );
            assert_eq!(
                k.name,
                trace[i % per].name,
                "{variant:?}: both calls launch the same plan"
            );
        }
        assert_eq!(trace[0].gap_ms, 0.0);
        for out in traced.iter().chain([&after]) {
            assert_eq!(
                bits(&out.h),
                bits(&plain.h),
                "{variant:?}: h with and without the trace"
            );
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU (compute capability 8.0 or later); run with --include-ignored"]
fn bad_arguments_get_typed_errors() {
    use tfla::{Error, Tensor};
    let rt = runtime();
    let t = |dt, shape: &[usize]| Tensor::zeros(&rt, dt, shape).unwrap();
    let (q, k, v) = (
        t(Dtype::Bf16, &[1, 2, 8, 64]),
        t(Dtype::Bf16, &[1, 2, 8, 64]),
        t(Dtype::Bf16, &[1, 2, 8, 32]),
    );
    let (i, f) = (t(Dtype::F32, &[1, 2, 8]), t(Dtype::F32, &[1, 2, 8]));
    let cfg = MlstmConfig::new(EXP);
    let ok = tfla::MlstmInputs::new(&q, &k, &v, &i, &f);
    assert!(tfla::mlstm_fwd(&rt, &ok, &cfg).is_ok());

    let k_bad = t(Dtype::Bf16, &[1, 2, 9, 64]);
    let e = tfla::mlstm_fwd(&rt, &tfla::MlstmInputs { k: &k_bad, ..ok }, &cfg).unwrap_err();
    assert!(matches!(e, Error::Shape { arg: "k", .. }), "{e}");
    let v_f16 = t(Dtype::F16, &[1, 2, 8, 32]);
    let e = tfla::mlstm_fwd(&rt, &tfla::MlstmInputs { v: &v_f16, ..ok }, &cfg).unwrap_err();
    assert!(matches!(e, Error::Dtype { arg: "v", .. }), "{e}");
    let i_bf16 = t(Dtype::Bf16, &[1, 2, 8]);
    let e = tfla::mlstm_fwd(&rt, &tfla::MlstmInputs { i: &i_bf16, ..ok }, &cfg).unwrap_err();
    assert!(matches!(e, Error::Dtype { arg: "i", .. }), "{e}");
    let k32 = t(Dtype::F32, &[1, 2, 8, 64]);
    let e = tfla::mlstm_fwd(&rt, &tfla::MlstmInputs { k: &k32, ..ok }, &cfg).unwrap_err();
    assert!(matches!(e, Error::Dtype { arg: "k", .. }), "{e}");
    let (q40, k40) = (
        t(Dtype::Bf16, &[1, 2, 8, 40]),
        t(Dtype::Bf16, &[1, 2, 8, 40]),
    );
    let e = tfla::mlstm_fwd(
        &rt,
        &tfla::MlstmInputs {
            q: &q40,
            k: &k40,
            ..ok
        },
        &cfg,
    )
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
    let c0_bad = t(Dtype::F32, &[1, 2, 64, 64]);
    let e = tfla::mlstm_fwd(
        &rt,
        &tfla::MlstmInputs {
            c0: Some(&c0_bad),
            ..ok
        },
        &cfg,
    )
    .unwrap_err();
    assert!(matches!(e, Error::Shape { arg: "c0", .. }), "{e}");
    let e = tfla::mlstm_fwd(&rt, &ok, &cfg.with_chunk_size(100)).unwrap_err();
    assert!(matches!(e, Error::ChunkSize { value: 100, .. }), "{e}");
    let q3 = t(Dtype::Bf16, &[2, 8, 64]);
    let e = tfla::mlstm_fwd(&rt, &tfla::MlstmInputs { q: &q3, ..ok }, &cfg).unwrap_err();
    assert!(matches!(e, Error::Invalid { arg: "q", .. }), "{e}");
    // Raw entry point: misaligned and null pointers.
    let dims = ok.dims().unwrap();
    let out = tfla::mlstm_fwd(&rt, &ok, &cfg).unwrap();
    let mut ptrs = tfla::fwd_pointers(&ok, &out);
    ptrs.q += 2;
    let cfg64 = cfg.with_chunk_size(out.states.chunk_size);
    // SAFETY: rejected before launch (misaligned q, then null h).
    let e = unsafe { tfla::mlstm_fwd_raw(&rt, rt.raw_stream(), &ptrs, dims, Dtype::Bf16, &cfg64) }
        .unwrap_err();
    assert!(matches!(e, Error::Invalid { arg: "q", .. }), "{e}");
    ptrs.q = q.device_ptr();
    ptrs.h = 0;
    let e = unsafe { tfla::mlstm_fwd_raw(&rt, rt.raw_stream(), &ptrs, dims, Dtype::Bf16, &cfg64) }
        .unwrap_err();
    assert!(matches!(e, Error::Invalid { arg: "h", .. }), "{e}");
}

#[test]
#[ignore = "needs an NVIDIA GPU (compute capability 8.0 or later); run with --include-ignored"]
fn safetensors_file_round_trip_matches_reference() {
    use std::collections::HashMap;
    use tfla::io::{HostTensor, write_tensors};
    let rt = runtime();
    let mut rng = rng("safetensors_file_round_trip_matches_reference");
    let sh = shape(1, 2, 150, 64, 32);
    let mut inp = RefInputs::random(sh, true, &mut rng);
    round_inputs(&mut inp, Dtype::Bf16);
    let t = |dtype, shape: &[usize], x: &[f64]| HostTensor {
        dtype,
        shape: shape.to_vec(),
        data: to_f32(x),
    };
    let (b, nh, s, dqk, dhv) = (sh.b, sh.nh, sh.s, sh.dqk, sh.dhv);
    let tensors = [
        ("q", t(Dtype::Bf16, &[b, nh, s, dqk], &inp.q)),
        ("k", t(Dtype::Bf16, &[b, nh, s, dqk], &inp.k)),
        ("v", t(Dtype::Bf16, &[b, nh, s, dhv], &inp.v)),
        ("i", t(Dtype::F32, &[b, nh, s], &inp.i)),
        ("f", t(Dtype::F32, &[b, nh, s], &inp.f)),
        (
            "c0",
            t(Dtype::F32, &[b, nh, dqk, dhv], inp.c0.as_ref().unwrap()),
        ),
        ("n0", t(Dtype::F32, &[b, nh, dqk], inp.n0.as_ref().unwrap())),
        ("m0", t(Dtype::F32, &[b, nh], inp.m0.as_ref().unwrap())),
    ];
    let dir = std::env::temp_dir();
    let (input, output) = (
        dir.join("tfla-gpu-in.safetensors"),
        dir.join("tfla-gpu-out.safetensors"),
    );
    write_tensors(&input, &tensors, HashMap::new()).unwrap();
    let cfg = MlstmConfig::new(EXP).with_chunk_size(64);
    tfla::io::run_forward_file(&rt, &input, &output, Dtype::Bf16, &cfg).unwrap();
    let bytes = std::fs::read(&output).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let h = st.tensor("h").unwrap();
    assert_eq!(h.shape(), &[b, nh, s, dhv]);
    let got: Vec<f32> = h
        .data()
        .chunks_exact(2)
        .map(|x| half::bf16::from_le_bytes([x[0], x[1]]).to_f32())
        .collect();
    let (want, samples) = forward_with_samples(&inp, EXP, Dtype::Bf16, &mut rng);
    let v = check_rows(&got, &want.h, &views(&samples, |o| &o.h), None, dhv);
    eprintln!("file round trip: h {v}");
    assert!(v.ok(), "h over its bound: {v}");
    assert!(st.tensor("c").is_ok() && st.tensor("n").is_ok() && st.tensor("m").is_ok());
    // A malformed input file is rejected before anything runs.
    std::fs::write(&input, b"garbage").unwrap();
    let err = tfla::io::run_forward_file(&rt, &input, &output, Dtype::Bf16, &cfg).unwrap_err();
    assert!(matches!(err, tfla::Error::File { .. }), "{err}");
    let _ = std::fs::remove_file(&input);
    let _ = std::fs::remove_file(&output);
}

/// The rows `slots` of a (num_slots, per) host array, in order: (slots.len(), per).
fn gather(x: &[f64], per: usize, slots: &[u32]) -> Vec<f64> {
    slots
        .iter()
        .flat_map(|&s| x[s as usize * per..(s as usize + 1) * per].to_vec())
        .collect()
}

#[test]
#[ignore = "needs an NVIDIA GPU (compute capability 8.0 or later); run with --include-ignored"]
fn forward_with_state_pool_equals_separate_states() {
    // A pool of 7 slots holding random states; B = 3 rows on slots 5, 0, 3. The pool forward
    // runs the same kernels on the same states as a forward given them as c0, n0, m0, so h, the
    // chunk states and the row statistics agree bit for bit, slots 5, 0, 3 then hold that
    // forward's final states bit for bit, and slots 1, 2, 4, 6 are untouched. Several blocks
    // share each head (DQK 128: 2 row tiles; DHV 256: 2 column tiles, 16 for f32), so a block
    // writing a slot's final ñ or m before another has read the initial ones would show.
    use tfla::{Dtype, GradMode, MlstmGradOutputs, Slots, StatePool, Tensor};
    let rt = runtime();
    let mut rng = rng("forward_with_state_pool_equals_separate_states");
    const NUM_SLOTS: usize = 7;
    let slot_ids = [5u32, 0, 3];
    let (nh, s, dqk, dhv) = (2, 200, 128, 256);
    let mut failures = Vec::new();
    for variant in [EXP, SIG, SIG_NONORM] {
        for dtype in [Dtype::Bf16, Dtype::F16, Dtype::F32] {
            let label = format!("{variant:?} {dtype:?}");
            // The pool's states: those RefInputs::random draws for initial states.
            let mut pool_ref = RefInputs::random(shape(NUM_SLOTS, nh, 1, dqk, dhv), true, &mut rng);
            round_inputs(&mut pool_ref, Dtype::F32);
            let (pc, pn, pm) = (
                pool_ref.c0.clone().unwrap(),
                pool_ref.n0.clone().unwrap(),
                pool_ref.m0.clone().unwrap(),
            );
            // The same states, gathered per row, as c0, n0, m0 of the reference forward.
            let mut inp = RefInputs::random(shape(3, nh, s, dqk, dhv), false, &mut rng);
            inp.c0 = Some(gather(&pc, nh * dqk * dhv, &slot_ids));
            inp.n0 = Some(gather(&pn, nh * dqk, &slot_ids));
            inp.m0 = Some(gather(&pm, nh, &slot_ids));
            round_inputs(&mut inp, dtype);
            let dev = upload(&rt, &inp, dtype);
            let cfg = MlstmConfig {
                row_stats: true,
                ..MlstmConfig::new(variant).with_chunk_size(64)
            };
            let dims = dev.as_inputs().dims().unwrap();
            let poisoned = || {
                let mut out = MlstmOutputs::alloc(&rt, &dims, dtype, &cfg).unwrap();
                let r = out.row_stats.as_mut().unwrap();
                for t in [&mut r.m, &mut r.norm] {
                    t.fill_nan().unwrap();
                }
                for t in [
                    &mut out.h,
                    &mut out.c,
                    &mut out.n,
                    &mut out.m,
                    &mut out.states.c,
                    &mut out.states.n,
                    &mut out.states.m,
                ] {
                    t.fill_nan().unwrap();
                }
                out
            };
            let mut want = poisoned();
            tfla::mlstm_fwd_into(&rt, &dev.as_inputs(), &cfg, &mut want).unwrap();

            let up = |x: &[f64], shape: &[usize]| Tensor::from_f32(&rt, &to_f32(x), shape).unwrap();
            let pool = StatePool::new(
                up(&pc, &[NUM_SLOTS, nh, dqk, dhv]),
                up(&pn, &[NUM_SLOTS, nh, dqk]),
                up(&pm, &[NUM_SLOTS, nh]),
            )
            .unwrap();
            let before = [bits(&pool.c), bits(&pool.n), bits(&pool.m)];
            let slots = Slots::new(&rt, &slot_ids).unwrap();
            let pooled = tfla::MlstmInputs {
                c0: None,
                n0: None,
                m0: None,
                ..dev.as_inputs()
            }
            .with_pool(&pool, &slots);
            let mut got = poisoned();
            tfla::mlstm_fwd_into(&rt, &pooled, &cfg, &mut got).unwrap();
            rt.synchronize().unwrap();

            // Against the float64 reference too (catches a result both runs got wrong, and
            // NaN poison left in both).
            let (want_h, samples) = forward_with_samples(&inp, variant, dtype, &mut rng);
            let v = check_rows(
                &got.h.to_f32_vec().unwrap(),
                &want_h.h,
                &views(&samples, |o| &o.h),
                None,
                dhv,
            );
            let mut bad = Vec::new();
            if !v.ok() {
                bad.push(format!("h over its bound against the reference: {v}"));
            }
            let rs = |o: &MlstmOutputs| o.row_stats.as_ref().map(|r| [bits(&r.m), bits(&r.norm)]);
            for (name, g, w) in [
                ("h", bits(&got.h), bits(&want.h)),
                ("states.c", bits(&got.states.c), bits(&want.states.c)),
                ("states.n", bits(&got.states.n), bits(&want.states.n)),
                ("states.m", bits(&got.states.m), bits(&want.states.m)),
                ("gates.g", bits(&got.gates.g), bits(&want.gates.g)),
            ] {
                if g != w {
                    bad.push(format!("{name} differs from the c0/n0/m0 forward"));
                }
            }
            if rs(&got) != rs(&want) {
                bad.push("row statistics differ from the c0/n0/m0 forward".into());
            }
            // The pool: the rows' slots hold the final states, the others what they held.
            for (name, after, fin, before, per) in [
                (
                    "c",
                    bits(&pool.c),
                    bits(&want.c),
                    &before[0],
                    nh * dqk * dhv,
                ),
                ("n", bits(&pool.n), bits(&want.n), &before[1], nh * dqk),
                ("m", bits(&pool.m), bits(&want.m), &before[2], nh),
            ] {
                for slot in 0..NUM_SLOTS {
                    let range = slot * per..(slot + 1) * per;
                    let expect = match slot_ids.iter().position(|&x| x as usize == slot) {
                        Some(row) => &fin[row * per..(row + 1) * per],
                        None => &before[range.clone()],
                    };
                    if after[range] != *expect {
                        bad.push(format!("pool.{name} slot {slot} wrong"));
                    }
                }
            }
            // c, n, m of the outputs are not written (the final states went to the pool).
            for (name, t) in [("c", &got.c), ("n", &got.n), ("m", &got.m)] {
                if t.to_f32_vec().unwrap().iter().any(|x| !x.is_nan()) {
                    bad.push(format!("out.{name} written by a pool forward"));
                }
            }
            assert!(got.pooled() && !want.pooled());
            if dtype == Dtype::Bf16 {
                // The backward takes no pool: typed error, nothing launched.
                let dh = Tensor::zeros(&rt, dtype, &[3, nh, s, dhv]).unwrap();
                let e = tfla::mlstm_bwd(
                    &rt,
                    &pooled,
                    &got,
                    &MlstmGradOutputs::new(&dh),
                    &cfg,
                    GradMode::Exact,
                )
                .unwrap_err();
                if !matches!(
                    e,
                    tfla::Error::Invalid {
                        arg: "pool" | "fwd",
                        ..
                    }
                ) {
                    bad.push(format!("backward on pool outputs: {e}"));
                }
                // The allocating forward gives empty c, n, m with a pool.
                let out = tfla::mlstm_fwd(&rt, &pooled, &cfg).unwrap();
                if out.c.shape() != [0] || out.n.shape() != [0] || out.m.shape() != [0] {
                    bad.push(format!("mlstm_fwd with a pool: c {:?}", out.c.shape()));
                }
            }
            eprintln!(
                "{} {label}: h {v} against the reference{}",
                if bad.is_empty() { "ok  " } else { "FAIL" },
                bad.iter().map(|b| format!("; {b}")).collect::<String>()
            );
            if !bad.is_empty() {
                failures.push(label);
            }
        }
    }
    assert!(failures.is_empty(), "failed: {failures:?}");
}

#[test]
#[ignore = "needs an NVIDIA GPU (compute capability 8.0 or later); run with --include-ignored"]
fn state_pool_bad_arguments_get_typed_errors_and_write_nothing() {
    use tfla::{Error, MlstmInputs, Slots, StatePool, Tensor};
    let rt = runtime();
    let t = |dt, shape: &[usize]| Tensor::zeros(&rt, dt, shape).unwrap();
    let (q, k, v) = (
        t(Dtype::Bf16, &[3, 2, 8, 64]),
        t(Dtype::Bf16, &[3, 2, 8, 64]),
        t(Dtype::Bf16, &[3, 2, 8, 32]),
    );
    let (i, f) = (t(Dtype::F32, &[3, 2, 8]), t(Dtype::F32, &[3, 2, 8]));
    let cfg = MlstmConfig::new(EXP);
    let ok = MlstmInputs::new(&q, &k, &v, &i, &f);
    // A pool of ones (a forward would change it), 7 slots.
    let ones =
        |shape: &[usize]| Tensor::from_f32(&rt, &vec![1.0; shape.iter().product()], shape).unwrap();
    let mut pool = StatePool::new(ones(&[7, 2, 64, 32]), ones(&[7, 2, 64]), ones(&[7, 2])).unwrap();
    let before = [bits(&pool.c), bits(&pool.n), bits(&pool.m)];
    let good = Slots::new(&rt, &[5, 0, 3]).unwrap();
    let fwd = |inputs: &MlstmInputs| tfla::mlstm_fwd(&rt, inputs, &cfg).unwrap_err();

    let c0 = t(Dtype::F32, &[3, 2, 64, 32]);
    let e = fwd(&MlstmInputs {
        c0: Some(&c0),
        ..ok.with_pool(&pool, &good)
    });
    assert!(matches!(e, Error::Invalid { arg: "pool", .. }), "{e}");
    for (ids, what) in [
        (&[5u32, 0][..], "length"),
        (&[5, 7, 3][..], "range"),
        (&[5, 0, 5][..], "duplicate"),
    ] {
        let slots = Slots::new(&rt, ids).unwrap();
        let e = fwd(&ok.with_pool(&pool, &slots));
        let typed = match what {
            "length" => matches!(e, Error::Shape { arg: "slots", .. }),
            _ => matches!(e, Error::Invalid { arg: "slots", .. }),
        };
        assert!(typed, "{what}: {e}");
    }
    // A pool of another head count or head dim, or not f32.
    let wrong_nh = StatePool::alloc_zeros(&rt, 7, 3, 64, 32).unwrap();
    let e = fwd(&ok.with_pool(&wrong_nh, &good));
    assert!(matches!(e, Error::Shape { arg: "pool.c", .. }), "{e}");
    let wrong_dhv = StatePool::alloc_zeros(&rt, 7, 2, 64, 48).unwrap();
    let e = fwd(&ok.with_pool(&wrong_dhv, &good));
    assert!(matches!(e, Error::Shape { arg: "pool.c", .. }), "{e}");
    let c_f32 = std::mem::replace(&mut pool.c, t(Dtype::Bf16, &[7, 2, 64, 32]));
    let e = fwd(&ok.with_pool(&pool, &good));
    assert!(matches!(e, Error::Dtype { arg: "pool.c", .. }), "{e}");
    pool.c = c_f32;
    let n_short = std::mem::replace(&mut pool.n, t(Dtype::F32, &[6, 2, 64]));
    let e = fwd(&ok.with_pool(&pool, &good));
    assert!(matches!(e, Error::Shape { arg: "pool.n", .. }), "{e}");
    pool.n = n_short;
    // Constructors.
    let e = StatePool::alloc_zeros(&rt, 0, 2, 64, 32).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Invalid {
                arg: "num_slots",
                ..
            }
        ),
        "{e}"
    );
    let e = StatePool::new(ones(&[7, 2, 64, 32]), ones(&[7, 2, 64]), ones(&[7, 3])).unwrap_err();
    assert!(matches!(e, Error::Shape { arg: "pool.m", .. }), "{e}");
    // Raw entry point: misaligned slots.
    let inputs = ok.with_pool(&pool, &good);
    let dims = inputs.dims().unwrap();
    let out = tfla::MlstmOutputs::alloc(&rt, &dims, Dtype::Bf16, &cfg).unwrap();
    let mut ptrs = tfla::fwd_pointers(&inputs, &out);
    ptrs.slots += 2;
    let cfg64 = cfg.with_chunk_size(out.states.chunk_size);
    // SAFETY: rejected before launch (misaligned slots).
    let e = unsafe { tfla::mlstm_fwd_raw(&rt, rt.raw_stream(), &ptrs, dims, Dtype::Bf16, &cfg64) }
        .unwrap_err();
    assert!(matches!(e, Error::Invalid { arg: "slots", .. }), "{e}");
    // Nothing was written.
    rt.synchronize().unwrap();
    assert_eq!([bits(&pool.c), bits(&pool.n), bits(&pool.m)], before);
    // And a valid call does write (the pool of ones changes).
    tfla::mlstm_fwd(&rt, &inputs, &cfg).unwrap();
    rt.synchronize().unwrap();
    assert_ne!(bits(&pool.m), before[2]);
}
