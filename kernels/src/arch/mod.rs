//! Thin wrappers over PTX instructions and NVVM intrinsics, one file per instruction family.
//! Nothing here knows about mLSTM; every `unsafe fn` states its preconditions.
//!
//! Warp-collective instructions (`ldmatrix`, `mma`, `shfl`) are emitted as `asm!` without
//! `pure`, so LLVM treats them as having side effects and never moves them into or out of
//! branches: every lane of the warp must execute them together.
pub mod atomic;
pub mod convert;
pub mod cp_async;
pub mod global;
pub mod ldmatrix;
pub mod math;
pub mod mma;
pub mod shared;
pub mod shfl;
pub mod thread;
#[cfg(target_feature = "sm_90a")]
pub mod wgmma;
