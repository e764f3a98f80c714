//! The recurrent step for generation: one token per head, the states updated in place.
//!
//! Notation: B batch, NH heads, DQK / DHV head dims, BH = B·NH. Inputs q, k (B, NH, DQK),
//! v (B, NH, DHV) in bf16, f16 or f32 and gate pre-activations ĩ, f̃ (B, NH) f32; states
//! C̃ (B, NH, DQK, DHV) in f32 or bf16, ñ (B, NH, DQK) and m (B, NH) f32 ([`StepStates`]);
//! output h (B, NH, DHV) in the input dtype. Per head, with q̂ = q·scale, λ = logσ(f̃) and ι the
//! log input gate (ĩ for mLSTMexp, logσ(ĩ) for mLSTMsig):
//!   m' = max(λ + m, ι) (mLSTMsig: 0), C̃' = e^{λ+m−m'} C̃ + e^{ι−m'} k vᵀ, ñ' likewise with k,
//!   h = C̃'ᵀq̂ / (max(|ñ'ᵀq̂|, e^{−m'}) + eps) (mLSTMsig: floor 1; no normalizer: h = C̃'ᵀq̂),
//! the recurrence of `reference::recurrent` for one step. One launch reads and writes C̃ once
//! (`tfla_params::step`); arithmetic is f32 for every dtype.
//!
//! State dtype: bf16 states halve the bytes a step moves; C̃' is rounded to bf16 each step
//! (unit roundoff u = 2⁻⁸). The rounding errors of past steps decay with the forget gates, so
//! after T steps the relative error of C̃ (and of h, normwise) is about u/√3 · √G_T with
//! G_t = 1 + σ(f̃_t)² G_{t−1} (random-sign rounding, a random walk damped by the gates; G ≤ T,
//! G ≈ 1/(1 − σ(f̃)²) for a constant gate); `tests/gpu_step.rs` measures it. ñ stays f32: the
//! readout ñ'ᵀq̂ can be a small difference of large terms and divides a whole row of h, so a
//! bf16 ñ would turn its rounding into percent-level errors of h (as a one-term 16-bit ñ did in
//! the forward kernels), for 1/DHV of the bytes.
//!
//! State pool (serving engines, [`crate::slots`]): [`mlstm_step_pool`] runs the step on a
//! [`StatePool`] (num_slots, NH, …, f32) instead of [`StepStates`], batch row b updating slot
//! `slots[b]` in place and leaving every other slot untouched; the slots are checked as the
//! forward checks them (length, range, no duplicates: typed errors, nothing launched).
use crate::config::{Dims, MlstmConfig};
use crate::error::{Error, Result};
use crate::forward::{MlstmOutputs, kernel_gates};
use crate::launch::{self, Launch};
use crate::runtime::Runtime;
use crate::slots::{PoolSlots, Slots, StatePool};
use crate::tensor::{Dtype, Tensor, expect_dtype, expect_shape};
use crate::variant::Variant;
use cust::sys::CUstream;
pub use tfla_params::step::StepPointers;
use tfla_params::step::{self, InputDtype, StateDtype, StepParams};

/// The step's inputs: one token per head.
#[derive(Clone, Copy)]
pub struct StepInputs<'a> {
    /// (B, NH, DQK).
    pub q: &'a Tensor,
    /// (B, NH, DQK).
    pub k: &'a Tensor,
    /// (B, NH, DHV).
    pub v: &'a Tensor,
    /// Input-gate pre-activations ĩ: (B, NH) f32.
    pub i: &'a Tensor,
    /// Forget-gate pre-activations f̃: (B, NH) f32.
    pub f: &'a Tensor,
}

/// Dimensions of a step: batch, heads, query/key head dim, value head dim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepDims {
    pub b: usize,
    pub nh: usize,
    pub dqk: usize,
    pub dhv: usize,
}

impl StepDims {
    /// The forward's rules: B, NH ≥ 1, head dims multiples of 16 in 16..=512, B·NH ≤ 65535.
    pub fn validate(&self) -> Result<()> {
        self.as_dims().validate()
    }

    pub fn bh(&self) -> usize {
        self.b * self.nh
    }

    /// As one step of the forward's dimensions (S = 1).
    fn as_dims(&self) -> Dims {
        Dims {
            b: self.b,
            nh: self.nh,
            s: 1,
            dqk: self.dqk,
            dhv: self.dhv,
        }
    }

