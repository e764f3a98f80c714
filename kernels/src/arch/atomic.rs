//! Global-memory atomics with explicit memory-order semantics (PTX memory model, sm_70+).
use core::arch::asm;

/// `atom.acq_rel.gpu.global.add.u32`: adds `v` to the u32 at `ptr` and returns the old value.
/// Release: this thread's earlier memory accesses (and, through a preceding `bar.sync`, those
/// of its block) happen before any thread that acquires the new value; acquire: accesses after
/// it happen after those of every thread that released an earlier value.
///
/// # Safety
/// `ptr` is a 4-byte aligned global address of a u32 that other threads access only
/// atomically or after synchronizing through it.
#[inline(always)]
pub unsafe fn add_acq_rel_gpu_u32(ptr: u64, v: u32) -> u32 {
    let old: u32;
    unsafe {
        asm!("atom.acq_rel.gpu.global.add.u32 {o}, [{p}], {v};", o = out(reg32) old,
             p = in(reg64) ptr, v = in(reg32) v, options(nostack))
    };
    old
}

/// `red.global.add.f32`: adds `v` to the f32 at `ptr` (relaxed; no value returned).
///
/// # Safety
/// `ptr` is a 4-byte aligned global address of an f32 that other threads access only
/// atomically during the kernel.
#[inline(always)]
pub unsafe fn red_add_f32(ptr: u64, v: f32) {
    unsafe {
        asm!("red.global.add.f32 [{p}], {v};", p = in(reg64) ptr, v = in(reg32) v,
             options(nostack))
    };
}
