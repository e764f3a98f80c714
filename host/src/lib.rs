//! tfla: Tiled Flash Linear Attention (mLSTM) kernels, device code in Rust, launched through cust.
pub mod reference;
pub mod variant;

pub use variant::Variant;