    /// Bytes one step must move at least, each tensor once: C̃ read and written (in
    /// `state_dtype`), ñ read and written (f32, with the normalizer), m read and written, q, k,
    /// v, ĩ, f̃ read, h written.
    pub fn bytes_moved(&self, dtype: Dtype, state_dtype: Dtype, variant: Variant) -> u64 {
        let (bh, dqk, dhv) = (self.bh() as u64, self.dqk as u64, self.dhv as u64);
        let (x, s) = (dtype.size() as u64, state_dtype.size() as u64);
        let n = if variant.normalizes() { 2 * dqk * 4 } else { 0 };
        bh * (2 * dqk * dhv * s + n + 2 * 4 + (2 * dqk + 2 * dhv) * x + 2 * 4)
    }
}

impl<'a> StepInputs<'a> {
    pub fn new(q: &'a Tensor, k: &'a Tensor, v: &'a Tensor, i: &'a Tensor, f: &'a Tensor) -> Self {
        StepInputs { q, k, v, i, f }
    }

    /// Dimensions implied by the inputs, after checking every shape and dtype.
    pub fn dims(&self) -> Result<StepDims> {
        let q = self.q.shape();
        if q.len() != 3 {
            return Err(Error::Invalid {
                arg: "q",
                value: format!("shape {q:?}"),
                reason: "expected rank 3: (B, NH, DQK)",
            });
        }
        let v = self.v.shape();
        let dims = StepDims {
            b: q[0],
            nh: q[1],
            dqk: q[2],
            dhv: if v.len() == 3 { v[2] } else { 0 },
        };
        dims.validate()?;
        let (b, nh) = (dims.b, dims.nh);
        expect_shape("k", self.k, &[b, nh, dims.dqk])?;
        expect_shape("v", self.v, &[b, nh, dims.dhv])?;
        expect_shape("i", self.i, &[b, nh])?;
        expect_shape("f", self.f, &[b, nh])?;
        let dtype = self.q.dtype();
        for (arg, t) in [("k", self.k), ("v", self.v)] {
            expect_dtype(arg, t, dtype)?;
        }
        for (arg, t) in [("i", self.i), ("f", self.f)] {
            expect_dtype(arg, t, Dtype::F32)?;
        }
        Ok(dims)
    }
}

/// The recurrent states a step reads and overwrites: C̃ (B, NH, DQK, DHV) in the state dtype
/// (f32 or bf16), ñ (B, NH, DQK) and m (B, NH) f32 (the module docs say why ñ stays f32 with
/// bf16 states). Also holds the step
/// kernel's per-head arrival counters (`StepPointers::tiles_done`), which every step leaves
/// zero; so states are made through the constructors, which zero them.
#[derive(Debug)]
pub struct StepStates {
    pub c: Tensor,
    pub n: Tensor,
    pub m: Tensor,
    /// (BH,) u32 counters, stored as f32 zeros (the same bits).
    tiles_done: Tensor,
}

impl StepStates {
    /// Zero states (m = 0, as the forward's default initial state), C̃ in `state_dtype`.
    pub fn alloc_zeros(
        rt: &Runtime,
        b: usize,
        nh: usize,
        dqk: usize,
        dhv: usize,
        state_dtype: Dtype,
    ) -> Result<Self> {
        StepDims { b, nh, dqk, dhv }.validate()?;
        check_state_dtype("state_dtype", state_dtype)?;
        let zeros = |dt, shape: &[usize]| Tensor::zeros(rt, dt, shape);
        Self::new(
            rt,
            zeros(state_dtype, &[b, nh, dqk, dhv])?,
            zeros(Dtype::F32, &[b, nh, dqk])?,
            zeros(Dtype::F32, &[b, nh])?,
        )
    }

    /// States from tensors the caller filled (taken over, not copied): c (B, NH, DQK, DHV) in
    /// f32 or bf16, n (B, NH, DQK) and m (B, NH) f32.
    pub fn new(rt: &Runtime, c: Tensor, n: Tensor, m: Tensor) -> Result<Self> {
        let cs = c.shape();
        if cs.len() != 4 {
            return Err(Error::Invalid {
                arg: "c",
                value: format!("shape {cs:?}"),
                reason: "expected rank 4: (B, NH, DQK, DHV)",
            });
        }
        let dims = StepDims {
            b: cs[0],
            nh: cs[1],
            dqk: cs[2],
            dhv: cs[3],
        };
        dims.validate()?;
        let tiles_done = Tensor::zeros(rt, Dtype::F32, &[dims.bh()])?;
        let states = StepStates {
            c,
            n,
            m,
            tiles_done,
        };
        states.check(&dims)?;
        Ok(states)
    }

