//! `cp.async`: asynchronous 16-byte global → shared copies (sm_80+), with zero fill.
use core::arch::asm;

/// Copies `src_bytes` (0..=16) bytes from `gptr` to `saddr` and zero-fills the rest of the 16.
/// With `src_bytes == 0` nothing is read, which is how out-of-range rows become zeros.
///
/// # Safety
/// `saddr` is a 16-byte aligned shared address inside the dynamic shared memory; `gptr` is a
/// 16-byte aligned global address with `src_bytes` readable bytes. The copy is complete
/// only after [`commit`] and a matching [`wait`], followed by a barrier for other threads.
#[inline(always)]
pub unsafe fn copy_16(saddr: u32, gptr: u64, src_bytes: u32) {
    unsafe {
        asm!("cp.async.cg.shared.global [{s}], [{g}], 16, {n};", s = in(reg32) saddr,
             g = in(reg64) gptr, n = in(reg32) src_bytes, options(nostack))
    };
}

/// Closes the group of copies issued since the last commit.
///
/// # Safety
/// None beyond being called by the threads that issued the copies.
#[inline(always)]
pub unsafe fn commit() {
    unsafe { asm!("cp.async.commit_group;", options(nostack)) };
}

/// Waits until at most `N` committed groups of this thread are still in flight.
///
/// # Safety
/// None; other threads' copies need a barrier after this.
#[inline(always)]
pub unsafe fn wait<const N: u32>() {
    unsafe { asm!("cp.async.wait_group {n};", n = const N, options(nostack)) };
}
