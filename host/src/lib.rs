//! tfla: Tiled Flash Linear Attention (mLSTM) kernels for NVIDIA Hopper GPUs. The device code
//! is Rust (the `kernels/` crate, compiled to PTX by the build script); this crate loads it
//! through cust, validates every argument, and launches.
//!
//! - [`mlstm_fwd`]: the chunkwise forward pass (mLSTMexp and mLSTMsig), see [`forward`].
//! - [`mlstm_bwd`], [`mlstm_fwd_bwd`]: the backward pass, exact or with a detached normalizer
//!   ([`GradMode`]), see [`backward`].
//! - [`mlstm_step`]: one recurrent step for generation, states updated in place, see [`step`].
//! - [`StatePool`], [`Slots`]: states of many sequences in one pool, each batch row of a
//!   forward reading and writing its own slot (`MlstmInputs::pool`), see [`slots`].
//! - [`reference`]: the float64 CPU reference (recurrent, parallel, chunkwise forms and the
//!   gradient), the ground truth of every test.
//! - [`registry`]: the kernel variants by name.
pub mod backward;
pub mod config;
pub mod dtype;
pub mod error;
pub mod flops;
pub mod forward;
pub mod io;
mod launch;
pub mod reference;
pub mod registry;
pub mod runtime;
pub mod slots;
pub mod step;
pub mod tensor;
mod trace;
pub mod variant;
pub mod varlen;

pub use backward::{
    BwdPointers, BwdWorkspace, MlstmGradOutputs, MlstmGrads, bwd_pointers, mlstm_bwd,
    mlstm_bwd_into, mlstm_bwd_raw, mlstm_fwd_bwd, workspace_layout,
};
pub use config::{Dims, MlstmConfig, select_chunk_size};
/// The driver's stream handle the `_raw` entry points launch on.
pub use cust::sys::CUstream;
pub use error::{Error, Result};
pub use forward::{
    CheckedInputs, ChunkGates, ChunkStates, DeviceInputs, FwdPointers, MlstmInputs, MlstmOutputs,
    RowStats, forward_workspace_layout, fwd_pointers, mlstm_fwd, mlstm_fwd_into, mlstm_fwd_raw,
    output_layout,
};
pub use runtime::Runtime;
pub use slots::{PoolSlots, Slots, StatePool, check_slots};
pub use step::{
    StepDims, StepInputs, StepPointers, StepStates, mlstm_step, mlstm_step_into, mlstm_step_pool,
    mlstm_step_pool_into, mlstm_step_raw, step_pointers,
};
pub use tensor::{Dtype, Tensor};
pub use trace::LaunchTime;
pub use variant::{GradMode, Variant};
pub use varlen::{
    VarlenDims, VarlenGrads, VarlenInputs, VarlenOutputs, mlstm_bwd_varlen, mlstm_bwd_varlen_into,
    mlstm_fwd_varlen, mlstm_fwd_varlen_into,
};
