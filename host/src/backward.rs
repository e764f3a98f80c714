//! The backward pass: gradients of the chunkwise forward w.r.t. q, k, v, the gate
//! pre-activations and the initial states, from the forward's saved outputs.
//!
//! Notation as in [`crate::forward`]: B batch, NH heads, S steps, DQK / DHV head dims, L chunk
//! size, NC = ceil(S/L), BH = B·NH. Upstream gradients dh (B, NH, S, DHV) in the input dtype
//! and optionally dC̃_S (B, NH, DQK, DHV), dñ_S (B, NH, DQK), dm_S (B, NH) f32. Gradients dq, dk
//! (B, NH, S, DQK), dv (B, NH, S, DHV) in the input dtype, dĩ, df̃ (B, NH, S) f32, and the
//! initial-state gradients in f32 where the inputs had initial states.
//!
//! 16-bit inputs take seven launches on the tensor cores (`params/src/bwd.rs`): per-row
//! coefficients, the reverse walk of the state gradients over the chunks, the intra-chunk
//! score matrices, dq, dk, dv, and the gate gradients. f32 inputs take two: the per-row
//! coefficients and the reverse recurrence step by step on the CUDA cores (exact to f32
//! rounding, slower; its states are recomputed per chunk from the forward's, about 2√L of
//! them per head at a time). The two [`GradMode`]s share every kernel; Exact also carries the
//! normalizer as one more value column and scans the max-state path.
use crate::config::{Dims, MlstmConfig};
use crate::error::{Error, Result};
use crate::forward::{
    CheckedInputs, MlstmInputs, MlstmOutputs, fwd_checked, fwd_pointers, kernel_gates, launch_fwd,
    path_of,
};
use crate::launch;
use crate::runtime::Runtime;
use crate::tensor::{Dtype, Tensor, expect_dtype, expect_shape};
use crate::variant::GradMode;
use crate::variant::Variant;
use cust::sys::CUstream;
pub use tfla_params::bwd::BwdPointers;
use tfla_params::bwd::{self, BwdParams};
use tfla_params::{Device, Path};

/// The backward pass's upstream gradients: of h, and optionally of the final states. A packed
/// batch (`crate::varlen`) takes the same, in its shapes: dh (T, NH, DHV), the final-state
/// gradients (N, NH, …).
#[derive(Clone, Copy)]
pub struct MlstmGradOutputs<'a> {
    /// dL/dh: (B, NH, S, DHV) in the input dtype.
    pub dh: &'a Tensor,
    /// dL/dC̃_S: (B, NH, DQK, DHV) f32.
    pub dc: Option<&'a Tensor>,
    /// dL/dñ_S: (B, NH, DQK) f32. Ignored in [`GradMode::DetachedNormalizer`] and by mLSTMsig
    /// without the normalizer (whose forward returns ñ = 0, a constant).
    pub dn: Option<&'a Tensor>,
    /// dL/dm_S: (B, NH) f32. Followed only by mLSTMexp in [`GradMode::Exact`] (mLSTMsig has no
    /// max state; the detached mode holds it constant).
    pub dm: Option<&'a Tensor>,
}

impl<'a> MlstmGradOutputs<'a> {
    /// Only dh (no final-state gradients).
    pub fn new(dh: &'a Tensor) -> Self {
        MlstmGradOutputs {
            dh,
            dc: None,
            dn: None,
            dm: None,
        }
    }

    /// Checks every shape and dtype against the forward's `dims` and input `dtype`.
    pub fn check(&self, dims: &Dims, dtype: Dtype) -> Result<()> {
        let Dims { b, nh, s, dqk, dhv } = *dims;
        expect_shape("dh", self.dh, &[b, nh, s, dhv])?;
        expect_dtype("dh", self.dh, dtype)?;
        let finals = [
            ("dc", self.dc, vec![b, nh, dqk, dhv]),
            ("dn", self.dn, vec![b, nh, dqk]),
            ("dm", self.dm, vec![b, nh]),
        ];
        for (arg, t, shape) in finals {
            if let Some(t) = t {
                expect_shape(arg, t, &shape)?;
                expect_dtype(arg, t, Dtype::F32)?;
            }
        }
        Ok(())
    }
}

/// An initial-state gradient `t` is present exactly when the inputs have that initial state,
/// whose shape `shape` is then, and is f32.
pub(crate) fn expect_initial_grad(
    arg: &'static str,
    t: Option<&Tensor>,
    shape: Option<&[usize]>,
) -> Result<()> {
    match (t, shape) {
        (Some(t), Some(shape)) => {
            expect_shape(arg, t, shape)?;
            expect_dtype(arg, t, Dtype::F32)
        }
        (None, None) => Ok(()),
        (t, _) => Err(Error::Invalid {
            arg,
            value: if t.is_some() { "Some" } else { "None" }.into(),
            reason: "an initial-state gradient is present exactly when the inputs have that \
                     initial state",
        }),
    }
}

