//! Dynamic shared memory: one extern array, addressed with 32-bit shared-window addresses.
use core::arch::asm;

core::arch::global_asm!(".extern .shared .align 16 .b8 tfla_smem[];");

/// Shared-window address of the block's dynamic shared memory (16-byte aligned).
#[inline(always)]
pub fn base() -> u32 {
    let r: u32;
    // SAFETY: takes the address of a symbol.
    unsafe { asm!("mov.u32 {r}, tfla_smem;", r = out(reg32) r, options(pure, nomem, nostack)) };
    r
}

/// # Safety
/// `addr` is a 4-byte aligned address inside the launch's dynamic shared memory.
#[inline(always)]
pub unsafe fn ld_f32(addr: u32) -> f32 {
    let v: f32;
    unsafe {
        asm!("ld.shared.f32 {v}, [{a}];", v = out(reg32) v, a = in(reg32) addr,
             options(pure, readonly, nostack))
    };
    v
}

/// # Safety
/// As [`ld_f32`].
#[inline(always)]
pub unsafe fn st_f32(addr: u32, v: f32) {
    unsafe {
        asm!("st.shared.f32 [{a}], {v};", a = in(reg32) addr, v = in(reg32) v, options(nostack))
    };
}

/// # Safety
/// `addr` is an 8-byte aligned address inside the launch's dynamic shared memory.
#[inline(always)]
pub unsafe fn st_v2(addr: u32, v: [u32; 2]) {
    unsafe {
        asm!("st.shared.v2.b32 [{a}], {{{x}, {y}}};", a = in(reg32) addr,
             x = in(reg32) v[0], y = in(reg32) v[1], options(nostack))
    };
}

/// # Safety
/// `addr` is a 16-byte aligned address inside the launch's dynamic shared memory.
#[inline(always)]
pub unsafe fn st_v4(addr: u32, v: [u32; 4]) {
    unsafe {
        asm!("st.shared.v4.b32 [{a}], {{{x}, {y}, {z}, {w}}};", a = in(reg32) addr,
             x = in(reg32) v[0], y = in(reg32) v[1], z = in(reg32) v[2], w = in(reg32) v[3],
             options(nostack))
    };
}

/// Loads one 16-bit element, zero-extended.
///
/// # Safety
/// `addr` is a 2-byte aligned address inside the launch's dynamic shared memory.
#[inline(always)]
pub unsafe fn ld_u16(addr: u32) -> u32 {
    let v: u32;
    unsafe {
        asm!("{{ .reg .b16 t; ld.shared.b16 t, [{a}]; cvt.u32.u16 {v}, t; }}", v = out(reg32) v,
             a = in(reg32) addr, options(pure, readonly, nostack))
    };
    v
}

/// # Safety
/// As [`st_v4`].
#[inline(always)]
pub unsafe fn ld_v4(addr: u32) -> [u32; 4] {
    let (x, y, z, w): (u32, u32, u32, u32);
    unsafe {
        asm!("ld.shared.v4.b32 {{{x}, {y}, {z}, {w}}}, [{a}];", a = in(reg32) addr,
             x = out(reg32) x, y = out(reg32) y, z = out(reg32) z, w = out(reg32) w,
             options(pure, readonly, nostack))
    };
    [x, y, z, w]
}

/// Loads one u32.
///
/// # Safety
/// As [`ld_f32`].
#[inline(always)]
pub unsafe fn ld_u32(addr: u32) -> u32 {
    let v: u32;
    unsafe {
        asm!("ld.shared.u32 {v}, [{a}];", v = out(reg32) v, a = in(reg32) addr,
             options(pure, readonly, nostack))
    };
    v
}

/// Stores one u32.
///
/// # Safety
/// As [`ld_f32`].
#[inline(always)]
pub unsafe fn st_u32(addr: u32, v: u32) {
    unsafe {
        asm!("st.shared.u32 [{a}], {v};", a = in(reg32) addr, v = in(reg32) v, options(nostack))
    };
}
