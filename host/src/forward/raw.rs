//! The forward pass on raw device pointers: the checks, the kernel parameters and the
//! launches of its plan.
use super::outputs::chunk_states_optional;
use crate::config::{Dims, MlstmConfig};
use crate::error::{Error, Result};
use crate::launch;
use crate::runtime::Runtime;
use crate::tensor::Dtype;
use crate::variant::Variant;
use cust::sys::CUstream;

use tfla_params::fwd::{self, FwdParams, FwdPointers};
use tfla_params::{Dtype as KDtype, Gates, Path};

/// The forward pass on caller-owned device memory, launched on `stream` (for frameworks that
/// own their buffers). Validates the dimensions, config and pointer alignment; returns once
/// the kernels are queued.
///
/// With `ptrs.slots` (B u32), c0, n0, m0 and c_final, n_final, m_final are indexed by
/// `slots[b]·NH + h` instead of b·NH + h (a state pool: [`FwdPointers::slots`]).
///
/// # Safety
/// Every non-zero pointer addresses a live allocation of the runtime's context, large enough
/// for its tensor at `dims` (and the chunk count NC = ceil(S / L) of `cfg`; with slots, the
/// states for the pool's num_slots), holding `dtype` (q, k, v, h, c_states) or f32 (everything
/// else; slots u32); slots, if given, are B values below num_slots, no two equal
/// ([`crate::slots::check_slots`]); outputs do not overlap inputs or each other, except that
/// each final state may be the memory of its initial state (c_final = c0, n_final = n0,
/// m_final = m0: updated in place). With `chunk_size` None, L follows `cfg.row_stats`
/// ([`crate::select_chunk_size`]): a backward of these outputs must run with the same config.
/// `c_states` may be null where [`crate::output_layout`] leaves it out and the device runs the
/// one-kernel forward ([`crate::forward_workspace_layout`] is empty); a backward of such
/// outputs then needs the chunk states recomputed (the safe API does that).
pub unsafe fn mlstm_fwd_raw(
    rt: &Runtime,
    stream: CUstream,
    ptrs: &FwdPointers,
    dims: Dims,
    dtype: Dtype,
    cfg: &MlstmConfig,
) -> Result<()> {
    launch::check_not_packed(ptrs.seq_chunks)?;
    // SAFETY: this function's contract; one sequence per head.
    unsafe { launch_fwd(rt, stream, ptrs, dims, dtype, cfg, 1, false) }
}

/// [`mlstm_fwd_raw`] for `seqs` sequences per head (`ptrs.seq_chunks` their chunk offsets when
/// `seqs` > 1: a packed batch, `crate::varlen`, which has checked the table). With
/// `states_only`, only the state pass (chunk_state, or the f32 recurrence): the chunk states
/// again for a backward whose forward released them (chunk_gates' vectors and the chunk-0 ñ, m
/// are still there; the pass rewrites ñ_k, m_k of the later chunks with the same values).
///
/// # Safety
/// As [`mlstm_fwd_raw`], with the initial and final states (and slots) of `seqs` batch rows.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn launch_fwd(
    rt: &Runtime,
    stream: CUstream,
    ptrs: &FwdPointers,
    dims: Dims,
    dtype: Dtype,
    cfg: &MlstmConfig,
    seqs: u32,
    states_only: bool,
) -> Result<()> {
    dims.validate()?;
    let chunk = cfg.chunk_for(&dims)?;
    let scale = cfg.scale_for(&dims)?;
    let finals = [ptrs.c_final, ptrs.n_final, ptrs.m_final];
    if finals.contains(&0) && finals.iter().any(|&p| p != 0) {
        return Err(Error::Invalid {
            arg: "c_final/n_final/m_final",
            value: format!("{finals:?}"),
            reason: "give all three final-state pointers or none",
        });
    }
    launch::check_pointers(&fwd::pointers(ptrs))?;
    if ptrs.c_states == 0
        && (states_only || !chunk_states_optional(&rt.plan_device(), &dims, dtype, cfg)?)
    {
        return Err(Error::Invalid {
            arg: "c_states",
            value: "null".into(),
            reason: "required pointer, except for a forward without row_stats at the heads \
                     the one-kernel forward takes on this device (tfla::output_layout leaves \
                     it out there; tfla::forward_workspace_layout lists it where it is needed)",
        });
    }
    let params = fwd_params(ptrs, &dims, cfg, chunk, scale, seqs);
    let plan = fwd::plan(
        &rt.plan_device(),
        &params,
        kernel_gates(cfg.variant),
        path_of(dtype),
        states_only,
    );
    // SAFETY: pointers per this function's contract; dims, chunk and alignment checked.
    unsafe { launch::run_plan(rt, stream, plan.as_slice(), &params) }
}

/// The forward kernels' parameters for validated `dims`, `cfg` and the chunk size and scale
/// it gives.
pub(crate) fn fwd_params(
    ptrs: &FwdPointers,
    dims: &Dims,
    cfg: &MlstmConfig,
    chunk: usize,
    scale: f32,
    seqs: u32,
) -> FwdParams {
    FwdParams {
        ptr: FwdPointers {
            // Without the normalizer ñ0 is not read: chunk_gates (whose entry serves both
            // mLSTMsig variants) then stores ñ_0 = 0 in the chunk states.
            n0: if cfg.variant.normalizes() { ptrs.n0 } else { 0 },
            ..*ptrs
        },
        bh: dims.bh() as u32,
        nh: dims.nh as u32,
        s: dims.s as u32,
        dqk: dims.dqk as u32,
        dhv: dims.dhv as u32,
        chunk: chunk as u32,
        num_chunks: dims.s.div_ceil(chunk) as u32,
        scale,
        eps: cfg.eps,
        seqs,
    }
}

/// Which kernels run a pass for an input dtype: the tensor cores for 16-bit inputs, the f32
/// recurrences for f32.
pub(crate) fn path_of(dtype: Dtype) -> Path {
    match dtype {
        Dtype::Bf16 => Path::TensorCores(KDtype::Bf16),
        Dtype::F16 => Path::TensorCores(KDtype::F16),
        Dtype::F32 => Path::F32,
    }
}

/// The kernels' gate type parameter for `variant` (entry-point names and `Gates` branches).
pub(crate) fn kernel_gates(variant: Variant) -> Gates {
    match variant {
        Variant::Exp => Gates::Exp,
        Variant::Sig { normalize: true } => Gates::Sig,
        Variant::Sig { normalize: false } => Gates::SigNoNorm,
    }
}