    /// The final states of a forward pass (f32) as step states in `state_dtype`: the tensors
    /// are taken over without a copy, except C̃ for bf16 states, converted once through the
    /// host.
    pub fn from_forward(rt: &Runtime, out: MlstmOutputs, state_dtype: Dtype) -> Result<Self> {
        check_state_dtype("state_dtype", state_dtype)?;
        let MlstmOutputs { c, n, m, .. } = out;
        if state_dtype == Dtype::F32 {
            return Self::new(rt, c, n, m);
        }
        let c = Tensor::from_f32_as(rt, state_dtype, &c.to_f32_vec()?, c.shape())?;
        Self::new(rt, c, n, m)
    }

    /// The dtype of C̃ (f32 or bf16).
    pub fn dtype(&self) -> Dtype {
        self.c.dtype()
    }

    /// The dimensions these states hold.
    pub fn dims(&self) -> StepDims {
        let s = self.c.shape();
        StepDims {
            b: s[0],
            nh: s[1],
            dqk: s[2],
            dhv: s[3],
        }
    }

    /// Checks these states against the inputs' dimensions.
    fn check(&self, dims: &StepDims) -> Result<()> {
        let StepDims { b, nh, dqk, dhv } = *dims;
        expect_shape("c", &self.c, &[b, nh, dqk, dhv])?;
        expect_shape("n", &self.n, &[b, nh, dqk])?;
        expect_shape("m", &self.m, &[b, nh])?;
        check_state_dtype("c", self.c.dtype())?;
        for (arg, t) in [("n", &self.n), ("m", &self.m)] {
            expect_dtype(arg, t, Dtype::F32)?;
        }
        // Counters of another head count would be read out of bounds.
        expect_shape("tiles_done", &self.tiles_done, &[b * nh])
    }
}

fn check_state_dtype(arg: &'static str, dtype: Dtype) -> Result<StateDtype> {
    match dtype {
        Dtype::F32 => Ok(StateDtype::F32),
        Dtype::Bf16 => Ok(StateDtype::Bf16),
        Dtype::F16 => Err(Error::Dtype {
            arg,
            expected: "f32 or bf16 (states)",
            got: dtype,
        }),
    }
}

/// One step, allocating h (B, NH, DHV) in the input dtype; `states` are updated in place.
pub fn mlstm_step(
    rt: &Runtime,
    inputs: &StepInputs,
    states: &mut StepStates,
    cfg: &MlstmConfig,
) -> Result<Tensor> {
    let dims = inputs.dims()?;
    let mut h = Tensor::uninit(rt, inputs.q.dtype(), &[dims.b, dims.nh, dims.dhv])?;
    step_into_checked(rt, inputs, dims, states, cfg, &mut h)?;
    Ok(h)
}

/// One step into a caller-owned h (B, NH, DHV) in the input dtype; `states` are updated in
/// place. Of `cfg` only the variant, eps and scale matter (a step has no chunks).
pub fn mlstm_step_into(
    rt: &Runtime,
    inputs: &StepInputs,
    states: &mut StepStates,
    cfg: &MlstmConfig,
    h: &mut Tensor,
) -> Result<()> {
    step_into_checked(rt, inputs, inputs.dims()?, states, cfg, h)
}

/// [`mlstm_step_into`] on inputs whose `dims()` are `dims`.
fn step_into_checked(
    rt: &Runtime,
    inputs: &StepInputs,
    dims: StepDims,
    states: &mut StepStates,
    cfg: &MlstmConfig,
    h: &mut Tensor,
) -> Result<()> {
    let dtype = inputs.q.dtype();
    states.check(&dims)?;
    check_h(h, &dims, dtype)?;
    let ptrs = step_pointers(inputs, states, h);
    // SAFETY: every pointer comes from a live tensor whose shape and dtype were checked against
    // `dims` above (inputs by `dims()`, states by `check`, h here); the borrows keep h and the
    // states apart from the inputs and each other; cuMemAlloc aligns them; the counters are
    // zero (set by the constructors, left zero by every step).
    unsafe { mlstm_step_raw(rt, rt.raw_stream(), &ptrs, dims, dtype, states.dtype(), cfg) }
}

