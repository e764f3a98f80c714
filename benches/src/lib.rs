//! Shared pieces of the benchmarks (the `tfla-bench` binary and the criterion benches).
use rand::Rng;
use tfla::{Dtype, Runtime, Tensor};

/// A device tensor of `shape` with values uniform in [lo, hi) (never all zeros), in `dtype`.
pub fn random_tensor(
    rt: &Runtime,
    rng: &mut impl Rng,
    dtype: Dtype,
    shape: &[usize],
    lo: f32,
    hi: f32,
) -> Tensor {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.gen_range(lo..hi)).collect();
    Tensor::from_f32_as(rt, dtype, &data, shape).expect("upload")
}
