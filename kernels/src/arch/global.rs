//! Global-memory loads and stores with explicit widths. Addresses are the device pointers the
//! host passes (u64); they are used with `.global` instructions directly, as the global window
//! of the generic address space is the identity on every NVIDIA GPU.
use core::arch::asm;

load!(
    /// Read-only (non-coherent cache) 16-byte load.
    ///
    /// # Safety
    /// `addr` is 16-byte aligned, points to 16 readable bytes, and nothing writes them during the
    /// kernel.
    ld_nc_v4(u64: reg64) -> [u32; 4] = "ld.global.nc.v4.b32"
);

load!(
    /// Read-only 4-byte load.
    ///
    /// # Safety
    /// As [`ld_nc_v4`] for 4 aligned bytes.
    ld_nc_f32(u64: reg64) -> f32 = "ld.global.nc.f32"
);

store!(
    /// 4-byte store.
    ///
    /// # Safety
    /// `addr` is 4-byte aligned and points to 4 writable bytes no other thread accesses.
    st_b32(u64: reg64, u32) = "st.global.b32"
);

store!(
    /// 4-byte f32 store.
    ///
    /// # Safety
    /// As [`st_b32`].
    st_f32(u64: reg64, f32) = "st.global.f32"
);

store!(
    /// 8-byte store of two f32.
    ///
    /// # Safety
    /// `addr` is 8-byte aligned and points to 8 writable bytes no other thread accesses.
    st_v2_f32(u64: reg64, [f32; 2]) = "st.global.v2.f32"
);

load!(
    /// 8-byte load of two f32 (coherent: the data may have been written by an earlier launch).
    ///
    /// # Safety
    /// `addr` is 8-byte aligned and points to 8 readable bytes.
    ld_v2_f32(u64: reg64) -> [f32; 2] = "ld.global.v2.f32"
);

load!(
    /// 4-byte load of an f32 (coherent: sees this kernel's own earlier stores).
    ///
    /// # Safety
    /// `addr` is 4-byte aligned and points to 4 readable bytes.
    ld_f32(u64: reg64) -> f32 = "ld.global.f32"
);

load!(
    /// 16-byte load of four f32 (coherent).
    ///
    /// # Safety
    /// `addr` is 16-byte aligned and points to 16 readable bytes.
    ld_v4_f32(u64: reg64) -> [f32; 4] = "ld.global.v4.f32"
);

/// [`st_v2_f32`] when `pred` holds, nothing otherwise; branch-free (a predicated store), so
/// loops over register tiles that contain it unroll and keep the tile in registers.
///
/// # Safety
/// As [`st_v2_f32`] whenever `pred` holds.
#[inline(always)]
pub unsafe fn st_v2_f32_if(pred: bool, ptr: u64, v: [f32; 2]) {
    unsafe {
        asm!("{{ .reg .pred p; setp.ne.u32 p, {c}, 0; @p st.global.v2.f32 [{p}], {{{x}, {y}}}; }}",
             c = in(reg32) pred as u32, p = in(reg64) ptr, x = in(reg32) v[0], y = in(reg32) v[1],
             options(nostack))
    };
}

/// [`st_b32`] when `pred` holds; branch-free as [`st_v2_f32_if`].
///
/// # Safety
/// As [`st_b32`] whenever `pred` holds.
#[inline(always)]
pub unsafe fn st_b32_if(pred: bool, ptr: u64, v: u32) {
    unsafe {
        asm!("{{ .reg .pred p; setp.ne.u32 p, {c}, 0; @p st.global.b32 [{p}], {v}; }}",
             c = in(reg32) pred as u32, p = in(reg64) ptr, v = in(reg32) v, options(nostack))
    };
}

/// [`ld_v2_f32`] when `pred` holds, zeros otherwise; branch-free as [`st_v2_f32_if`].
///
/// # Safety
/// As [`ld_v2_f32`] whenever `pred` holds.
#[inline(always)]
pub unsafe fn ld_v2_f32_or_zero(pred: bool, ptr: u64) -> [f32; 2] {
    let (x, y): (f32, f32);
    unsafe {
        asm!("{{ .reg .pred p; setp.ne.u32 p, {c}, 0; mov.b32 {x}, 0; mov.b32 {y}, 0; @p ld.global.v2.f32 {{{x}, {y}}}, [{p}]; }}",
             c = in(reg32) pred as u32, p = in(reg64) ptr, x = out(reg32) x, y = out(reg32) y,
             options(pure, readonly, nostack))
    };
    [x, y]
}

/// [`ld_nc_f32`] when `pred` holds, 0.0 otherwise; branch-free as [`st_v2_f32_if`].
///
/// # Safety
/// As [`ld_nc_f32`] whenever `pred` holds.
#[inline(always)]
pub unsafe fn ld_nc_f32_or_zero(pred: bool, ptr: u64) -> f32 {
    let x: f32;
    unsafe {
        asm!("{{ .reg .pred p; setp.ne.u32 p, {c}, 0; mov.b32 {x}, 0; @p ld.global.nc.f32 {x}, [{p}]; }}",
             c = in(reg32) pred as u32, p = in(reg64) ptr, x = out(reg32) x,
             options(pure, readonly, nostack))
    };
    x
}

