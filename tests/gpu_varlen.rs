//! Packed variable-length batches (`tfla::varlen`) on the GPU: one call over sequences of
//! lengths 1, 15, 16, 17, L − 1, L, L + 1 and 3L + 5 equals running each sequence alone
//! (forward outputs, final states, every gradient), and its h matches the float64 reference;
//! every variant, bf16, f16 and f32, with and without initial states, both gradient modes,
//! small heads and heads that take the wide chunk-state tile, and small heads at L = 128 (the
//! one-kernel forward);
//! every output poisoned before its call (the packed ones allocated once, written by the
//! `_into` calls); bad offsets and states get typed errors.
//!
//! These tests need an NVIDIA GPU (8.0 or later; Hopper runs the sm_90a module, TFLA_PORTABLE=1
//! the sm_80 one): they are `#[ignore]`d so a machine without one
//! reports them as ignored; run them with `cargo test -- --include-ignored` (there a missing
//! GPU is a failure, see `common::runtime`). Every case prints its measured errors.
mod common;

use common::*;
use tfla::reference::{self, RefGradOutputs, RefInputs, RefParams, Shape};
use tfla::{
    Dtype, Error, GradMode, MlstmConfig, MlstmGradOutputs, Runtime, Tensor, Variant, VarlenInputs,
};

const EXP: Variant = Variant::Exp;
const SIG: Variant = Variant::Sig { normalize: true };
const SIG_NONORM: Variant = Variant::Sig { normalize: false };
const L: usize = 64;
const LENGTHS: [usize; 8] = [1, 15, 16, 17, L - 1, L, L + 1, 3 * L + 5];
const NH: usize = 2;
const DQK: usize = 32;
const DHV: usize = 48;
/// (DQK, DHV) of most cases, and of the cases that run the wide chunk-state tile.
const SMALL: (usize, usize) = (DQK, DHV);
const WIDE: (usize, usize) = (144, 272);

/// One sequence's inputs and upstream gradients (B = 1), rounded as the kernels see them.
struct Seq {
    inp: RefInputs,
    g: RefGradOutputs,
}

/// Per-step rows of (1, NH, S, D) head-major data, concatenated over the sequences into the
/// packed (T, NH, D) layout.
fn pack(parts: &[&[f64]], lens: &[usize], d: usize) -> Vec<f64> {
    let mut out = Vec::new();
    for (x, &s) in parts.iter().zip(lens) {
        for t in 0..s {
            for h in 0..NH {
                out.extend_from_slice(&x[(h * s + t) * d..(h * s + t + 1) * d]);
            }
        }
    }
    out
}

/// The per-sequence (1, NH, S, D) data of a packed (T, NH, D) vector, concatenated.
fn unpack(x: &[f32], lens: &[usize], d: usize) -> Vec<f32> {
    let mut out = Vec::new();
    let mut t0 = 0;
    for &s in lens {
        for h in 0..NH {
            for t in t0..t0 + s {
                out.extend_from_slice(&x[(t * NH + h) * d..(t * NH + h + 1) * d]);
            }
        }
        t0 += s;
    }
    out
}

fn up(rt: &Runtime, dtype: Dtype, x: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_f32_as(rt, dtype, &to_f32(x), shape).unwrap()
}

fn concat(parts: impl Iterator<Item = Vec<f64>>) -> Vec<f64> {
    parts.flatten().collect()
}