/// Scratch tensors the backward kernels hand each other (see `params/src/bwd.rs`,
/// [`BwdPointers`]). Kept with the gradients so repeated calls allocate nothing and the scratch
/// outlives the kernels that use it.
#[derive(Debug)]
pub struct BwdWorkspace {
    pub chunk_size: usize,
    /// Per-row coefficients: (`rows::PLANES`, BH, NC·L) f32.
    pub row_coef: Tensor,
    /// dC̃ after each chunk: (BH, NC, DQK, DHV) in the input dtype (the combine kernels' mma
    /// operand, as the forward's C̃_k).
    pub dc_states: Tensor,
    /// dñ after each chunk: (BH, NC, DQK) f32.
    pub dn_states: Tensor,
    /// Gated score matrices P and dP of every chunk, their lower-triangular tiles packed:
    /// (BH, NC, `scores::pairs(L)`, TILE, TILE) in the input dtype each; empty where the chunk
    /// kernel keeps them on chip (`bwd::use_chunk`).
    pub scores_p: Tensor,
    pub scores_dp: Tensor,
    /// Partial row dots per column tile: (combine::DOT_PLANES, BH, NC·L,
    /// combine::col_tiles(DQK)) f32.
    pub row_dots: Tensor,
    /// Partial state dots per state tile: (BH, NC + 2·sequences, state::MAX_TILES) f32
    /// (`state::dots_per_head`).
    pub state_dots: Tensor,
    /// Partial row and column sums of the pair gradients per score tile:
    /// (2, BH, NC·L, L / scores::TILE) f32.
    pub pair_sums: Tensor,
    /// f32 inputs: the states the reverse recurrence recomputes, `recurrent::segments_len`
    /// f32. (The tensors above that only the tensor-core kernels use are empty for f32
    /// inputs, and this one for 16-bit inputs.)
    pub segments: Tensor,
    /// The chunk states C̃_k recomputed for a forward that released them
    /// ([`MlstmOutputs::release_chunk_states`]), (BH, NC, DQK, DHV) in the input dtype, and for
    /// f32 inputs the h the recurrence writes along (discarded). Allocated by the first
    /// backward that needs them, reused after.
    pub recomputed_states: Option<Tensor>,
    pub recomputed_h: Option<Tensor>,
}

