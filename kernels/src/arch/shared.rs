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

load!(
    /// # Safety
    /// `addr` is a 4-byte aligned address inside the launch's dynamic shared memory.
    ld_f32(u32: reg32) -> f32 = "ld.shared.f32"
);

store!(
    /// # Safety
    /// As [`ld_f32`].
    st_f32(u32: reg32, f32) = "st.shared.f32"
);

store!(
    /// # Safety
    /// `addr` is an 8-byte aligned address inside the launch's dynamic shared memory.
    st_v2(u32: reg32, [u32; 2]) = "st.shared.v2.b32"
);

store!(
    /// # Safety
    /// `addr` is a 16-byte aligned address inside the launch's dynamic shared memory.
    st_v4(u32: reg32, [u32; 4]) = "st.shared.v4.b32"
);

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

load!(
    /// # Safety
    /// As [`st_v4`].
    ld_v4(u32: reg32) -> [u32; 4] = "ld.shared.v4.b32"
);

load!(
    /// Loads one u32.
    ///
    /// # Safety
    /// As [`ld_f32`].
    ld_u32(u32: reg32) -> u32 = "ld.shared.u32"
);

store!(
    /// Stores one u32.
    ///
    /// # Safety
    /// As [`ld_f32`].
    st_u32(u32: reg32, u32) = "st.shared.u32"
);
