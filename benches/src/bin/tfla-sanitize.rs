//! Launches every kernel entry of the loaded module at least once, on shapes that reach the
//! kernels' edges, for compute-sanitizer (`bash run.sh sanitize` runs it under memcheck,
//! racecheck, initcheck and synccheck): ragged tails including one-row chunks, S = 1, every
//! chunk size, small, wide and `wgmma` heads, initial states, both gradient modes, bf16, f16
//! and f32, forwards no backward follows (no chunk states stored), a packed variable-length
//! batch, the step kernel with f32 and bf16 states and a state pool. Every output is checked to be finite; at the end the entries never launched
//! are listed, and any makes the run fail (a shape matrix that misses a kernel is a hole in
//! the check, not a pass).
//!
//! Usage: tfla-sanitize (the module by the device, `TFLA_PORTABLE=1` for the sm_80 one).
use tfla::{
    Dtype, GradMode, MlstmConfig, MlstmGradOutputs, Runtime, Slots, StatePool, StepStates, Tensor,
    Variant, mlstm_bwd_varlen, mlstm_fwd, mlstm_fwd_bwd, mlstm_fwd_varlen, mlstm_step,
    mlstm_step_pool,
};
use tfla_benches::{RandomInputs, random_tensor};

const VARIANTS: [Variant; 3] = [
    Variant::Exp,
    Variant::Sig { normalize: true },
    Variant::Sig { normalize: false },
];
const DTYPES: [Dtype; 3] = [Dtype::Bf16, Dtype::F16, Dtype::F32];
const MODES: [GradMode; 2] = [GradMode::Exact, GradMode::DetachedNormalizer];

/// The cases that failed (an error or a non-finite output): each is reported and the run goes
/// on, so that one failing case hides none of the kernels after it; any failure fails the run.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn attempt(&mut self, what: &str, case: impl FnOnce() -> Result<(), String>) {
        if let Err(e) = case() {
            self.0.push(format!("{what}: {e}"));
        }
    }
}

fn finite(what: &str, t: &Tensor) -> Result<(), String> {
    let values = t.to_f32_vec().map_err(|e| format!("{what}: {e}"))?;
    match values.iter().position(|x| !x.is_finite()) {
        Some(at) => Err(format!("{what}: non-finite value at {at}")),
        None => Ok(()),
    }
}

/// (B, NH, S, DQK, DHV, chunk): a one-row tail chunk on small heads (the fused forward and
/// the one-kernel chunk gradients), S = 1, each chunk size with a ragged tail, the wide heads
/// (wide state tile, `wgmma` state and output kernels on sm_90a) at L = 128 and 256.
const SHAPES: [(usize, usize, usize, usize, usize, Option<usize>); 10] = [
    (1, 2, 129, 16, 16, None),
    (1, 1, 1, 16, 32, None),
    (1, 1, 100, 64, 64, Some(64)),
    (1, 1, 300, 64, 64, Some(128)),
    (1, 1, 300, 64, 64, Some(256)),
    (1, 1, 600, 32, 32, Some(512)),
    (1, 1, 1100, 32, 32, Some(1024)),
    (1, 1, 260, 128, 256, Some(128)),
    (1, 1, 260, 128, 256, Some(256)),
    (1, 1, 129, 144, 272, Some(128)),
];

fn chunkwise(rt: &Runtime, failures: &mut Failures) -> usize {
    let mut runs = 0;
    for &(b, nh, s, dqk, dhv, chunk) in &SHAPES {
        for dtype in DTYPES {
            let x = RandomInputs::new(rt, dtype, &[b, nh, s], dqk, dhv);
            let mut rng = rand::thread_rng();
            let c0 = random_tensor(rt, &mut rng, Dtype::F32, &[b, nh, dqk, dhv], -0.1, 0.1);
            let n0 = random_tensor(rt, &mut rng, Dtype::F32, &[b, nh, dqk], 0.0, 0.1);
            let m0 = random_tensor(rt, &mut rng, Dtype::F32, &[b, nh], -0.5, 0.5);
            for variant in VARIANTS {
                for mode in MODES {
                    let mut cfg = MlstmConfig::new(variant);
                    cfg.chunk_size = chunk;
                    let mut inputs = x.mlstm();
                    // Initial states on every other run: both paths of the state kernels.
                    if runs % 2 == 1 {
                        inputs.c0 = Some(&c0);
                        inputs.n0 = Some(&n0);
                        inputs.m0 = Some(&m0);
                    }
                    let what = format!(
                        "{variant:?} {dtype:?} {mode:?} ({b}, {nh}, {s}, {dqk}, {dhv}) L={chunk:?}"
                    );
                    failures.attempt(&what, || {
                        let (out, grads) =
                            mlstm_fwd_bwd(rt, &inputs, &MlstmGradOutputs::new(&x.dh), &cfg, mode)
                                .map_err(|e| e.to_string())?;
                        for (name, t) in [
                            ("h", &out.h),
                            ("c", &out.c),
                            ("dq", &grads.dq),
                            ("dk", &grads.dk),
                            ("dv", &grads.dv),
                            ("di", &grads.di),
                            ("df", &grads.df),
                        ] {
                            finite(name, t)?;
                        }
                        Ok(())
                    });
                    runs += 1;
                }
            }
        }
    }
    runs
}