/// The workspace tensors at `dims`, chunk size `chunk` and `seqs` sequences per head (1 unless
/// packed), as (name in [`BwdPointers`], dtype, shape): what [`BwdWorkspace::alloc`] allocates,
/// and what a framework that owns its buffers allocates for [`mlstm_bwd_raw`].
pub fn workspace_layout(
    dev: &Device,
    dims: &Dims,
    dtype: Dtype,
    chunk: usize,
    seqs: usize,
) -> [(&'static str, Dtype, Vec<usize>); 9] {
    let (bh, dqk, dhv) = (dims.bh(), dims.dqk, dims.dhv);
    let nc = dims.s.div_ceil(chunk);
    let rows = nc * chunk;
    let f32_ = Dtype::F32;
    let f32_path = path_of(dtype) == Path::F32;
    // A tensor only one path uses is empty on the other.
    let only = |tc: bool, shape: Vec<usize>| if tc != f32_path { shape } else { vec![0] };
    // The one-kernel chunk gradients keep the score matrices on chip.
    let on_chip = bwd::use_chunk(dev, chunk as u32, dqk as u32, dhv as u32);
    let segments = bwd::recurrent::segments_len(bh as u32, dqk as u32, dhv as u32, chunk as u32);
    let tile = bwd::scores::TILE as usize;
    let scores = vec![
        bh,
        nc,
        bwd::scores::pairs(chunk as u32) as usize,
        tile,
        tile,
    ];
    let mut layout = [
        ("row_coef", f32_, vec![bwd::rows::PLANES as usize, bh, rows]),
        ("dc_states", dtype, vec![bh, nc, dqk, dhv]),
        ("dn_states", f32_, vec![bh, nc, dqk]),
        (
            "scores_p",
            dtype,
            if on_chip { vec![0] } else { scores.clone() },
        ),
        ("scores_dp", dtype, if on_chip { vec![0] } else { scores }),
        (
            "row_dots",
            f32_,
            vec![
                bwd::combine::DOT_PLANES as usize,
                bh,
                rows,
                bwd::combine::col_tiles(dqk as u32) as usize,
            ],
        ),
        (
            "state_dots",
            f32_,
            vec![
                bh,
                bwd::state::dots_per_head(nc as u32, seqs as u32) as usize,
                bwd::state::MAX_TILES as usize,
            ],
        ),
        (
            "pair_sums",
            f32_,
            vec![2, bh, rows, bwd::scores::tiles(chunk as u32) as usize],
        ),
        ("segments", f32_, vec![segments as usize]),
    ];
    for (name, _, shape) in &mut layout {
        let tensor_cores = !matches!(*name, "row_coef" | "state_dots" | "segments");
        let f32_only = *name == "segments";
        if tensor_cores || f32_only {
            *shape = only(tensor_cores, std::mem::take(shape));
        }
    }
    layout
}

impl BwdWorkspace {
    /// Allocates the scratch for `dims`, the input `dtype` and chunk size `chunk`.
    pub fn alloc(rt: &Runtime, dims: &Dims, dtype: Dtype, chunk: usize) -> Result<Self> {
        Self::alloc_for(rt, dims, dtype, chunk, 1)
    }

    /// The scratch for `seqs` sequences per head (a packed batch).
    pub(crate) fn alloc_for(
        rt: &Runtime,
        dims: &Dims,
        dtype: Dtype,
        chunk: usize,
        seqs: usize,
    ) -> Result<Self> {
        let [rc, dcs, dns, sp, sdp, rd, sd, ps, seg] =
            workspace_layout(&rt.plan_device(), dims, dtype, chunk, seqs)
                .map(|(_, dt, shape)| Tensor::uninit(rt, dt, &shape));
        Ok(BwdWorkspace {
            chunk_size: chunk,
            row_coef: rc?,
            dc_states: dcs?,
            dn_states: dns?,
            scores_p: sp?,
            scores_dp: sdp?,
            row_dots: rd?,
            state_dots: sd?,
            pair_sums: ps?,
            segments: seg?,
            recomputed_states: None,
            recomputed_h: None,
        })
    }

    fn tensors(&self) -> [&Tensor; 9] {
        [
            &self.row_coef,
            &self.dc_states,
            &self.dn_states,
            &self.scores_p,
            &self.scores_dp,
            &self.row_dots,
            &self.state_dots,
            &self.pair_sums,
            &self.segments,
        ]
    }

    /// Device memory the workspace holds.
    pub fn bytes(&self) -> usize {
        let recomputed = self.recomputed_states.iter().chain(&self.recomputed_h);
        self.tensors()
            .iter()
            .copied()
            .chain(recomputed)
            .map(bytes)
            .sum()
    }

    fn check(
        &self,
        dev: &Device,
        dims: &Dims,
        dtype: Dtype,
        chunk: usize,
        seqs: usize,
    ) -> Result<()> {
        if self.chunk_size != chunk {
            return Err(Error::Invalid {
                arg: "workspace.chunk_size",
                value: self.chunk_size.to_string(),
                reason: "the gradients were allocated for another chunk size",
            });
        }
        for ((arg, dt, shape), t) in workspace_layout(dev, dims, dtype, chunk, seqs)
            .into_iter()
            .zip(self.tensors())
        {
            expect_shape(arg, t, &shape)?;
            expect_dtype(arg, t, dt)?;
        }
        Ok(())
    }
}

fn bytes(t: &Tensor) -> usize {
    t.numel() * t.dtype().size()
}

/// The backward pass's outputs: the gradient w.r.t. every input of the forward.
#[derive(Debug)]
pub struct MlstmGrads {
    /// dq, dk: (B, NH, S, DQK); dv: (B, NH, S, DHV); in the input dtype.
    pub dq: Tensor,
    pub dk: Tensor,
    pub dv: Tensor,
    /// dĩ, df̃: (B, NH, S) f32.
    pub di: Tensor,
    pub df: Tensor,
    /// dL/dC̃_0 (B, NH, DQK, DHV), dL/dñ_0 (B, NH, DQK), dL/dm_0 (B, NH), f32: each present
    /// exactly when the inputs had that initial state. dñ_0 is zero where the gradient does not
    /// follow ñ (DetachedNormalizer, mLSTMsig without normalizer), dm_0 where it does not
    /// follow m (DetachedNormalizer, mLSTMsig).
    pub dc0: Option<Tensor>,
    pub dn0: Option<Tensor>,
    pub dm0: Option<Tensor>,
    /// Scratch of the kernels (contents unspecified between calls).
    pub workspace: BwdWorkspace,
}

impl MlstmGrads {
    /// Allocates gradients (and the workspace) for `inputs` and the chunk size of `cfg`
    /// (contents unspecified until a backward pass writes them).
    pub fn alloc(rt: &Runtime, inputs: &MlstmInputs, cfg: &MlstmConfig) -> Result<Self> {
        Self::alloc_checked(rt, &inputs.check()?, cfg)
    }

    /// [`MlstmGrads::alloc`] for checked inputs.
    pub(crate) fn alloc_checked(
        rt: &Runtime,
        checked: &CheckedInputs,
        cfg: &MlstmConfig,
    ) -> Result<Self> {
        let (inputs, dims, dtype) = (checked.inputs(), checked.dims(), checked.dtype());
        let chunk = cfg.chunk_for(&dims)?;
        let Dims { b, nh, s, dqk, dhv } = dims;
        let f32_ = Dtype::F32;
        let opt = |given: bool, shape: &[usize]| -> Result<Option<Tensor>> {
            given.then(|| Tensor::uninit(rt, f32_, shape)).transpose()
        };
        Ok(MlstmGrads {
            dq: Tensor::uninit(rt, dtype, &[b, nh, s, dqk])?,
            dk: Tensor::uninit(rt, dtype, &[b, nh, s, dqk])?,
            dv: Tensor::uninit(rt, dtype, &[b, nh, s, dhv])?,
            di: Tensor::uninit(rt, f32_, &[b, nh, s])?,
            df: Tensor::uninit(rt, f32_, &[b, nh, s])?,
            dc0: opt(inputs.c0.is_some(), &[b, nh, dqk, dhv])?,
            dn0: opt(inputs.n0.is_some(), &[b, nh, dqk])?,
            dm0: opt(inputs.m0.is_some(), &[b, nh])?,
            workspace: BwdWorkspace::alloc(rt, &dims, dtype, chunk)?,
        })
    }

    /// Device memory these gradients and their workspace hold (everything a backward call
    /// allocates).
    pub fn bytes(&self) -> usize {
        let mut tensors = vec![&self.dq, &self.dk, &self.dv, &self.di, &self.df];
        tensors.extend(self.dc0.iter().chain(&self.dn0).chain(&self.dm0));
        tensors.iter().map(|t| bytes(t)).sum::<usize>() + self.workspace.bytes()
    }

    /// `seqs`: sequences per head the workspace serves (1 unless packed, `crate::varlen`);
    /// `dev`: the device the workspace was planned for.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn check(
        &self,
        dev: &Device,
        inputs: &MlstmInputs,
        dims: &Dims,
        dtype: Dtype,
        chunk: usize,
        seqs: usize,
    ) -> Result<()> {
        let Dims { b, nh, s, dqk, dhv } = *dims;
        for (arg, t, shape) in [
            ("dq", &self.dq, [b, nh, s, dqk]),
            ("dk", &self.dk, [b, nh, s, dqk]),
            ("dv", &self.dv, [b, nh, s, dhv]),
        ] {
            expect_shape(arg, t, &shape)?;
            expect_dtype(arg, t, dtype)?;
        }
        for (arg, t) in [("di", &self.di), ("df", &self.df)] {
            expect_shape(arg, t, &[b, nh, s])?;
            expect_dtype(arg, t, Dtype::F32)?;
        }
        let initial = [
            ("dc0", &self.dc0, inputs.c0.is_some(), vec![b, nh, dqk, dhv]),
            ("dn0", &self.dn0, inputs.n0.is_some(), vec![b, nh, dqk]),
            ("dm0", &self.dm0, inputs.m0.is_some(), vec![b, nh]),
        ];
        for (arg, t, given, shape) in initial {
            expect_initial_grad(arg, t.as_ref(), given.then_some(&shape[..]))?;
        }
        self.workspace.check(dev, dims, dtype, chunk, seqs)
    }
}