/// Runs one packed call and one call per sequence; returns the errors of the packed results
/// against the separate ones (and of h against the reference), each at its tolerance.
fn check(
    rt: &Runtime,
    variant: Variant,
    dtype: Dtype,
    mode: GradMode,
    with_init: bool,
    ((dqk, dhv), chunk): ((usize, usize), usize),
    rng: &mut impl rand::Rng,
) -> Vec<(&'static str, f64, f64)> {
    let seqs: Vec<Seq> = LENGTHS
        .iter()
        .map(|&s| {
            let shape = Shape {
                b: 1,
                nh: NH,
                s,
                dqk,
                dhv,
            };
            let mut inp = RefInputs::random(shape, with_init, rng);
            round_inputs(&mut inp, dtype);
            limit_readout_cancellation(&mut inp, variant, dtype, rng);
            let g = random_grad_outputs(shape, variant, dtype, true, rng);
            Seq { inp, g }
        })
        .collect();
    let lens = &LENGTHS[..];
    let total: usize = lens.iter().sum();
    let n = lens.len();
    let mut cu = vec![0u32];
    for &s in lens {
        cu.push(cu[cu.len() - 1] + s as u32);
    }
    let cfg = MlstmConfig {
        row_stats: true,
        ..MlstmConfig::new(variant).with_chunk_size(chunk)
    };

    // The packed call.
    let field = |f: fn(&Seq) -> &[f64], d| pack(&seqs.iter().map(f).collect::<Vec<_>>(), lens, d);
    let f32_ = Dtype::F32;
    let q = up(rt, dtype, &field(|s| &s.inp.q, dqk), &[total, NH, dqk]);
    let k = up(rt, dtype, &field(|s| &s.inp.k, dqk), &[total, NH, dqk]);
    let v = up(rt, dtype, &field(|s| &s.inp.v, dhv), &[total, NH, dhv]);
    let i = up(rt, f32_, &field(|s| &s.inp.i, 1), &[total, NH]);
    let f = up(rt, f32_, &field(|s| &s.inp.f, 1), &[total, NH]);
    let states = |x: fn(&Seq) -> Option<&Vec<f64>>, shape: &[usize]| {
        with_init.then(|| {
            up(
                rt,
                f32_,
                &concat(seqs.iter().map(|s| x(s).unwrap().clone())),
                shape,
            )
        })
    };
    let c0 = states(|s| s.inp.c0.as_ref(), &[n, NH, dqk, dhv]);
    let n0 = states(|s| s.inp.n0.as_ref(), &[n, NH, dqk]);
    let m0 = states(|s| s.inp.m0.as_ref(), &[n, NH]);
    let inp = VarlenInputs {
        c0: c0.as_ref(),
        n0: n0.as_ref(),
        m0: m0.as_ref(),
        ..VarlenInputs::new(&q, &k, &v, &i, &f, &cu)
    };
    // Into allocated outputs, poisoned (the allocating calls wrap these).
    let mut out = tfla::VarlenOutputs::alloc(rt, &inp, &cfg).unwrap();
    for t in [&mut out.h, &mut out.c, &mut out.n, &mut out.m] {
        t.fill_nan().unwrap();
    }
    tfla::mlstm_fwd_varlen_into(rt, &inp, &cfg, &mut out).unwrap();
    let dh = up(rt, dtype, &field(|s| &s.g.dh, dhv), &[total, NH, dhv]);
    let dc = up(
        rt,
        f32_,
        &concat(seqs.iter().map(|s| s.g.dc.clone().unwrap())),
        &[n, NH, dqk, dhv],
    );
    let dn = variant.normalizes().then(|| {
        up(
            rt,
            f32_,
            &concat(seqs.iter().map(|s| s.g.dn.clone().unwrap())),
            &[n, NH, dqk],
        )
    });
    let dm = up(
        rt,
        f32_,
        &concat(seqs.iter().map(|s| s.g.dm.clone().unwrap())),
        &[n, NH],
    );
    let grad = MlstmGradOutputs {
        dh: &dh,
        dc: Some(&dc),
        dn: dn.as_ref(),
        dm: Some(&dm),
    };
    let mut grads = tfla::VarlenGrads::alloc(rt, &inp, &out).unwrap();
    for t in [
        &mut grads.dq,
        &mut grads.dk,
        &mut grads.dv,
        &mut grads.di,
        &mut grads.df,
    ] {
        t.fill_nan().unwrap();
    }
    for t in [&mut grads.dc0, &mut grads.dn0, &mut grads.dm0]
        .into_iter()
        .flatten()
    {
        t.fill_nan().unwrap();
    }
    tfla::mlstm_bwd_varlen_into(rt, &inp, &out, &grad, &cfg, mode, &mut grads).unwrap();
    rt.synchronize().unwrap();

    // One call per sequence, outputs poisoned.
    let mut sep: std::collections::HashMap<&str, Vec<f32>> = Default::default();
    let mut reference_h = Vec::new();
    for s in &seqs {
        let dev = upload(rt, &s.inp, dtype);
        let dev_g = upload_grad_outputs(rt, &s.g, s.inp.shape, dtype);
        let inputs = dev.as_inputs();
        let mut fwd = tfla::MlstmOutputs::alloc(rt, &inputs.dims().unwrap(), dtype, &cfg).unwrap();
        fwd.h.fill_nan().unwrap();
        tfla::mlstm_fwd_into(rt, &inputs, &cfg, &mut fwd).unwrap();
        let g = tfla::mlstm_bwd(rt, &inputs, &fwd, &dev_g.as_grad_outputs(), &cfg, mode).unwrap();
        rt.synchronize().unwrap();
        let mut push = |name: &'static str, t: Option<&Tensor>| {
            if let Some(t) = t {
                sep.entry(name).or_default().extend(t.to_f32_vec().unwrap());
            }
        };
        push("h", Some(&fwd.h));
        push("c", Some(&fwd.c));
        push("n", Some(&fwd.n));
        push("m", Some(&fwd.m));
        push("dq", Some(&g.dq));
        push("dk", Some(&g.dk));
        push("dv", Some(&g.dv));
        push("di", Some(&g.di));
        push("df", Some(&g.df));
        push("dc0", g.dc0.as_ref());
        push("dn0", g.dn0.as_ref());
        push("dm0", g.dm0.as_ref());
        let p = RefParams::new(variant, dqk);
        reference_h.extend(reference::recurrent(&s.inp, &p).h);
    }

    let packed = |t: &Tensor, d| unpack(&t.to_f32_vec().unwrap(), lens, d);
    let whole = |t: &Tensor| t.to_f32_vec().unwrap();
    let rel = |name: &str, got: Vec<f32>| {
        let want: Vec<f64> = sep[name].iter().map(|&x| x as f64).collect();
        rel_err(&got, &want)
    };
    let fwd_tol = fwd_tolerance(dtype);
    let mut errs = vec![
        ("h", rel("h", packed(&out.h, dhv)), fwd_tol),
        (
            "h vs f64",
            rel_err(&packed(&out.h, dhv), &reference_h),
            fwd_tol,
        ),
        ("c", rel("c", whole(&out.c)), fwd_tol),
        ("m", rel("m", whole(&out.m)), fwd_tol),
    ];
    if variant.normalizes() {
        errs.push(("n", rel("n", whole(&out.n)), fwd_tol));
    }
    for (name, t, d) in [
        ("dq", &grads.dq, dqk),
        ("dk", &grads.dk, dqk),
        ("dv", &grads.dv, dhv),
        ("di", &grads.di, 1),
        ("df", &grads.df, 1),
    ] {
        errs.push((name, rel(name, packed(t, d)), bwd_tolerance(dtype, name)));
    }
    for (name, t) in [
        ("dc0", &grads.dc0),
        ("dn0", &grads.dn0),
        ("dm0", &grads.dm0),
    ] {
        if let Some(t) = t {
            errs.push((name, rel(name, whole(t)), bwd_tolerance(dtype, name)));
        }
    }
    errs
}

