//! Criterion benchmarks of the forward pass, forward+backward, the generation step and a packed
//! variable-length batch, for regression tracking (the comparison table with the reference
//! kernels is `tfla-bench` / `cargo xtask bench`). Without a GPU they print that they were
//! skipped and measure nothing.
use criterion::{Criterion, criterion_group, criterion_main};
use tfla::{
    Dtype, GradMode, MlstmConfig, MlstmGradOutputs, MlstmGrads, MlstmOutputs, Runtime, StepStates,
    Tensor, VarlenGrads, VarlenOutputs, registry,
};
use tfla_benches::RandomInputs;

/// The runtime, or None (after saying so) without a GPU.
fn runtime(what: &str) -> Option<Runtime> {
    Runtime::new()
        .map_err(|e| eprintln!("SKIPPED {what} benchmarks: {e}"))
        .ok()
}

const HEADS: [(usize, usize); 2] = [(128, 128), (512, 512)];
const DENSE: [usize; 3] = [4, 8, 4096]; // B, NH, S

fn forward_and_backward(c: &mut Criterion) {
    let Some(rt) = runtime("forward/backward") else {
        return;
    };
    let [b, nh, s] = DENSE;
    for (dqk, dhv) in HEADS {
        let d = RandomInputs::new(&rt, Dtype::Bf16, &DENSE, dqk, dhv);
        let inputs = d.mlstm();
        let dims = inputs.dims().unwrap();
        let grad_out = MlstmGradOutputs::new(&d.dh);
        for entry in registry::KERNELS {
            let cfg = MlstmConfig {
                row_stats: true,
                ..MlstmConfig::new(entry.variant)
            };
            let mut out = MlstmOutputs::alloc(&rt, &dims, Dtype::Bf16, &cfg).unwrap();
            let mut grads = MlstmGrads::alloc(&rt, &inputs, &cfg).unwrap();
            let name = format!("{} B{b} NH{nh} S{s} {dqk}/{dhv}", entry.name);
            c.bench_function(&format!("fwd {name}"), |bench| {
                bench.iter(|| {
                    tfla::mlstm_fwd_into(&rt, &inputs, &cfg, &mut out).unwrap();
                    rt.synchronize().unwrap();
                })
            });
            c.bench_function(&format!("fwd+bwd {name}"), |bench| {
                bench.iter(|| {
                    tfla::mlstm_fwd_into(&rt, &inputs, &cfg, &mut out).unwrap();
                    let mode = GradMode::Exact;
                    tfla::mlstm_bwd_into(&rt, &inputs, &out, &grad_out, &cfg, mode, &mut grads)
                        .unwrap();
                    rt.synchronize().unwrap();
                })
            });
        }
    }
}

fn step(c: &mut Criterion) {
    let Some(rt) = runtime("step") else {
        return;
    };
    let (b, nh, dqk, dhv) = (8, 8, 256, 512);
    let d = RandomInputs::new(&rt, Dtype::Bf16, &[b, nh], dqk, dhv);
    let inputs = d.step();
    let mut h = Tensor::uninit(&rt, Dtype::Bf16, &[b, nh, dhv]).unwrap();
    for state in [Dtype::F32, Dtype::Bf16] {
        let mut states = StepStates::alloc_zeros(&rt, b, nh, dqk, dhv, state).unwrap();
        for entry in registry::KERNELS {
            let cfg = MlstmConfig::new(entry.variant);
            let name = format!(
                "step {} B·NH {} {dqk}/{dhv} {}",
                entry.name,
                b * nh,
                state.name()
            );
            c.bench_function(&name, |bench| {
                bench.iter(|| {
                    tfla::mlstm_step_into(&rt, &inputs, &mut states, &cfg, &mut h).unwrap();
                    rt.synchronize().unwrap();
                })
            });
        }
    }
}

fn varlen(c: &mut Criterion) {
    let Some(rt) = runtime("varlen") else {
        return;
    };
    // 16 sequences of 1 … 4000 steps (a fixed spread), 8 heads, 128/128, L = 64.
    let lens: Vec<u32> = (0..16).map(|n| 1 + n * n * 15).collect();
    let mut cu = vec![0u32];
    for l in &lens {
        cu.push(cu[cu.len() - 1] + l);
    }
    let total = cu[cu.len() - 1] as usize;
    let d = RandomInputs::new(&rt, Dtype::Bf16, &[total, 8], 128, 128);
    let inp = d.varlen(&cu);
    let cfg = MlstmConfig {
        row_stats: true,
        ..MlstmConfig::new(tfla::Variant::Exp).with_chunk_size(64)
    };
    let mut out = VarlenOutputs::alloc(&rt, &inp, &cfg).unwrap();
    tfla::mlstm_fwd_varlen_into(&rt, &inp, &cfg, &mut out).unwrap();
    let mut grads = VarlenGrads::alloc(&rt, &inp, &out).unwrap();
    let grad = MlstmGradOutputs::new(&d.dh);
    c.bench_function(
        &format!("varlen fwd+bwd 16 seqs T{total} NH8 128/128"),
        |bench| {
            bench.iter(|| {
                tfla::mlstm_fwd_varlen_into(&rt, &inp, &cfg, &mut out).unwrap();
                tfla::mlstm_bwd_varlen_into(
                    &rt,
                    &inp,
                    &out,
                    &grad,
                    &cfg,
                    GradMode::Exact,
                    &mut grads,
                )
                .unwrap();
                rt.synchronize().unwrap();
            })
        },
    );
}

criterion_group!(benches, forward_and_backward, step, varlen);
criterion_main!(benches);