/// Runs the backward pass, allocating the gradients. `fwd` holds the outputs of the forward
/// pass on the same `inputs` and `cfg` (with `row_stats` for the normalized variants).
pub fn mlstm_bwd(
    rt: &Runtime,
    inputs: &MlstmInputs,
    fwd: &MlstmOutputs,
    grad_out: &MlstmGradOutputs,
    cfg: &MlstmConfig,
    mode: GradMode,
) -> Result<MlstmGrads> {
    let inputs = inputs.check()?;
    // Validate before allocating: a bad argument should not cost the (large) workspace.
    check_args(&inputs, fwd, grad_out, cfg)?;
    let mut grads = MlstmGrads::alloc_checked(rt, &inputs, cfg)?;
    bwd_into_checked(rt, &inputs, fwd, grad_out, cfg, mode, &mut grads)?;
    Ok(grads)
}

/// Checks everything the backward reads; returns the dims and dtype.
/// The backward reads the initial states as c0/n0/m0 and returns their gradients per batch
/// row; a state pool (serving) has no backward.
fn check_no_pool(inputs: &MlstmInputs) -> Result<()> {
    if inputs.pool.is_some() {
        return Err(Error::Invalid {
            arg: "pool",
            value: "Some".into(),
            reason: "the backward pass takes initial states as c0/n0/m0, not from a state pool",
        });
    }
    Ok(())
}

fn check_args(
    inputs: &CheckedInputs,
    fwd: &MlstmOutputs,
    grad_out: &MlstmGradOutputs,
    cfg: &MlstmConfig,
) -> Result<()> {
    let (dims, dtype) = (inputs.dims(), inputs.dtype());
    check_no_pool(inputs.inputs())?;
    cfg.scale_for(&dims)?;
    fwd.check(&dims, dtype, cfg)?;
    // m_i is rebuilt from the gate vectors; the backward needs only the normalizer readout.
    if cfg.variant.normalizes() && fwd.row_stats.is_none() {
        return Err(Error::Invalid {
            arg: "fwd.row_stats",
            value: "None".into(),
            reason: "the normalized variants' backward needs the forward's row statistics: \
                     run the forward with MlstmConfig::row_stats = true",
        });
    }
    grad_out.check(&dims, dtype)
}

/// Runs the backward pass into caller-allocated gradients (see [`MlstmGrads::alloc`]).
pub fn mlstm_bwd_into(
    rt: &Runtime,
    inputs: &MlstmInputs,
    fwd: &MlstmOutputs,
    grad_out: &MlstmGradOutputs,
    cfg: &MlstmConfig,
    mode: GradMode,
    grads: &mut MlstmGrads,
) -> Result<()> {
    let inputs = inputs.check()?;
    check_args(&inputs, fwd, grad_out, cfg)?;
    bwd_into_checked(rt, &inputs, fwd, grad_out, cfg, mode, grads)
}

/// [`mlstm_bwd_into`] on checked arguments (`check_args`).
fn bwd_into_checked(
    rt: &Runtime,
    checked: &CheckedInputs,
    fwd: &MlstmOutputs,
    grad_out: &MlstmGradOutputs,
    cfg: &MlstmConfig,
    mode: GradMode,
    grads: &mut MlstmGrads,
) -> Result<()> {
    let (inputs, dims, dtype) = (checked.inputs(), checked.dims(), checked.dtype());
    grads.check(
        &rt.plan_device(),
        inputs,
        &dims,
        dtype,
        cfg.chunk_for(&dims)?,
        1,
    )?;
    let mut ptrs = bwd_pointers(inputs, fwd, grad_out, grads);
    if fwd.states.released() {
        ptrs.c_states = recompute_states(rt, inputs, fwd, cfg, dims, &mut grads.workspace)?;
    }
    // SAFETY: every pointer comes from a live tensor whose shape and dtype were checked against
    // `dims` above (inputs by `dims()`, forward outputs by `check`, upstream gradients, outputs
    // and workspace by their `check`); cuMemAlloc aligns them.
    unsafe { mlstm_bwd_raw(rt, rt.raw_stream(), &ptrs, dims, dtype, cfg, mode) }
}