/// 16-byte load (coherent: the kernel may overwrite these bytes later, as the step kernel does
/// with its state) when `pred` holds, zeros otherwise; branch-free as [`st_v2_f32_if`].
///
/// # Safety
/// `ptr` is 16-byte aligned and points to 16 readable bytes whenever `pred` holds.
#[inline(always)]
pub unsafe fn ld_v4_b32_or_zero(pred: bool, ptr: u64) -> [u32; 4] {
    let (x, y, z, w): (u32, u32, u32, u32);
    unsafe {
        asm!("{{ .reg .pred p; setp.ne.u32 p, {c}, 0; mov.b32 {x}, 0; mov.b32 {y}, 0; mov.b32 {z}, 0; mov.b32 {w}, 0; @p ld.global.v4.b32 {{{x}, {y}, {z}, {w}}}, [{p}]; }}",
             c = in(reg32) pred as u32, p = in(reg64) ptr, x = out(reg32) x, y = out(reg32) y,
             z = out(reg32) z, w = out(reg32) w, options(pure, readonly, nostack))
    };
    [x, y, z, w]
}

/// 16-byte store when `pred` holds; branch-free as [`st_v2_f32_if`].
///
/// # Safety
/// `ptr` is 16-byte aligned and points to 16 writable bytes no other thread accesses, whenever
/// `pred` holds.
#[inline(always)]
pub unsafe fn st_v4_b32_if(pred: bool, ptr: u64, v: [u32; 4]) {
    unsafe {
        asm!("{{ .reg .pred p; setp.ne.u32 p, {c}, 0; @p st.global.v4.b32 [{p}], {{{x}, {y}, {z}, {w}}}; }}",
             c = in(reg32) pred as u32, p = in(reg64) ptr, x = in(reg32) v[0], y = in(reg32) v[1],
             z = in(reg32) v[2], w = in(reg32) v[3], options(nostack))
    };
}

/// 8-byte store when `pred` holds; branch-free as [`st_v2_f32_if`].
///
/// # Safety
/// As [`st_v2_f32`] whenever `pred` holds.
#[inline(always)]
pub unsafe fn st_v2_b32_if(pred: bool, ptr: u64, v: [u32; 2]) {
    unsafe {
        asm!("{{ .reg .pred p; setp.ne.u32 p, {c}, 0; @p st.global.v2.b32 [{p}], {{{x}, {y}}}; }}",
             c = in(reg32) pred as u32, p = in(reg64) ptr, x = in(reg32) v[0], y = in(reg32) v[1],
             options(nostack))
    };
}

/// Read-only 4-byte load when `pred` holds, 0 otherwise; branch-free as [`st_v2_f32_if`].
///
/// # Safety
/// As [`ld_nc_f32`] whenever `pred` holds.
#[inline(always)]
pub unsafe fn ld_nc_b32_or_zero(pred: bool, ptr: u64) -> u32 {
    let x: u32;
    unsafe {
        asm!("{{ .reg .pred p; setp.ne.u32 p, {c}, 0; mov.b32 {x}, 0; @p ld.global.nc.b32 {x}, [{p}]; }}",
             c = in(reg32) pred as u32, p = in(reg64) ptr, x = out(reg32) x,
             options(pure, readonly, nostack))
    };
    x
}

/// Read-only 8-byte load when `pred` holds, zeros otherwise; branch-free as [`st_v2_f32_if`].
///
/// # Safety
/// `ptr` is 8-byte aligned, points to 8 readable bytes and nothing writes them during the
/// kernel, whenever `pred` holds.
#[inline(always)]
pub unsafe fn ld_nc_v2_b32_or_zero(pred: bool, ptr: u64) -> [u32; 2] {
    let (x, y): (u32, u32);
    unsafe {
        asm!("{{ .reg .pred p; setp.ne.u32 p, {c}, 0; mov.b32 {x}, 0; mov.b32 {y}, 0; @p ld.global.nc.v2.b32 {{{x}, {y}}}, [{p}]; }}",
             c = in(reg32) pred as u32, p = in(reg64) ptr, x = out(reg32) x, y = out(reg32) y,
             options(pure, readonly, nostack))
    };
    [x, y]
}

/// Read-only 16-byte load when `pred` holds, zeros otherwise; branch-free as [`st_v2_f32_if`].
///
/// # Safety
/// As [`ld_nc_v4`] whenever `pred` holds.
#[inline(always)]
pub unsafe fn ld_nc_v4_b32_or_zero(pred: bool, ptr: u64) -> [u32; 4] {
    let (x, y, z, w): (u32, u32, u32, u32);
    unsafe {
        asm!("{{ .reg .pred p; setp.ne.u32 p, {c}, 0; mov.b32 {x}, 0; mov.b32 {y}, 0; mov.b32 {z}, 0; mov.b32 {w}, 0; @p ld.global.nc.v4.b32 {{{x}, {y}, {z}, {w}}}, [{p}]; }}",
             c = in(reg32) pred as u32, p = in(reg64) ptr, x = out(reg32) x, y = out(reg32) y,
             z = out(reg32) z, w = out(reg32) w, options(pure, readonly, nostack))
    };
    [x, y, z, w]
}
