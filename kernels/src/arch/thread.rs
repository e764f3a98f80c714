//! Thread and block indices, block-wide barriers.
use core::arch::nvptx;

/// Index of this thread in its (one-dimensional) block.
#[inline(always)]
pub fn thread_idx() -> u32 {
    // SAFETY: reads a special register.
    unsafe { nvptx::_thread_idx_x() as u32 }
}

/// Lane of this thread in its warp.
#[inline(always)]
pub fn lane() -> u32 {
    thread_idx() % 32
}

/// Warp of this thread in its block.
#[inline(always)]
pub fn warp() -> u32 {
    thread_idx() / 32
}

/// Block index along x, y, z.
#[inline(always)]
pub fn block_idx() -> (u32, u32, u32) {
    // SAFETY: reads special registers.
    unsafe {
        (
            nvptx::_block_idx_x() as u32,
            nvptx::_block_idx_y() as u32,
            nvptx::_block_idx_z() as u32,
        )
    }
}

/// `bar.sync 0`: waits for every thread of the block and orders their shared-memory accesses.
///
/// # Safety
/// Every thread of the block must reach this call (no divergent early exit before it).
#[inline(always)]
pub unsafe fn sync_threads() {
    // SAFETY: forwarded to the caller.
    unsafe { nvptx::_syncthreads() }
}

/// Aborts the kernel; the host sees a launch failure.
#[inline(always)]
pub fn trap() -> ! {
    // SAFETY: `trap` has no preconditions.
    unsafe { nvptx::trap() }
}
