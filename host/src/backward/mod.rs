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
    CheckedInputs, MlstmInputs, MlstmOutputs, fwd_checked, fwd_pointers, launch_fwd,
};
use crate::runtime::Runtime;
use crate::tensor::{Dtype, Tensor};
use crate::variant::GradMode;
pub use tfla_params::bwd::BwdPointers;

mod grads;
mod raw;
pub(crate) use grads::expect_initial_grad;
pub use grads::{BwdWorkspace, MlstmGradOutputs, MlstmGrads, workspace_layout};
#[cfg(test)]
pub(crate) use raw::bwd_params;
pub(crate) use raw::launch_bwd;
pub use raw::mlstm_bwd_raw;

/// Runs the backward pass, allocating the gradients. `fwd` holds the outputs of the forward
/// pass on the same `inputs` and `cfg` (with `row_stats`, which the normalized variants need and
/// which picks the automatic chunk size for a forward+backward).
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
    let [q, k, v, i, f, c0, n0, m0] = inputs.device_ptrs();
    BwdPointers {
        q,
        k,
        v,
        i,
        f,
        c0,
        n0,
        m0,
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
