//! Thread and block indices, block-wide barriers.
use core::arch::nvptx;

/// Index of this thread in its (one-dimensional) block.
#[inline(always)]
pub fn thread_idx() -> u32 {
    // SAFETY: reads a special register.
    unsafe { nvptx::_thread_idx_x() as u32 }
}

/// Index of this thread, read from its special register where it is called: unlike
/// [`thread_idx`], the read is not merged with earlier ones, so index math at the end of a
/// long walk does not hold a register throughout it.
#[inline(always)]
pub fn thread_idx_here() -> u32 {
    let t: u32;
    // SAFETY: reads a special register; deliberately not `pure` (no CSE, no hoisting).
    unsafe { core::arch::asm!("mov.u32 {t}, %tid.x;", t = out(reg32) t, options(nomem, nostack)) };
    t
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

/// [`block_idx`] read from its special registers where it is called (as [`thread_idx_here`]):
/// values derived from it at the end of a long walk are not held in registers throughout it.
#[inline(always)]
pub fn block_idx_here() -> (u32, u32, u32) {
    let (x, y, z): (u32, u32, u32);
    // SAFETY: reads special registers; deliberately not `pure` (no CSE, no hoisting).
    unsafe {
        core::arch::asm!("mov.u32 {x}, %ctaid.x;", "mov.u32 {y}, %ctaid.y;", "mov.u32 {z}, %ctaid.z;",
                         x = out(reg32) x, y = out(reg32) y, z = out(reg32) z, options(nomem, nostack))
    };
    (x, y, z)
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

/// The thread's warpgroup (128 threads), broadcast from lane 0: ptxas then knows it is the same
/// in every lane of a warp (it keeps it in a uniform register), so a `wgmma` behind a loop or
/// branch that depends on it is not serialized as one in a divergent path (C7520).
///
/// # Safety
/// All 32 lanes of the warp call it together.
#[inline(always)]
pub unsafe fn warpgroup() -> u32 {
    unsafe { super::shfl::idx_u32(thread_idx() / 128, 0) }
}

/// `bar.warp.sync`: waits for every lane of the warp and orders their shared-memory accesses.
///
/// # Safety
/// Every lane of the warp must reach this call.
#[inline(always)]
pub unsafe fn sync_warp() {
    // SAFETY: forwarded to the caller.
    unsafe { core::arch::asm!("bar.warp.sync -1;", options(nostack)) }
}

/// Aborts the kernel; the host sees a launch failure.
#[inline(always)]
pub fn trap() -> ! {
    // SAFETY: `trap` has no preconditions.
    unsafe { nvptx::trap() }
}

/// `x`, through an instruction the compiler may neither hoist nor merge with another use:
/// index math derived from it is redone where it is used. A register tile's epilogue would
/// otherwise keep one precomputed address per element live across the whole kernel (64
/// 64-bit offsets for a 64 × 64 warp tile: the difference between 160 and 255+ registers).
#[inline(always)]
pub fn opaque(x: u32) -> u32 {
    let y: u32;
    // SAFETY: a register move; deliberately not `pure` (that would allow hoisting and CSE).
    unsafe {
        core::arch::asm!("mov.u32 {y}, {x};", y = out(reg32) y, x = in(reg32) x, options(nomem, nostack))
    };
    y
}

/// [`opaque`] for a 64-bit address: a base whose parts LLVM would otherwise re-associate with
/// each element's offset (`(a + b·4) + i·4` into `a + (b + i)·4`: a 64-bit add, shift and add
/// per element where `base + i·4` is one wide multiply-add).
#[inline(always)]
pub fn opaque_u64(x: u64) -> u64 {
    let y: u64;
    // SAFETY: as `opaque`.
    unsafe {
        core::arch::asm!("mov.u64 {y}, {x};", y = out(reg64) y, x = in(reg64) x, options(nomem, nostack))
    };
    y
}

/// Runs `body(0)`, …, `body(n - 1)` (n ≥ 1) as a loop that neither LLVM nor ptxas unrolls:
/// the counter passes through [`opaque`] (no trip count to unroll by) and the loop header
/// carries PTX's `nounroll` pragma. For loops whose unrolled bodies would outgrow the
/// instruction cache.
#[inline(always)]
pub fn rolled_loop(n: u32, mut body: impl FnMut(u32)) {
    let mut i = 0;
    loop {
        // SAFETY: a directive, no instruction.
        unsafe { core::arch::asm!(".pragma \"nounroll\";", options(nomem, nostack)) };
        body(i);
        i = opaque(i + 1);
        if i >= n {
            break;
        }
    }
}