/// Forwards no backward follows (no row statistics) at the one-kernel forward's heads and L:
/// where the device runs it, the outputs hold no chunk states and the kernel stores none.
fn forward_alone(rt: &Runtime, failures: &mut Failures) -> usize {
    let mut runs = 0;
    for (b, nh, s, dqk, dhv) in [(1, 2, 129, 16, 16), (1, 1, 300, 128, 128)] {
        for dtype in [Dtype::Bf16, Dtype::F16] {
            let x = RandomInputs::new(rt, dtype, &[b, nh, s], dqk, dhv);
            for variant in VARIANTS {
                let cfg = MlstmConfig::new(variant).with_chunk_size(128);
                let what =
                    format!("forward alone {variant:?} {dtype:?} ({b}, {nh}, {s}, {dqk}, {dhv})");
                failures.attempt(&what, || {
                    let out = mlstm_fwd(rt, &x.mlstm(), &cfg).map_err(|e| e.to_string())?;
                    finite("h", &out.h)?;
                    finite("c", &out.c)
                });
                runs += 1;
            }
        }
    }
    runs
}

fn packed(rt: &Runtime, failures: &mut Failures) -> usize {
    let cu = [0u32, 5, 134, 135, 400];
    let mut runs = 0;
    for dtype in DTYPES {
        let x = RandomInputs::new(rt, dtype, &[400, 2], 64, 64);
        for variant in VARIANTS {
            for mode in MODES {
                // The backward of the normalized variants reads the forward's row statistics.
                let cfg = MlstmConfig {
                    row_stats: true,
                    ..MlstmConfig::new(variant).with_chunk_size(64)
                };
                let inp = x.varlen(&cu);
                let what = format!("packed {variant:?} {dtype:?} {mode:?}");
                failures.attempt(&what, || {
                    let out = mlstm_fwd_varlen(rt, &inp, &cfg).map_err(|e| e.to_string())?;
                    let dh = MlstmGradOutputs::new(&x.dh);
                    let grads = mlstm_bwd_varlen(rt, &inp, &out, &dh, &cfg, mode)
                        .map_err(|e| e.to_string())?;
                    finite("h", &out.h)?;
                    finite("dq", &grads.dq)
                });
                runs += 1;
            }
        }
    }
    runs
}

fn steps(rt: &Runtime, failures: &mut Failures) -> usize {
    let (b, nh) = (2, 3);
    let mut runs = 0;
    for &(dqk, dhv) in &[(16, 16), (64, 128), (256, 512)] {
        for dtype in DTYPES {
            let x = RandomInputs::new(rt, dtype, &[b, nh], dqk, dhv);
            for variant in VARIANTS {
                let cfg = MlstmConfig::new(variant);
                for state_dtype in [Dtype::F32, Dtype::Bf16] {
                    let what =
                        format!("step {variant:?} {dtype:?} state {state_dtype:?} {dqk}/{dhv}");
                    failures.attempt(&what, || {
                        let mut states = StepStates::alloc_zeros(rt, b, nh, dqk, dhv, state_dtype)
                            .map_err(|e| e.to_string())?;
                        for _ in 0..2 {
                            let h = mlstm_step(rt, &x.step(), &mut states, &cfg)
                                .map_err(|e| e.to_string())?;
                            finite("h", &h)?;
                        }
                        Ok(())
                    });
                    runs += 1;
                }
                let what = format!("step pool {variant:?} {dtype:?} {dqk}/{dhv}");
                failures.attempt(&what, || {
                    let mut pool =
                        StatePool::alloc_zeros(rt, 5, nh, dqk, dhv).map_err(|e| e.to_string())?;
                    let slots = Slots::new(rt, &[3, 1]).map_err(|e| e.to_string())?;
                    let h = mlstm_step_pool(rt, &x.step(), &mut pool, &slots, &cfg)
                        .map_err(|e| e.to_string())?;
                    finite("h", &h)?;
                    // A prefill into the pool's slots: the forward's state-pool path.
                    let seq = RandomInputs::new(rt, dtype, &[b, nh, 70], dqk, dhv);
                    let pooled = seq.mlstm().with_pool(&pool, &slots);
                    let out =
                        tfla::mlstm_fwd(rt, &pooled, &cfg).map_err(|e| format!("prefill: {e}"))?;
                    finite("prefill h", &out.h)
                });
                runs += 2;
            }
        }
    }
    runs
}

fn main() {
    let rt = Runtime::new().unwrap_or_else(|e| {
        eprintln!("tfla-sanitize: {e}");
        std::process::exit(2)
    });
    let mut failures = Failures::default();
    let runs = chunkwise(&rt, &mut failures)
        + forward_alone(&rt, &mut failures)
        + packed(&rt, &mut failures)
        + steps(&rt, &mut failures);
    rt.synchronize().unwrap_or_else(|e| panic!("{e}"));
    for f in &failures.0 {
        eprintln!("tfla-sanitize: {f}");
    }
    let launched = rt.launched_entries();
    // (The `mma.sync` kernels the plan does not reach here are the sm_80 module's run's:
    // `TFLA_PORTABLE=1`.)
    let reachable = |e: &str| rt.plan_reaches(e);
    let missing: Vec<String> = tfla_ptx_build::entry_points(rt.arch().ptx())
        .into_iter()
        .filter(|e| reachable(e) && !launched.contains(&e.as_str()))
        .collect();
    println!(
        "tfla-sanitize: {runs} calls on the {} module, {} entries launched",
        rt.arch().name(),
        launched.len()
    );
    if !missing.is_empty() {
        eprintln!(
            "tfla-sanitize: entries never launched: {}",
            missing.join(", ")
        );
    }
    if !failures.0.is_empty() || !missing.is_empty() {
        std::process::exit(1);
    }
}
