//! Criterion benchmark of the forward pass (regression tracking; the comparison table with
//! the reference kernels is `tfla-bench` / `cargo xtask bench`). Without a GPU it prints that
//! it was skipped and measures nothing.
use criterion::{Criterion, criterion_group, criterion_main};
use rand::Rng;
use tfla::{Dtype, MlstmConfig, MlstmInputs, MlstmOutputs, Runtime, Tensor, registry};

fn forward(c: &mut Criterion) {
    let rt = match Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("SKIPPED forward benchmarks: {e}");
            return;
        }
    };
    let mut rng = rand::thread_rng();
    let (b, nh, s) = (4usize, 8usize, 4096usize);
    for (dqk, dhv) in [(128usize, 128usize), (512, 512)] {
        let mut t = |shape: &[usize], dt, lo: f32, hi: f32| {
            let data: Vec<f32> = (0..shape.iter().product::<usize>())
                .map(|_| rng.gen_range(lo..hi))
                .collect();
            Tensor::from_f32_as(&rt, dt, &data, shape).unwrap()
        };
        let (q, k, v) = (
            t(&[b, nh, s, dqk], Dtype::Bf16, -2.0, 2.0),
            t(&[b, nh, s, dqk], Dtype::Bf16, -2.0, 2.0),
            t(&[b, nh, s, dhv], Dtype::Bf16, -2.0, 2.0),
        );
        let (i, f) = (
            t(&[b, nh, s], Dtype::F32, -4.0, 4.0),
            t(&[b, nh, s], Dtype::F32, 0.0, 6.0),
        );
        let inputs = MlstmInputs::new(&q, &k, &v, &i, &f);
        let dims = inputs.dims().unwrap();
        for entry in registry::KERNELS {
            let cfg = MlstmConfig::new(entry.variant);
            let mut out = MlstmOutputs::alloc(&rt, &dims, Dtype::Bf16, &cfg).unwrap();
            c.bench_function(
                &format!("{} B{b} NH{nh} S{s} {dqk}/{dhv}", entry.name),
                |bench| {
                    bench.iter(|| {
                        tfla::mlstm_fwd_into(&rt, &inputs, &cfg, &mut out).unwrap();
                        rt.synchronize().unwrap();
                    })
                },
            );
        }
    }
}

criterion_group!(benches, forward);
criterion_main!(benches);