#[test]
#[ignore = "needs an NVIDIA GPU (compute capability 8.0 or later); run with --include-ignored"]
fn packed_batch_equals_each_sequence_alone() {
    let rt = runtime();
    let mut rng = rng("packed_batch_equals_each_sequence_alone");
    let mut failures = Vec::new();
    let mut cases = Vec::new();
    for variant in [EXP, SIG, SIG_NONORM] {
        for dtype in [Dtype::Bf16, Dtype::F32] {
            cases.push((variant, dtype, GradMode::Exact, true, SMALL));
        }
    }
    cases.push((EXP, Dtype::F16, GradMode::Exact, false, SMALL));
    cases.push((EXP, Dtype::Bf16, GradMode::DetachedNormalizer, false, SMALL));
    cases.push((SIG, Dtype::F32, GradMode::DetachedNormalizer, false, SMALL));
    // Heads large enough for the wide chunk-state tile (`fwd::wide_state`), partial tiles both
    // ways, so the packed walk runs through that kernel too.
    cases.push((EXP, Dtype::Bf16, GradMode::Exact, true, WIDE));
    cases.push((SIG_NONORM, Dtype::Bf16, GradMode::Exact, false, WIDE));
    let mut cases: Vec<_> = cases.into_iter().map(|c| (c, L)).collect();
    // L = 128 with small heads runs the one-kernel forward (`fwd::fused`), whose blocks walk
    // one sequence each; the lengths are then all within one or two chunks.
    for variant in [EXP, SIG, SIG_NONORM] {
        cases.push(((variant, Dtype::Bf16, GradMode::Exact, true, SMALL), 2 * L));
    }
    // L = 256 with wide heads: the state gradients on `wgmma` in sm_90a builds
    // (`bwd::state_wg::applies`), each sequence within one chunk.
    for variant in [EXP, SIG] {
        cases.push(((variant, Dtype::Bf16, GradMode::Exact, true, WIDE), 4 * L));
    }
    for ((variant, dtype, mode, with_init, dims), chunk) in cases {
        let errs = check(
            &rt,
            variant,
            dtype,
            mode,
            with_init,
            (dims, chunk),
            &mut rng,
        );
        let ok = errs.iter().all(|&(_, e, tol)| e <= tol);
        let line: Vec<String> = errs
            .iter()
            .map(|(n, e, _)| format!("{n} {e:.2e}"))
            .collect();
        let label =
            format!("{variant:?} {dtype:?} {mode:?} init {with_init} dims {dims:?} L {chunk}");
        println!(
            "{} {label}: {}",
            if ok { "ok  " } else { "FAIL" },
            line.join(", ")
        );
        if !ok {
            failures.push(label);
        }
    }
    assert!(failures.is_empty(), "over tolerance: {failures:?}");
}

