//! Shared pieces of the benchmarks (the `tfla-bench` binary and the criterion benches).
pub mod clocks;

use rand::Rng;
use tfla::{Dtype, MlstmInputs, Runtime, StepInputs, Tensor, VarlenInputs};

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

/// Random q, k, v and dh in `dtype` (values in [−2, 2), dh in [−1, 1)) and f32 gates (ĩ in
/// [−4, 4), f̃ in [0, 6): forget gates 0.5 … 1), over the leading dims `pre` — [B, NH, S] for
/// the forward, [B, NH] for the step, [T, NH] for a packed batch.
pub struct RandomInputs {
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub i: Tensor,
    pub f: Tensor,
    pub dh: Tensor,
}

impl RandomInputs {
    pub fn new(rt: &Runtime, dtype: Dtype, pre: &[usize], dqk: usize, dhv: usize) -> Self {
        let mut rng = rand::thread_rng();
        let dh_range = if dtype == Dtype::F16 { 1.0 / 16.0 } else { 1.0 };
        let shape = |d: usize| [pre, &[d]].concat();
        let mut t = |shape: &[usize], dt, lo, hi| random_tensor(rt, &mut rng, dt, shape, lo, hi);
        RandomInputs {
            q: t(&shape(dqk), dtype, -2.0, 2.0),
            k: t(&shape(dqk), dtype, -2.0, 2.0),
            v: t(&shape(dhv), dtype, -2.0, 2.0),
            i: t(pre, Dtype::F32, -4.0, 4.0),
            f: t(pre, Dtype::F32, 0.0, 6.0),
            // f16 with a loss scale, as the GPU tests draw it (`random_grad_outputs`): the
            // exact mLSTMexp backward stores score gradients ∝ (dh·h)/den in the input dtype,
            // and unscaled ones pass f16's 65504 where den is small (README, limits).
            dh: t(&shape(dhv), dtype, -dh_range, dh_range),
        }
    }

    /// The forward's view ([B, NH, S] leading dims).
    pub fn mlstm(&self) -> MlstmInputs<'_> {
        MlstmInputs::new(&self.q, &self.k, &self.v, &self.i, &self.f)
    }

    /// The step's view ([B, NH]).
    pub fn step(&self) -> StepInputs<'_> {
        StepInputs::new(&self.q, &self.k, &self.v, &self.i, &self.f)
    }

    /// A packed batch's view ([T, NH]) with offsets `cu_seqlens`.
    pub fn varlen<'a>(&'a self, cu_seqlens: &'a [u32]) -> VarlenInputs<'a> {
        VarlenInputs::new(&self.q, &self.k, &self.v, &self.i, &self.f, cu_seqlens)
    }
}