/// h: (B, NH, DHV) in the input dtype.
fn check_h(h: &Tensor, dims: &StepDims, dtype: Dtype) -> Result<()> {
    expect_shape("h", h, &[dims.b, dims.nh, dims.dhv])?;
    expect_dtype("h", h, dtype)?;
    Ok(())
}

/// One step on a state pool, allocating h (B, NH, DHV) in the input dtype: batch row b reads
/// its states from slot `slots[b]` of `pool` and overwrites them with the updated states;
/// every other slot is left untouched. The pool is f32 only (as [`StatePool`]: C̃, ñ, m f32),
/// so this is the f32-state step; bf16 states take [`StepStates`].
///
/// Checked before anything is launched or written, with the forward's typed errors: the
/// inputs, the pool against the inputs' NH, DQK, DHV (`pool.c`, `pool.n`, `pool.m`: shape,
/// f32), and the slots ([`crate::slots::check_slots`]: B of them, each below num_slots, no two
/// equal; `Error::Shape` / `Error::Invalid` with arg `slots`). The first step on a pool
/// allocates its arrival counters (num_slots·NH u32, zeroed once, synchronously).
pub fn mlstm_step_pool(
    rt: &Runtime,
    inputs: &StepInputs,
    pool: &mut StatePool,
    slots: &Slots,
    cfg: &MlstmConfig,
) -> Result<Tensor> {
    let dims = inputs.dims()?;
    // Every check before h is allocated (an error allocates nothing).
    PoolSlots { pool, slots }.check(dims.b, dims.nh, dims.dqk, dims.dhv)?;
    let mut h = Tensor::uninit(rt, inputs.q.dtype(), &[dims.b, dims.nh, dims.dhv])?;
    step_pool_into_checked(rt, inputs, dims, pool, slots, cfg, &mut h)?;
    Ok(h)
}

/// [`mlstm_step_pool`] into a caller-owned h (B, NH, DHV) in the input dtype. Nothing else may
/// use the rows' slots until the step has run (stream order on the runtime's stream).
pub fn mlstm_step_pool_into(
    rt: &Runtime,
    inputs: &StepInputs,
    pool: &mut StatePool,
    slots: &Slots,
    cfg: &MlstmConfig,
    h: &mut Tensor,
) -> Result<()> {
    step_pool_into_checked(rt, inputs, inputs.dims()?, pool, slots, cfg, h)
}

/// [`mlstm_step_pool_into`] on inputs whose `dims()` are `dims`.
fn step_pool_into_checked(
    rt: &Runtime,
    inputs: &StepInputs,
    dims: StepDims,
    pool: &mut StatePool,
    slots: &Slots,
    cfg: &MlstmConfig,
    h: &mut Tensor,
) -> Result<()> {
    let dtype = inputs.q.dtype();
    let num_slots = pool.check(dims.nh, dims.dqk, dims.dhv)?;
    slots.check(dims.b, num_slots)?;
    check_h(h, &dims, dtype)?;
    let tiles_done = pool_counters(rt, pool, num_slots * dims.nh)?;
    let ptrs = StepPointers {
        q: inputs.q.device_ptr(),
        k: inputs.k.device_ptr(),
        v: inputs.v.device_ptr(),
        i: inputs.i.device_ptr(),
        f: inputs.f.device_ptr(),
        c: pool.c.device_ptr(),
        n: pool.n.device_ptr(),
        m: pool.m.device_ptr(),
        h: h.device_ptr(),
        tiles_done,
        slots: slots.device_ptr(),
    };
    // SAFETY: every pointer comes from a live tensor whose shape and dtype were checked against
    // `dims` above (inputs by `dims()`, the pool by `check`, h by `check_h`); the borrows keep
    // h and the pool apart from the inputs and each other; the slots (B u32 on the device,
    // the host copy of the same values) are in range and distinct, so the heads of the launch
    // update distinct state heads and use distinct counters (`tfla_params::step::StepPointers`
    // docs); the counters hold num_slots·NH zeros (`pool_counters`).
    unsafe { mlstm_step_raw(rt, rt.raw_stream(), &ptrs, dims, dtype, Dtype::F32, cfg) }
}