#[test]
#[ignore = "needs an NVIDIA GPU (compute capability 8.0 or later); run with --include-ignored"]
fn bad_offsets_and_states_get_typed_errors() {
    let rt = runtime();
    let z = |dtype, shape: &[usize]| Tensor::zeros(&rt, dtype, shape).unwrap();
    let (t, n) = (40, 3);
    let (q, k) = (z(Dtype::Bf16, &[t, NH, DQK]), z(Dtype::Bf16, &[t, NH, DQK]));
    let v = z(Dtype::Bf16, &[t, NH, DHV]);
    let (i, f) = (z(Dtype::F32, &[t, NH]), z(Dtype::F32, &[t, NH]));
    let cfg = MlstmConfig::new(EXP).with_chunk_size(L);
    let fwd = |cu: &[u32], c0: Option<&Tensor>, n0: Option<&Tensor>| {
        let inp = VarlenInputs {
            c0,
            n0,
            ..VarlenInputs::new(&q, &k, &v, &i, &f, cu)
        };
        tfla::mlstm_fwd_varlen(&rt, &inp, &cfg).err()
    };
    let invalid = |e: Option<Error>, arg: &str, part: &str| match e {
        Some(Error::Invalid { arg: a, value, .. }) if a == arg && value.contains(part) => {}
        other => panic!("expected Error::Invalid on `{arg}` ({part}), got {other:?}"),
    };
    assert!(fwd(&[0, 1, 16, 40], None, None).is_none());
    // Not increasing, last ≠ T, too short, not from 0.
    invalid(
        fwd(&[0, 16, 16, 40], None, None),
        "cu_seqlens",
        "cu_seqlens[2] = 16",
    );
    invalid(
        fwd(&[0, 20, 10, 40], None, None),
        "cu_seqlens",
        "cu_seqlens[2] = 10",
    );
    invalid(fwd(&[0, 1, 16, 41], None, None), "cu_seqlens", "T = 40");
    invalid(fwd(&[0], None, None), "cu_seqlens", "1 offsets");
    invalid(
        fwd(&[3, 16, 40], None, None),
        "cu_seqlens",
        "cu_seqlens[0] = 3",
    );
    // States for another number of sequences: the offsets' length is named.
    let c0 = z(Dtype::F32, &[n + 1, NH, DQK, DHV]);
    invalid(
        fwd(&[0, 1, 16, 40], Some(&c0), None),
        "cu_seqlens",
        "holds 4 sequences",
    );
    // A state of the right count but the wrong shape.
    let n0 = z(Dtype::F32, &[n, NH, DQK + 16]);
    match fwd(&[0, 1, 16, 40], None, Some(&n0)) {
        Some(Error::Shape { arg: "n0", .. }) => {}
        other => panic!("expected Error::Shape on n0, got {other:?}"),
    }
    // The backward checks its upstream gradients the same way.
    let cu = [0u32, 1, 16, 40];
    let inp = VarlenInputs::new(&q, &k, &v, &i, &f, &cu);
    let rs = MlstmConfig {
        row_stats: true,
        ..cfg
    };
    let out = tfla::mlstm_fwd_varlen(&rt, &inp, &rs).unwrap();
    let dh = z(Dtype::Bf16, &[t, NH, DHV]);
    let dm = z(Dtype::F32, &[n + 2, NH]);
    let grad = MlstmGradOutputs {
        dh: &dh,
        dc: None,
        dn: None,
        dm: Some(&dm),
    };
    let e = tfla::mlstm_bwd_varlen(&rt, &inp, &out, &grad, &rs, GradMode::Exact).err();
    invalid(e, "cu_seqlens", "holds 5 sequences");
    let cu2 = [0u32, 2, 16, 40];
    let other = VarlenInputs::new(&q, &k, &v, &i, &f, &cu2);
    let grad = MlstmGradOutputs { dm: None, ..grad };
    let e = tfla::mlstm_bwd_varlen(&rt, &other, &out, &grad, &rs, GradMode::Exact).err();
    invalid(e, "cu_seqlens", "4 offsets");
    // Without row statistics the normalized backward cannot run.
    let out = tfla::mlstm_fwd_varlen(&rt, &inp, &cfg).unwrap();
    let e = tfla::mlstm_bwd_varlen(&rt, &inp, &out, &grad, &cfg, GradMode::Exact).err();
    invalid(e, "fwd.row_stats", "None");
}