/// The chunk states a forward released, recomputed into the workspace by the forward's state
/// pass (`forward::launch_fwd` with `states_only`); returns their address.
fn recompute_states(
    rt: &Runtime,
    inputs: &MlstmInputs,
    fwd: &MlstmOutputs,
    cfg: &MlstmConfig,
    dims: Dims,
    ws: &mut BwdWorkspace,
) -> Result<u64> {
    let Dims { b, nh, s, dqk, dhv } = dims;
    let dtype = inputs.q.dtype();
    let nc = s.div_ceil(ws.chunk_size);
    let shape = [b, nh, nc, dqk, dhv];
    if ws
        .recomputed_states
        .as_ref()
        .is_none_or(|t| t.shape() != shape)
    {
        ws.recomputed_states = Some(Tensor::uninit(rt, dtype, &shape)?);
    }
    // The f32 recurrence writes h along with the states: into scratch, not the forward's h.
    let h = if dtype == Dtype::F32 {
        let shape = [b, nh, s, dhv];
        if ws.recomputed_h.as_ref().is_none_or(|t| t.shape() != shape) {
            ws.recomputed_h = Some(Tensor::uninit(rt, dtype, &shape)?);
        }
        ws.recomputed_h.as_ref().map_or(0, Tensor::device_ptr)
    } else {
        fwd.h.device_ptr()
    };
    let states = ws.recomputed_states.as_ref().map_or(0, Tensor::device_ptr);
    let ptrs = tfla_params::fwd::FwdPointers {
        c_states: states,
        h,
        // Neither the final states nor the row statistics again.
        c_final: 0,
        n_final: 0,
        m_final: 0,
        m_rows: 0,
        norm_rows: 0,
        ..fwd_pointers(inputs, fwd)
    };
    // SAFETY: the inputs and the forward outputs were checked against `dims` (check_args),
    // the recomputed states (and h) allocated for them; the pass writes the chunk states, the
    // forward's ñ_k, m_k of the later chunks with the values they hold, and h only for f32
    // (into scratch).
    unsafe { launch_fwd(rt, rt.raw_stream(), &ptrs, dims, dtype, cfg, 1, true)? };
    Ok(states)
}

/// Runs the forward pass (with row statistics and final states) and then the backward pass.
pub fn mlstm_fwd_bwd(
    rt: &Runtime,
    inputs: &MlstmInputs,
    grad_out: &MlstmGradOutputs,
    cfg: &MlstmConfig,
    mode: GradMode,
) -> Result<(MlstmOutputs, MlstmGrads)> {
    let inputs = inputs.check()?;
    // Reject what the backward would reject before spending a forward pass on it (and, with a
    // state pool, before the forward overwrites the pool's slots).
    check_no_pool(inputs.inputs())?;
    grad_out.check(&inputs.dims(), inputs.dtype())?;
    let cfg = MlstmConfig {
        row_stats: true,
        ..*cfg
    };
    let fwd = fwd_checked(rt, &inputs, &cfg)?;
    check_args(&inputs, &fwd, grad_out, &cfg)?;
    let mut grads = MlstmGrads::alloc_checked(rt, &inputs, &cfg)?;
    bwd_into_checked(rt, &inputs, &fwd, grad_out, &cfg, mode, &mut grads)?;
    Ok((fwd, grads))
}

/// The device addresses of every tensor, as [`mlstm_bwd_raw`] takes them.
pub fn bwd_pointers(
    inputs: &MlstmInputs,
    fwd: &MlstmOutputs,
    grad_out: &MlstmGradOutputs,
    grads: &MlstmGrads,
) -> BwdPointers {
    let ptr = |t: Option<&Tensor>| t.map_or(0, Tensor::device_ptr);
    let ws = &grads.workspace;
    BwdPointers {
        q: inputs.q.device_ptr(),
        k: inputs.k.device_ptr(),
        v: inputs.v.device_ptr(),
        i: inputs.i.device_ptr(),
        f: inputs.f.device_ptr(),
        c0: ptr(inputs.c0),
        n0: ptr(inputs.n0),
        m0: ptr(inputs.m0),
        h: fwd.h.device_ptr(),
        c_states: fwd.states.c.device_ptr(),
        n_states: fwd.states.n.device_ptr(),
        m_states: fwd.states.m.device_ptr(),
        c_final: fwd.c.device_ptr(),
        n_final: fwd.n.device_ptr(),
        gate_b: fwd.gates.b.device_ptr(),
        gate_u: fwd.gates.u.device_ptr(),
        gate_cm: fwd.gates.cm.device_ptr(),
        gate_g: fwd.gates.g.device_ptr(),
        norm_rows: ptr(fwd.row_stats.as_ref().map(|r| &r.norm)),
        dh: grad_out.dh.device_ptr(),
        dc_final: ptr(grad_out.dc),
        dn_final: ptr(grad_out.dn),
        dm_final: ptr(grad_out.dm),
        row_coef: ws.row_coef.device_ptr(),
        dc_states: ws.dc_states.device_ptr(),
        dn_states: ws.dn_states.device_ptr(),
        scores_p: ws.scores_p.device_ptr(),
        scores_dp: ws.scores_dp.device_ptr(),
        row_dots: ws.row_dots.device_ptr(),
        state_dots: ws.state_dots.device_ptr(),
        pair_sums: ws.pair_sums.device_ptr(),
        segments: ws.segments.device_ptr(),
        seq_chunks: 0,
        dq: grads.dq.device_ptr(),
        dk: grads.dk.device_ptr(),
        dv: grads.dv.device_ptr(),
        di: grads.di.device_ptr(),
        df: grads.df.device_ptr(),
        dc0: ptr(grads.dc0.as_ref()),
        dn0: ptr(grads.dn0.as_ref()),
        dm0: ptr(grads.dm0.as_ref()),
    }
}

