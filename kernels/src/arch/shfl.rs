//! Warp shuffles.
use core::arch::asm;

/// Value of `v` held by lane `lane ^ mask`.
///
/// # Safety
/// All 32 lanes of the warp call it together.
#[inline(always)]
pub unsafe fn xor_u32(v: u32, mask: u32) -> u32 {
    let r: u32;
    unsafe {
        asm!("shfl.sync.bfly.b32 {r}, {v}, {m}, 0x1f, 0xffffffff;", r = out(reg32) r,
             v = in(reg32) v, m = in(reg32) mask, options(nomem, nostack))
    };
    r
}

/// Value of `v` held by lane `lane ^ mask`, f32.
///
/// # Safety
/// As [`xor_u32`].
#[inline(always)]
pub unsafe fn xor_f32(v: f32, mask: u32) -> f32 {
    f32::from_bits(unsafe { xor_u32(v.to_bits(), mask) })
}

/// Value of `v` held by lane `lane - delta` (own value for lanes below `delta`).
///
/// # Safety
/// All 32 lanes of the warp call it together.
#[inline(always)]
pub unsafe fn up_f32(v: f32, delta: u32) -> f32 {
    let r: f32;
    unsafe {
        asm!("shfl.sync.up.b32 {r}, {v}, {d}, 0x0, 0xffffffff;", r = out(reg32) r,
             v = in(reg32) v, d = in(reg32) delta, options(nomem, nostack))
    };
    r
}

/// Value of `v` held by lane `lane + delta` (own value for lanes past 31 − `delta`).
///
/// # Safety
/// All 32 lanes of the warp call it together.
#[inline(always)]
pub unsafe fn down_f32(v: f32, delta: u32) -> f32 {
    let r: f32;
    unsafe {
        asm!("shfl.sync.down.b32 {r}, {v}, {d}, 0x1f, 0xffffffff;", r = out(reg32) r,
             v = in(reg32) v, d = in(reg32) delta, options(nomem, nostack))
    };
    r
}

/// Value of `v` held by lane `src`.
///
/// # Safety
/// All 32 lanes of the warp call it together.
#[inline(always)]
pub unsafe fn idx_u32(v: u32, src: u32) -> u32 {
    let r: u32;
    unsafe {
        asm!("shfl.sync.idx.b32 {r}, {v}, {s}, 0x1f, 0xffffffff;", r = out(reg32) r,
             v = in(reg32) v, s = in(reg32) src, options(nomem, nostack))
    };
    r
}