/// The device address of the pool's arrival counters, one per state head (`heads` =
/// num_slots·NH), made and zeroed here on the pool's first step (or after its tensors were
/// swapped for another slot count); every step leaves them zero.
fn pool_counters(rt: &Runtime, pool: &mut StatePool, heads: usize) -> Result<u64> {
    let fits = matches!(&pool.tiles_done, Some(t) if t.shape() == [heads]);
    if !fits {
        // (Tensor fills are complete when they return: ordered before the step's launch.)
        pool.tiles_done = Some(Tensor::zeros(rt, Dtype::F32, &[heads])?);
    }
    Ok(pool.tiles_done.as_ref().map_or(0, Tensor::device_ptr))
}

/// The device addresses of `inputs`, `states` and `h`, as [`mlstm_step_raw`] takes them.
pub fn step_pointers(inputs: &StepInputs, states: &StepStates, h: &Tensor) -> StepPointers {
    StepPointers {
        q: inputs.q.device_ptr(),
        k: inputs.k.device_ptr(),
        v: inputs.v.device_ptr(),
        i: inputs.i.device_ptr(),
        f: inputs.f.device_ptr(),
        c: states.c.device_ptr(),
        n: states.n.device_ptr(),
        m: states.m.device_ptr(),
        h: h.device_ptr(),
        tiles_done: states.tiles_done.device_ptr(),
        slots: 0,
    }
}

/// One step on caller-owned device memory, launched on `stream` (for frameworks that own their
/// buffers). Validates the dimensions, dtypes, config and pointers; returns once the kernel is
/// queued.
///
/// # Safety
/// Every pointer addresses a live allocation of the runtime's context, large enough for its
/// tensor at `dims` (`StepPointers` gives the shapes), holding `dtype` (q, k, v, h),
/// `state_dtype` (c) or f32 (i, f, n, m); `tiles_done` holds B·NH u32 zeros (every step leaves
/// them zero; allocate them once per set of states); h and the states overlap nothing else, and
/// no other work uses the states while the step runs. With `slots` (not 0): B u32 on the
/// device, each below num_slots and no two equal (check them on the host with
/// [`crate::slots::check_slots`]: this function cannot read them), c, n, m a pool of
/// num_slots·NH state heads and `tiles_done` num_slots·NH u32 zeros.
pub unsafe fn mlstm_step_raw(
    rt: &Runtime,
    stream: CUstream,
    ptrs: &StepPointers,
    dims: StepDims,
    dtype: Dtype,
    state_dtype: Dtype,
    cfg: &MlstmConfig,
) -> Result<()> {
    dims.validate()?;
    let scale = cfg.scale_for(&dims.as_dims())?;
    let kstate = check_state_dtype("state_dtype", state_dtype)?;
    let kdtype = input_dtype(dtype);
    launch::check_pointers(&step::pointers(ptrs, dtype.size() as u64))?;
    let params = StepParams {
        ptr: *ptrs,
        bh: dims.bh() as u32,
        nh: dims.nh as u32,
        dqk: dims.dqk as u32,
        dhv: dims.dhv as u32,
        scale,
        eps: cfg.eps,
    };
    let kernel = Launch {
        name: step::entry_name(kernel_gates(cfg.variant), kdtype, kstate),
        grid: step::grid(&params),
        threads: step::THREADS,
        smem: step::smem_bytes(params.dqk),
    };
    // SAFETY: pointers per this function's contract; dims, dtypes and alignment checked.
    unsafe { launch::run_plan(rt, stream, &[kernel], &params) }
}

fn input_dtype(dtype: Dtype) -> InputDtype {
    match dtype {
        Dtype::Bf16 => InputDtype::Bf16,
        Dtype::F16 => InputDtype::F16,
        Dtype::F32 => InputDtype::F32,
    }
}

/// How a step runs on this device, as the driver compiled its kernel (from the PTX, when the
/// module was loaded): see [`step_occupancy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepOccupancy {
    /// Registers per thread of the entry point.
    pub registers: u32,
    /// Blocks of `tfla_params::step::THREADS` resident per SM at the step's shared memory.
    pub blocks_per_sm: u32,
    /// SMs of the device.
    pub sms: u32,
    /// Blocks of the step's grid.
    pub blocks: u32,
}