/// The backward pass on caller-owned device memory, launched on `stream` (for frameworks that
/// own their buffers). Validates the dimensions, config, dtype and pointers; returns once the
/// kernels are queued.
///
/// Where the gradient does not follow ñ (DetachedNormalizer, mLSTMsig without normalizer) the
/// kernels ignore dn_final and write zeros to dn0; where it does not follow m
/// (DetachedNormalizer, mLSTMsig) they ignore dm_final and write zeros to dm0. norm_rows is
/// read only by the normalized variants.
///
/// # Safety
/// Every non-zero pointer addresses a live allocation of the runtime's context, large enough
/// for its tensor at `dims` and the chunk count NC = ceil(S / L) of `cfg` (shapes in
/// [`BwdPointers`]), holding `dtype` (q, k, v, h, c_states, dh, dc_states, scores_p, scores_dp,
/// dq, dk, dv) or f32 (everything else; the workspace only what the dtype's path uses, see
/// [`BwdWorkspace`]); the forward tensors hold what the forward pass wrote
/// for these inputs and `cfg` (with row statistics for the normalized variants); outputs and
/// workspace do not overlap each other or the inputs.
pub unsafe fn mlstm_bwd_raw(
    rt: &Runtime,
    stream: CUstream,
    ptrs: &BwdPointers,
    dims: Dims,
    dtype: Dtype,
    cfg: &MlstmConfig,
    mode: GradMode,
) -> Result<()> {
    launch::check_not_packed(ptrs.seq_chunks)?;
    // SAFETY: this function's contract; one sequence per head.
    unsafe { launch_bwd(rt, stream, ptrs, dims, dtype, cfg, mode, 1) }
}

/// [`mlstm_bwd_raw`] for `seqs` sequences per head (a packed batch, `crate::varlen`, which has
/// checked `ptrs.seq_chunks`; the workspace's state dots sized for `seqs`).
///
/// # Safety
/// As [`mlstm_bwd_raw`], with the initial and final states and their gradients of `seqs`
/// batch rows.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn launch_bwd(
    rt: &Runtime,
    stream: CUstream,
    ptrs: &BwdPointers,
    dims: Dims,
    dtype: Dtype,
    cfg: &MlstmConfig,
    mode: GradMode,
    seqs: u32,
) -> Result<()> {
    dims.validate()?;
    let path = path_of(dtype);
    let chunk = cfg.chunk_for(&dims)?;
    let scale = cfg.scale_for(&dims)?;
    let dev = rt.plan_device();
    let on_chip = bwd::use_chunk(&dev, chunk as u32, dims.dqk as u32, dims.dhv as u32);
    check_pointers(ptrs, cfg.variant, path, on_chip)?;
    let params = bwd_params(ptrs, &dims, cfg, chunk, scale, mode, seqs);
    let plan = bwd::plan(&dev, &params, kernel_gates(cfg.variant), path);
    // SAFETY: pointers per this function's contract; dims, chunk, dtype and alignment checked;
    // each kernel of the plan reads only what the ones before it wrote.
    unsafe { launch::run_plan(rt, stream, plan.as_slice(), &params) }
}

/// The backward kernels' parameters for validated `dims`, `cfg` and the chunk size and scale
/// it gives.
pub(crate) fn bwd_params(
    ptrs: &BwdPointers,
    dims: &Dims,
    cfg: &MlstmConfig,
    chunk: usize,
    scale: f32,
    mode: GradMode,
    seqs: u32,
) -> BwdParams {
    BwdParams {
        ptr: *ptrs,
        bh: dims.bh() as u32,
        s: dims.s as u32,
        dqk: dims.dqk as u32,
        dhv: dims.dhv as u32,
        chunk: chunk as u32,
        num_chunks: dims.s.div_ceil(chunk) as u32,
        scale,
        eps: cfg.eps,
        exact: (mode == GradMode::Exact) as u32,
        seqs,
    }
}

