//! tfla's device code, compiled for `nvptx64-nvidia-cuda` only (by `tfla-ptx-build`).
//!
//! - [`arch`]: thin wrappers over PTX instructions (`asm!`) and NVVM intrinsics, nothing else.
//! - [`tile`]: fragment layouts of `mma.sync` m16n8k16 and shared-memory tile addressing.
//! - [`mlstm`]: the mLSTM kernels, one file per output; gate variant and dtype are type parameters.
#![no_std]
#![feature(abi_ptx, stdarch_nvptx, asm_experimental_arch)]
#![allow(clippy::missing_safety_doc)]

// `unroll!` (with the register tile it serves, in `tfla_params::fragment`).
#[macro_use]
extern crate tfla_params;

pub mod arch;
pub mod mlstm;
pub mod tile;

/// Kernels never panic on validated input; a panic (out-of-bounds slice index, overflow in a
/// debug build) traps the kernel so the host sees a launch failure instead of a wrong answer.
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    arch::thread::trap()
}
