//! Thin wrappers over PTX instructions and NVVM intrinsics, one file per instruction family.
//! Nothing here knows about mLSTM; every `unsafe fn` states its preconditions.
//!
//! Warp-collective instructions (`ldmatrix`, `mma`, `shfl`) are emitted as `asm!` without
//! `pure`, so LLVM treats them as having side effects and never moves them into or out of
//! branches: every lane of the warp must execute them together.

/// A load of one, two or four registers from a state space: `load!(docs name(address type:
/// its register class) -> value type = "instruction")`, the value type `T`, `[T; 2]` or
/// `[T; 4]` (32-bit each) and the instruction's operands `value, [address]`. LLVM may move or
/// drop it as a pure read of memory.
macro_rules! load {
    ($(#[$doc:meta])* $name:ident($addr:ty: $class:tt) -> [$t:ty; 4] = $instr:literal) => {
        $(#[$doc])*
        #[inline(always)]
        pub unsafe fn $name(addr: $addr) -> [$t; 4] {
            let (x, y, z, w): ($t, $t, $t, $t);
            unsafe {
                core::arch::asm!(concat!($instr, " {{{x}, {y}, {z}, {w}}}, [{a}];"),
                                 x = out(reg32) x, y = out(reg32) y, z = out(reg32) z,
                                 w = out(reg32) w, a = in($class) addr,
                                 options(pure, readonly, nostack))
            };
            [x, y, z, w]
        }
    };
    ($(#[$doc:meta])* $name:ident($addr:ty: $class:tt) -> [$t:ty; 2] = $instr:literal) => {
        $(#[$doc])*
        #[inline(always)]
        pub unsafe fn $name(addr: $addr) -> [$t; 2] {
            let (x, y): ($t, $t);
            unsafe {
                core::arch::asm!(concat!($instr, " {{{x}, {y}}}, [{a}];"), x = out(reg32) x,
                                 y = out(reg32) y, a = in($class) addr,
                                 options(pure, readonly, nostack))
            };
            [x, y]
        }
    };
    ($(#[$doc:meta])* $name:ident($addr:ty: $class:tt) -> $t:ty = $instr:literal) => {
        $(#[$doc])*
        #[inline(always)]
        pub unsafe fn $name(addr: $addr) -> $t {
            let v: $t;
            unsafe {
                core::arch::asm!(concat!($instr, " {v}, [{a}];"), v = out(reg32) v,
                                 a = in($class) addr, options(pure, readonly, nostack))
            };
            v
        }
    };
}

/// A store of one, two or four registers to a state space: `store!(docs name(address type: its
/// register class, value type) = "instruction")`, the value type as in [`load!`] and the
/// instruction's operands `[address], value`.
macro_rules! store {
    ($(#[$doc:meta])* $name:ident($addr:ty: $class:tt, [$t:ty; 4]) = $instr:literal) => {
        $(#[$doc])*
        #[inline(always)]
        pub unsafe fn $name(addr: $addr, v: [$t; 4]) {
            unsafe {
                core::arch::asm!(concat!($instr, " [{a}], {{{x}, {y}, {z}, {w}}};"),
                                 a = in($class) addr, x = in(reg32) v[0], y = in(reg32) v[1],
                                 z = in(reg32) v[2], w = in(reg32) v[3], options(nostack))
            };
        }
    };
    ($(#[$doc:meta])* $name:ident($addr:ty: $class:tt, [$t:ty; 2]) = $instr:literal) => {
        $(#[$doc])*
        #[inline(always)]
        pub unsafe fn $name(addr: $addr, v: [$t; 2]) {
            unsafe {
                core::arch::asm!(concat!($instr, " [{a}], {{{x}, {y}}};"), a = in($class) addr,
                                 x = in(reg32) v[0], y = in(reg32) v[1], options(nostack))
            };
        }
    };
    ($(#[$doc:meta])* $name:ident($addr:ty: $class:tt, $t:ty) = $instr:literal) => {
        $(#[$doc])*
        #[inline(always)]
        pub unsafe fn $name(addr: $addr, v: $t) {
            unsafe {
                core::arch::asm!(concat!($instr, " [{a}], {v};"), a = in($class) addr,
                                 v = in(reg32) v, options(nostack))
            };
        }
    };
}

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