/// Required pointers present and every pointer aligned (`bwd::pointers`).
/// `scores_on_chip`: the chunk kernel runs (`bwd::use_chunk`), which needs no score
/// matrices.
fn check_pointers(
    p: &BwdPointers,
    variant: Variant,
    path: Path,
    scores_on_chip: bool,
) -> Result<()> {
    launch::check_pointers(&bwd::pointers(
        p,
        variant.normalizes(),
        path,
        scores_on_chip,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::Launch;
    use tfla_params::bwd::BwdKernel;
    use tfla_params::{Dtype as KDtype, Gates};

    /// The plan's launches as a list.
    fn bwd_launches(dev: &Device, p: &BwdParams, gates: Gates, path: Path) -> Vec<Launch> {
        bwd::plan(dev, p, gates, path).as_slice().to_vec()
    }

    fn dims(s: usize, dqk: usize, dhv: usize) -> Dims {
        Dims {
            b: 2,
            nh: 3,
            s,
            dqk,
            dhv,
        }
    }

    #[test]
    fn workspace_layout_matches_the_pointer_contract() {
        let d = dims(1000, 80, 272);
        let l = workspace_layout(&Device::HOPPER, &d, Dtype::Bf16, 256, 1);
        let shape = |name: &str| l.iter().find(|(n, ..)| *n == name).unwrap().2.clone();
        // NC = 4, NC·L = 1024, BH = 6.
        assert_eq!(shape("row_coef"), [bwd::rows::PLANES as usize, 6, 1024]);
        assert_eq!(shape("dc_states"), [6, 4, 80, 272]);
        assert_eq!(shape("dn_states"), [6, 4, 80]);
        // L = 256: 4 × 4 score tiles of 64, 10 of them on or below the diagonal.
        assert_eq!(shape("scores_p"), [6, 4, 10, 64, 64]);
        // DQK = 80: one 128-column tile of dq and dk.
        assert_eq!(shape("row_dots"), [3, 6, 1024, 1]);
        assert_eq!(shape("state_dots")[..2], [6, 6]);
        assert_eq!(shape("pair_sums"), [2, 6, 1024, 4]);
        // L = 128 and heads up to 128: the chunk kernel needs no score matrices.
        let l = workspace_layout(&Device::HOPPER, &dims(1000, 128, 128), Dtype::Bf16, 128, 1);
        assert_eq!(numel_of(&l, "scores_p"), 0);
        assert_eq!(numel_of(&l, "scores_dp"), 0);
        assert_eq!(numel_of(&l, "pair_sums"), 2 * 6 * 1024 * 2);
        // Every row_coef plane starts 16-byte aligned (cp.async of the row weights).
        assert_eq!(6 * 1024 * 4 % 16, 0);
        for &chunk in &tfla_params::CHUNK_SIZES {
            assert_eq!(chunk as usize * 4 % 16, 0);
        }
    }

    #[test]
    fn launches_follow_the_params_order_and_names() {
        let p = BwdParams {
            bh: 6,
            s: 1000,
            dqk: 64,
            dhv: 128,
            chunk: 128,
            num_chunks: 8,
            seqs: 1,
            ..Default::default()
        };
        let names = |l: &[Launch]| l.iter().map(|l| l.name).collect::<Vec<_>>();
        let f16 = Path::TensorCores(KDtype::F16);
        // L = 128 with DHV = 128 but DQK = 256: the four intra-chunk kernels.
        let p = BwdParams { dqk: 256, ..p };
        let want = |g| {
            BwdKernel::ALL
                .iter()
                .filter(|&&k| k != BwdKernel::Chunk)
                .map(|&k| bwd::entry_name(k, g, KDtype::F16))
                .collect::<Vec<_>>()
        };
        // The max-state path runs for mLSTMexp in Exact mode only.
        let exact = BwdParams { exact: 1, ..p };
        assert_eq!(
            names(&bwd_launches(&Device::HOPPER, &exact, Gates::Exp, f16)),
            want(Gates::Exp)
        );
        let l = bwd_launches(&Device::HOPPER, &exact, Gates::Sig, f16);
        assert_eq!(names(&l), want(Gates::Sig)[..7]);
        assert_eq!(bwd_launches(&Device::HOPPER, &p, Gates::Exp, f16).len(), 7);
        // dq and dk tile DQK, dv tiles DHV.
        assert_eq!(l[3].grid, bwd::combine::grid(&p, 256));
        assert_eq!(l[5].grid, bwd::combine::grid(&p, 128));
        assert!(l.iter().all(|l| l.threads % 32 == 0 && l.threads > 0));

        // Heads up to 128 at L = 128: one kernel per chunk in place of those four.
        let small = BwdParams { dqk: 64, ..exact };
        let l = bwd_launches(&Device::HOPPER, &small, Gates::Exp, f16);
        let chunk = |g| bwd::entry_name(BwdKernel::Chunk, g, KDtype::F16);
        let want_small = [
            BwdKernel::Rows,
            BwdKernel::State,
            BwdKernel::Chunk,
            BwdKernel::Gates,
            BwdKernel::MaxPath,
        ]
        .map(|k| bwd::entry_name(k, Gates::Exp, KDtype::F16));
        assert_eq!(names(&l), want_small);
        assert_eq!(l[2].name, chunk(Gates::Exp));
        assert_eq!(l[2].grid, (8, 6, 1));
        let at_256 = BwdParams {
            chunk: 256,
            num_chunks: 4,
            ..small
        };
        assert!(
            !names(&bwd_launches(&Device::HOPPER, &at_256, Gates::Exp, f16))
                .contains(&chunk(Gates::Exp))
        );

        // f32: rows, the recurrence, and the max-state path where it applies.
        let l = bwd_launches(&Device::HOPPER, &exact, Gates::Exp, Path::F32);
        assert_eq!(
            names(&l),
            [
                "mlstm_bwd_rows_exp_f32",
                "mlstm_bwd_recurrent_exp_f32",
                "mlstm_bwd_max_path_exp"
            ]
        );
        // Exact mode carries ñ as one more column tile: 128 + 1 columns.
        assert_eq!(l[1].grid, (9, 6, 1));
        let l = bwd_launches(&Device::HOPPER, &p, Gates::Sig, Path::F32);
        assert_eq!(l.len(), 2);
        assert_eq!(l[1].grid, (8, 6, 1));
    }

    const TC: Path = Path::TensorCores(KDtype::Bf16);

    #[test]
    fn pointer_checks_name_the_argument() {
        // Addresses only (never dereferenced): a plausible, aligned pointer set.
        let mut p = BwdPointers::default();
        let mut next = 0x1000_0000u64;
        for f in [
            &mut p.q,
            &mut p.k,
            &mut p.v,
            &mut p.i,
            &mut p.f,
            &mut p.h,
            &mut p.c_states,
            &mut p.n_states,
            &mut p.m_states,
            &mut p.gate_b,
            &mut p.gate_u,
            &mut p.gate_cm,
            &mut p.gate_g,
            &mut p.norm_rows,
            &mut p.dh,
            &mut p.row_coef,
            &mut p.dc_states,
            &mut p.dn_states,
            &mut p.scores_p,
            &mut p.scores_dp,
            &mut p.row_dots,
            &mut p.state_dots,
            &mut p.pair_sums,
            &mut p.dq,
            &mut p.dk,
            &mut p.dv,
            &mut p.di,
            &mut p.df,
        ] {
            *f = next;
            next += 0x10_0000;
        }
        assert!(check_pointers(&p, Variant::Exp, TC, false).is_ok());
        let arg_of = |p: &BwdPointers, v| match check_pointers(p, v, TC, false) {
            Err(Error::Invalid { arg, .. }) => arg,
            other => panic!("expected Error::Invalid, got {other:?}"),
        };
        let mut bad = p;
        bad.norm_rows = 0;
        assert_eq!(arg_of(&bad, Variant::Exp), "norm_rows");
        assert!(check_pointers(&bad, Variant::Sig { normalize: false }, TC, false).is_ok());
        let mut bad = p;
        bad.dc_final = 0x2000_0000;
        assert_eq!(arg_of(&bad, Variant::Exp), "c_final");
        let mut bad = p;
        bad.row_coef += 4;
        assert_eq!(arg_of(&bad, Variant::Exp), "row_coef");
        let mut bad = p;
        bad.dh += 8;
        assert_eq!(arg_of(&bad, Variant::Exp), "dh");
        let mut bad = p;
        bad.dn_states += 4;
        assert_eq!(arg_of(&bad, Variant::Exp), "dn_states");
        let mut bad = p;
        bad.di += 2;
        assert_eq!(arg_of(&bad, Variant::Exp), "di");
        let mut bad = p;
        bad.scores_dp = 0;
        assert_eq!(arg_of(&bad, Variant::Exp), "scores_dp");
        // The chunk kernel keeps the score matrices on chip.
        assert!(check_pointers(&bad, Variant::Exp, TC, true).is_ok());
        // The f32 path needs its scratch, not the tensor-core workspace.
        let f32_arg = |p: &BwdPointers| match check_pointers(p, Variant::Exp, Path::F32, false) {
            Err(Error::Invalid { arg, .. }) => arg,
            other => panic!("expected Error::Invalid, got {other:?}"),
        };
        assert_eq!(f32_arg(&bad), "segments");
        bad.segments = next;
        assert!(check_pointers(&bad, Variant::Exp, Path::F32, false).is_ok());
        bad.dq += 4;
        assert_eq!(f32_arg(&bad), "dq");
    }

    #[test]
    fn f32_path_needs_only_its_workspace() {
        let d = dims(1000, 80, 272);
        let l = workspace_layout(&Device::HOPPER, &d, Dtype::F32, 256, 1);
        let numel = |name| numel_of(&l, name);
        for name in [
            "dc_states",
            "dn_states",
            "scores_p",
            "scores_dp",
            "row_dots",
            "pair_sums",
        ] {
            assert_eq!(numel(name), 0, "{name}");
        }
        // BH = 6, 18 column tiles (272 + ñ), 32 slots at L = 256, 80 × 16 per slot.
        assert_eq!(numel("segments"), 6 * 18 * 32 * 80 * 16);
        assert_eq!(numel("state_dots"), 6 * 6 * bwd::state::MAX_TILES as usize);
        assert_eq!(
            numel_of(
                &workspace_layout(&Device::HOPPER, &d, Dtype::Bf16, 256, 1),
                "segments"
            ),
            0
        );
    }

    fn numel_of(l: &[(&'static str, Dtype, Vec<usize>)], name: &str) -> usize {
        l.iter()
            .find(|(n, ..)| *n == name)
            .unwrap()
            .2
            .iter()
            .product()
    }
}
