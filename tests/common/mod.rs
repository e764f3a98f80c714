//! Helpers shared by the integration tests: the GPU runtime, inputs rounded to the kernel's
//! precision, and error norms.
#![allow(dead_code)] // each test binary uses a subset

mod bounds;
pub use bounds::*;

use rand::SeedableRng;
use rand::rngs::StdRng;
use tfla::reference::{self, RefGradOutputs, RefInputs, RefOutputs, RefParams, Shape};
use tfla::{DeviceInputs, Dtype, Runtime, Tensor};

/// The runtime for GPU tests. GPU tests are `#[ignore]`d (reported as ignored, never as
/// passed, on machines without a GPU) and run with `--include-ignored`; there a missing device
/// is a failure.
pub fn runtime() -> Runtime {
    Runtime::new().unwrap_or_else(|e| panic!("GPU test run without a usable GPU: {e}"))
}

/// A fresh random generator; the seed is printed so a failure can be replayed with TFLA_SEED.
pub fn rng(test: &str) -> StdRng {
    let seed = std::env::var("TFLA_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("{test}: seed {seed} (replay with TFLA_SEED={seed})");
    StdRng::seed_from_u64(seed)
}

/// Rounds to what `dtype` can hold, so the reference sees exactly the kernel's inputs.
pub fn round_to(dtype: Dtype, x: &[f64]) -> Vec<f64> {
    match dtype {
        Dtype::Bf16 => x
            .iter()
            .map(|&v| half::bf16::from_f64(v).to_f64())
            .collect(),
        Dtype::F16 => x.iter().map(|&v| half::f16::from_f64(v).to_f64()).collect(),
        Dtype::F32 => x.iter().map(|&v| v as f32 as f64).collect(),
    }
}

/// Rounds every tensor of `inp` to its device precision: q, k, v to `dtype`, the rest to f32.
pub fn round_inputs(inp: &mut RefInputs, dtype: Dtype) {
    inp.q = round_to(dtype, &inp.q);
    inp.k = round_to(dtype, &inp.k);
    inp.v = round_to(dtype, &inp.v);
    inp.i = round_to(Dtype::F32, &inp.i);
    inp.f = round_to(Dtype::F32, &inp.f);
    for t in [&mut inp.c0, &mut inp.n0, &mut inp.m0]
        .into_iter()
        .flatten()
    {
        *t = round_to(Dtype::F32, t);
    }
}

pub fn to_f32(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

/// Uploads the reference inputs: q, k, v as `dtype`, the rest as f32.
pub fn upload(rt: &Runtime, inp: &RefInputs, dtype: Dtype) -> DeviceInputs {
    let Shape { b, nh, s, dqk, dhv } = inp.shape;
    let up =
        |dt, x: &[f64], shape: &[usize]| Tensor::from_f32_as(rt, dt, &to_f32(x), shape).unwrap();
    let opt = |x: &Option<Vec<f64>>, shape: &[usize]| x.as_ref().map(|x| up(Dtype::F32, x, shape));
    DeviceInputs {
        q: up(dtype, &inp.q, &[b, nh, s, dqk]),
        k: up(dtype, &inp.k, &[b, nh, s, dqk]),
        v: up(dtype, &inp.v, &[b, nh, s, dhv]),
        i: up(Dtype::F32, &inp.i, &[b, nh, s]),
        f: up(Dtype::F32, &inp.f, &[b, nh, s]),
        c0: opt(&inp.c0, &[b, nh, dqk, dhv]),
        n0: opt(&inp.n0, &[b, nh, dqk]),
        m0: opt(&inp.m0, &[b, nh]),
    }
}

/// The bits of a device tensor's values (as f32: exact for every dtype), for bit-exact
/// comparisons.
pub fn bits(t: &Tensor) -> Vec<u32> {
    t.to_f32_vec()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

/// ‖got − want‖₂ / ‖want‖₂, or +∞ when `got` holds a NaN or ±∞ (which never passes).
pub fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    if got.iter().any(|x| !x.is_finite()) {
        return f64::INFINITY;
    }
    let (mut num, mut den) = (0.0, 0.0);
    for (&g, &w) in got.iter().zip(want) {
        num += (g as f64 - w).powi(2);
        den += w * w;
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// The L2 norm.
pub fn norm(x: &[f64]) -> f64 {
    x.iter().map(|v| v * v).sum::<f64>().sqrt()
}

/// Relative error bound of the forward outputs per input dtype, where `gpu_varlen` and
/// `gpu_step` compare with one norm (`gpu_forward` and `gpu_backward` use the bounds from each
/// case's conditioning in `bounds.rs`). The kernels round P = S ⊙ D, the gate-weighted K and
/// the chunk state C̃_k to the input dtype before each `mma` (accumulating in f32), so errors
/// are a few units of that dtype's rounding (2^-9 for bf16, 2^-12 for f16), relative to the
/// outputs' norm. f32 (the recurrence, no 16-bit rounding)
/// is limited by the normalizer readout instead: a row's h carries its cancellation κ_n times
/// f32 rounding (κ_n ≤ [`max_readout_cancellation`] in the tests), and the rows with the
/// smallest denominators weigh most in the norm. With κ_n up to 1000 that was up to 1.7e-5
/// (mLSTMexp), and once 7.9e-5 (`gpu_varlen`, mLSTMexp f32, seed 16849819465730303908): the
/// draw, not the kernel (its packed and separate outputs agreed exactly).
pub fn fwd_tolerance(dtype: Dtype) -> f64 {
    match dtype {
        Dtype::Bf16 => 1e-2,
        Dtype::F16 => 2e-3,
        Dtype::F32 => 5e-5,
    }
}

/// Relative error bound of backward gradient `name` (dq, dk, dv, di, df, dc0, dn0, dm0) per
/// input dtype, in `gpu_varlen`'s comparisons of a packed batch with each sequence alone (both
/// kernels; the reference comparisons of `gpu_forward` and `gpu_backward` use the bounds from
/// each case's conditioning in `bounds.rs` instead). The kernels round the score matrices P
/// and dP, the state gradients dC̃_k and the gate-weighted operands to the input dtype before
/// each `mma`, and δ_i = ds_i (Exact mode) comes from the 16-bit h and the forward's s_i: in
/// rows where |s_i| is small it dominates dq_i and dk_i and carries twice the relative error
/// of s_i.
/// Measured over the GPU test cases and seeds: typically 2–5e-3 (bf16) and 3e-4 (f16); with
/// the readout's cancellation limited (`limit_readout_cancellation`) and dh_t·h_t's to 10, at
/// most 8.5e-3 and 1.3e-3 over three runs of every case (before: 3e-2 and 1.4e-2, one
/// ill-conditioned row dominating the norm).
pub fn bwd_tolerance(dtype: Dtype, name: &str) -> f64 {
    let base = match dtype {
        Dtype::Bf16 => 3e-2,
        Dtype::F16 => 5e-3,
        // f32 (the reverse recurrence, no 16-bit rounding): 2e-7 where the normalizer
        // readout s = ñᵀq̂ is well conditioned; otherwise the error follows its cancellation
        // κ_n (limited by `limit_readout_cancellation`), since the forward's f32 s carries
        // ~κ_n·1e-7 into ρ = 1/den and δ. Measured over three runs of every case with κ_n up
        // to 1000: at most 9.5e-4 (mLSTMexp, hard gate regimes); the limit is 100 for f32
        // now (`max_readout_cancellation`).
        Dtype::F32 => 5e-3,
    };
    if name == "dn0" { 3.0 * base } else { base }
}

/// A sample of N(0, 1) (Box–Muller).
pub fn normal(rng: &mut impl rand::Rng) -> f64 {
    let u1: f64 = 1.0 - rng.gen_range(0.0..1.0);
    let u2: f64 = rng.gen_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Random upstream gradients ~ N(0, 1): dh always; with `with_final` also dC̃_S, dñ_S and dm_S.
/// dh is rounded to `dtype` and the rest to f32, so the reference sees what the kernels see.
/// Without the normalizer dñ_S is left out: that forward returns ñ = 0, a constant, so the
/// kernels ignore it, while the reference (which carries ñ in every variant) would follow it.
pub fn random_grad_outputs(
    shape: Shape,
    variant: tfla::Variant,
    dtype: Dtype,
    with_final: bool,
    rng: &mut impl rand::Rng,
) -> RefGradOutputs {
    let Shape { s, dqk, dhv, .. } = shape;
    let heads = shape.heads();
    // f16 keeps 30 binades (6e-8 .. 65504) and the backward stores two kinds of intermediates
    // in it: the score tiles of the exact mLSTMexp gradient (∝ (dh·h)/den, large where den is
    // small) and the state gradients dC̃_k (∝ dh, small after long decays). Unscaled N(0, 1)
    // upstream gradients overflowed the first (1 run in ~8), 1/256 sent the second into
    // subnormals (1 run in 5); 1/16 sits between, as a loss scale would in f16 training.
    let loss_scale = if dtype == Dtype::F16 { 1.0 / 16.0 } else { 1.0 };
    let mut normals = |n: usize, dt| {
        round_to(
            dt,
            &(0..n).map(|_| loss_scale * normal(rng)).collect::<Vec<_>>(),
        )
    };
    RefGradOutputs {
        dh: normals(heads * s * dhv, dtype),
        dc: with_final.then(|| normals(heads * dqk * dhv, Dtype::F32)),
        dn: (with_final && variant.normalizes()).then(|| normals(heads * dqk, Dtype::F32)),
        dm: with_final.then(|| normals(heads, Dtype::F32)),
    }
}

/// Owned device copies of the upstream gradients (what [`tfla::MlstmGradOutputs`] borrows).
pub struct DeviceGradOutputs {
    pub dh: Tensor,
    pub dc: Option<Tensor>,
    pub dn: Option<Tensor>,
    pub dm: Option<Tensor>,
}

impl DeviceGradOutputs {
    pub fn as_grad_outputs(&self) -> tfla::MlstmGradOutputs<'_> {
        tfla::MlstmGradOutputs {
            dh: &self.dh,
            dc: self.dc.as_ref(),
            dn: self.dn.as_ref(),
            dm: self.dm.as_ref(),
        }
    }
}

/// Uploads upstream gradients: dh as `dtype`, the final-state gradients as f32.
pub fn upload_grad_outputs(
    rt: &Runtime,
    g: &RefGradOutputs,
    shape: Shape,
    dtype: Dtype,
) -> DeviceGradOutputs {
    let Shape { b, nh, s, dqk, dhv } = shape;
    let up =
        |dt, x: &[f64], shape: &[usize]| Tensor::from_f32_as(rt, dt, &to_f32(x), shape).unwrap();
    let opt = |x: &Option<Vec<f64>>, shape: &[usize]| x.as_ref().map(|x| up(Dtype::F32, x, shape));
    DeviceGradOutputs {
        dh: up(dtype, &g.dh, &[b, nh, s, dhv]),
        dc: opt(&g.dc, &[b, nh, dqk, dhv]),
        dn: opt(&g.dn, &[b, nh, dqk]),
        dm: opt(&g.dm, &[b, nh]),
    }
}

/// A device tensor's values as f64 (for comparisons between two device results).
pub fn to_f64(t: &Tensor) -> Vec<f64> {
    t.to_f32_vec().unwrap().iter().map(|&x| x as f64).collect()
}

/// A hard gate regime of the GPU tests: its name and (ĩ_t, f̃_t) at step t.
pub type GateRegime = (&'static str, fn(usize) -> (f64, f64));

/// Forget gates near 0 (a reset nearly every step) and near 1 (long memory, |ñᵀq| far below
/// ‖ñ‖‖q‖), rare input gates large enough to move the max state, and both gates at ±30 in a
/// mixed pattern (forgetting all but e⁻³⁰ of the state, or nothing; input gates of e^±30).
pub const HARD_GATES: [GateRegime; 4] = [
    ("forget≈0", |t| {
        (((t * 7) % 13) as f64 - 6.0, -9.0 + (t % 3) as f64)
    }),
    ("forget≈1", |t| {
        (((t * 5) % 11) as f64 - 5.0, 12.0 + (t % 4) as f64)
    }),
    ("big input gates", |t| {
        let i = if t.is_multiple_of(17) {
            25.0
        } else {
            ((t * 3) % 9) as f64
        };
        (i, 2.0)
    }),
    ("gates at ±30", |t| {
        let i = [30.0, -30.0, 1.0, -30.0, 30.0, 0.0, -2.0][t % 7];
        let f = [30.0, 30.0, -30.0, 30.0, 3.0][t % 5];
        (i, f)
    }),
];

/// Largest cancellation a test row's normalizer readout may have, κ_n = ‖ñ_t ∘ q̂_t‖ / den_t,
/// per input dtype. The readout runs in f32 in every dtype, so a row's h and gradients carry
/// ~κ_n · 1e-7: beside 16-bit rounding (and the 16-bit tolerances) κ_n = 1000 is harmless,
/// but at the f32 forward bound (5e-5) one such row can be the whole error.
pub fn max_readout_cancellation(dtype: Dtype) -> f64 {
    match dtype {
        Dtype::F32 => 100.0,
        Dtype::Bf16 | Dtype::F16 => 1000.0,
    }
}

/// Redraws q_t (fresh N(0, 1), rounded to `dtype`) for every row whose normalizer readout
/// s_t = ñ_tᵀq̂_t cancels by more than [`max_readout_cancellation`], until none does (q_t
/// enters only row t's readout, so nothing else moves). There the denominator carries κ_n
/// times the rounding of any implementation's s_t, and that row's h, and gradients ∝ 1/den_t,
/// can dominate every norm a test measures: one row of κ_n = 5·10⁴ put 3% on all bf16
/// gradients, one of 10⁴ 2e-3 on f32 ones, measuring the draw, not the kernels. Such rows
/// are rare (the tail of 1/|cos|) but the hard gate regimes make them likelier.
pub fn limit_readout_cancellation(
    inp: &mut RefInputs,
    variant: tfla::Variant,
    dtype: Dtype,
    rng: &mut impl rand::Rng,
) {
    if !variant.normalizes() {
        return;
    }
    let p = RefParams::new(variant, inp.shape.dqk);
    let dqk = inp.shape.dqk;
    let limit = max_readout_cancellation(dtype);
    for _ in 0..100 {
        let t = reference::readout_terms(inp, &p);
        let rows: Vec<usize> = (0..t.den.len())
            .filter(|&r| t.nq_norm[r] > limit * t.den[r])
            .collect();
        if rows.is_empty() {
            return;
        }
        for r in rows {
            let fresh: Vec<f64> = (0..dqk).map(|_| normal(rng)).collect();
            inp.q[r * dqk..(r + 1) * dqk].copy_from_slice(&round_to(dtype, &fresh));
        }
    }
    panic!("rows still cancel by more than {limit} after 100 redraws");
}

/// The reference forward of `inp` and of [`SAMPLES`] copies of it moved by their rounding in
/// a `dtype` kernel ([`perturbed_inputs`]): what [`check_rows`] bounds a kernel's outputs by.
pub fn forward_with_samples(
    inp: &RefInputs,
    variant: tfla::Variant,
    dtype: Dtype,
    rng: &mut impl rand::Rng,
) -> (RefOutputs, Vec<RefOutputs>) {
    let p = RefParams::new(variant, inp.shape.dqk);
    let samples = (0..SAMPLES)
        .map(|_| reference::recurrent(&perturbed_inputs(inp, dtype, rng), &p))
        .collect();
    (reference::recurrent(inp, &p), samples)
}

/// Prints one line of verdicts; true when every output is within its bound (NaN never is).
pub fn report(label: &str, verdicts: &[(&str, Verdict)]) -> bool {
    let ok = verdicts.iter().all(|(_, v)| v.ok());
    let line: Vec<String> = verdicts.iter().map(|(n, v)| format!("{n} {v}")).collect();
    eprintln!(
        "{} {label}: {}",
        if ok { "ok  " } else { "FAIL" },
        line.join(", ")
    );
    ok
}

/// `pick` of every sample, as [`check_rows`] takes them.
pub fn views<'a, T>(samples: &'a [T], pick: impl Fn(&'a T) -> &'a [f64]) -> Vec<&'a [f64]> {
    samples.iter().map(pick).collect()
}

/// Moves the inputs off the points where the exact gradient jumps (`reference::kink_margins`).
/// Where |s_t| meets its floor, the gradient through the denominator switches on or off; any
/// finite-precision readout may land on either side within its rounding, about u·‖ñ_t∘q̂_t‖
/// (u the dtype's unit roundoff), and there both answers are right and the test could only
/// measure the jump. So a row whose margin to the floor is under 2% plus three times that
/// rounding gets a fresh q_t (only row t's readout moves). Where the max state's branches are
/// within 1e-3, ĩ_t moves by 0.01 away from the tie (one step per head and round: moving it
/// shifts the max state of the steps after it; m is f32 in every dtype).
pub fn away_from_kinks(
    inp: &mut RefInputs,
    variant: tfla::Variant,
    dtype: Dtype,
    rng: &mut impl rand::Rng,
) {
    let p = RefParams::new(variant, inp.shape.dqk);
    let (s, dqk) = (inp.shape.s, inp.shape.dqk);
    let u = unit_roundoff(dtype);
    for _ in 0..200 {
        let m = reference::kink_margins(inp, &p);
        let mut moved = false;
        for (row, (&den, &terms)) in m.den.iter().zip(&m.readout_terms).enumerate() {
            if den < 2e-2 + 3.0 * u * terms {
                let fresh: Vec<f64> = (0..dqk).map(|_| normal(rng)).collect();
                inp.q[row * dqk..(row + 1) * dqk].copy_from_slice(&fresh);
                moved = true;
            }
        }
        for (bh, branch) in m.branch.chunks_exact(s).enumerate() {
            if let Some(t) = branch.iter().position(|b| b.abs() < 1e-3) {
                inp.i[bh * s + t] += if branch[t] >= 0.0 { -1e-2 } else { 1e-2 };
                moved = true;
            }
        }
        if !moved {
            return;
        }
        round_inputs(inp, dtype);
    }
    panic!("inputs still within rounding of a kink after 200 rounds of moving them off");
}
