//! tfla: Tiled Flash Linear Attention (mLSTM) kernels for NVIDIA Hopper GPUs. The device code
//! is Rust (the `kernels/` crate, compiled to PTX by the build script); this crate loads it
//! through cust, validates every argument, and launches.
//!
//! - [`mlstm_fwd`]: the chunkwise forward pass (mLSTMexp and mLSTMsig), see [`forward`].
//! - [`reference`]: the float64 CPU reference (recurrent, parallel, chunkwise forms and the
//!   gradient), the ground truth of every test.
//! - [`registry`]: the kernel variants by name.
pub mod config;
pub mod error;
pub mod flops;
pub mod forward;
pub mod io;
mod launch;
pub mod reference;
pub mod registry;
pub mod runtime;
pub mod tensor;
pub mod variant;

pub use config::{Dims, MlstmConfig, select_chunk_size};
pub use error::{Error, Result};
pub use forward::{
    ChunkGates, ChunkStates, DeviceInputs, FwdPointers, MlstmInputs, MlstmOutputs, RowStats,
    fwd_pointers, mlstm_fwd, mlstm_fwd_into, mlstm_fwd_raw,
};
pub use runtime::Runtime;
pub use tensor::{Dtype, Tensor};
pub use variant::Variant;