impl StepOccupancy {
    /// Blocks over resident slots: ≤ 1 runs the whole step in one wave.
    pub fn waves(&self) -> f64 {
        self.blocks as f64 / (self.blocks_per_sm * self.sms).max(1) as f64
    }
}

/// The occupancy of the step kernel for `dims`, `dtype` inputs, `state_dtype` C̃ and `variant`
/// on the runtime's device: `tfla_params::step` sizes blocks and registers so that B·NH = 64 at
/// DHV = 512 runs in one wave (four blocks per SM on 132 SMs), which this reports as the driver
/// compiled it (its register allocation may differ from a local `ptxas`). Called with the
/// runtime's context current, as every call of this crate.
pub fn step_occupancy(
    rt: &Runtime,
    dims: StepDims,
    dtype: Dtype,
    state_dtype: Dtype,
    variant: Variant,
) -> Result<StepOccupancy> {
    use cust::device::DeviceAttribute;
    use cust::function::{BlockSize, FunctionAttribute};
    dims.validate()?;
    let kstate = check_state_dtype("state_dtype", state_dtype)?;
    let name = step::entry_name(kernel_gates(variant), input_dtype(dtype), kstate);
    let f = rt
        .module()
        .get_function(name)
        .map_err(Error::cuda("cuModuleGetFunction"))?;
    let registers = f
        .get_attribute(FunctionAttribute::NumRegisters)
        .map_err(Error::cuda("cuFuncGetAttribute"))? as u32;
    let blocks_per_sm = f
        .max_active_blocks_per_multiprocessor(
            BlockSize::x(step::THREADS),
            step::smem_bytes(dims.dqk as u32) as usize,
        )
        .map_err(Error::cuda("cuOccupancyMaxActiveBlocksPerMultiprocessor"))?;
    let sms = cust::context::CurrentContext::get_device()
        .and_then(|d| d.get_attribute(DeviceAttribute::MultiprocessorCount))
        .map_err(Error::cuda("cuDeviceGetAttribute"))? as u32;
    let (x, y, z) = step::grid(&StepParams {
        bh: dims.bh() as u32,
        dqk: dims.dqk as u32,
        dhv: dims.dhv as u32,
        ..Default::default()
    });
    Ok(StepOccupancy {
        registers,
        blocks_per_sm,
        sms,
        blocks: x * y * z,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_moved_counts_each_tensor_once() {
        let d = StepDims {
            b: 8,
            nh: 8,
            dqk: 256,
            dhv: 512,
        };
        let exp = Variant::Exp;
        // C̃ and ñ read + written (f32), m read + written, q, k, v, h (bf16), ĩ, f̃.
        let per_head = 2 * 256 * 512 * 4 + 2 * 256 * 4 + 8 + (2 * 256 + 2 * 512) * 2 + 8;
        assert_eq!(d.bytes_moved(Dtype::Bf16, Dtype::F32, exp), 64 * per_head);
        // bf16 C̃ (ñ stays f32).
        let per_head = 2 * 256 * 512 * 2 + 2 * 256 * 4 + 8 + (2 * 256 + 2 * 512) * 2 + 8;
        assert_eq!(d.bytes_moved(Dtype::Bf16, Dtype::Bf16, exp), 64 * per_head);
        // Without the normalizer ñ is not touched.
        let nonorm = Variant::Sig { normalize: false };
        let per_head = 2 * 256 * 512 * 2 + 8 + (2 * 256 + 2 * 512) * 2 + 8;
        assert_eq!(
            d.bytes_moved(Dtype::Bf16, Dtype::Bf16, nonorm),
            64 * per_head
        );
    }

    #[test]
    fn dims_follow_the_forward_rules() {
        let d = |dqk, dhv| StepDims {
            b: 2,
            nh: 3,
            dqk,
            dhv,
        };
        assert!(d(16, 512).validate().is_ok());
        assert!(matches!(
            d(24, 64).validate(),
            Err(Error::HeadDim {
                arg: "DQK",
                value: 24
            })
        ));
        assert!(matches!(
            d(64, 528).validate(),
            Err(Error::HeadDim {
                arg: "DHV",
                value: 528
            })
        ));
        assert!(matches!(
            check_state_dtype("c", Dtype::F16),
            Err(Error::Dtype { arg: "c", .. })
        ));
    }
}
