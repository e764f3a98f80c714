//! `mma.sync.aligned.m16n8k16` with f32 accumulators (SM80_16x8x16_F32{BF16,F16}_TN in CuTe's
//! naming). Fragment layouts are documented in `crate::tile`.
use core::arch::asm;

/// d += a·b, bf16 operands.
///
/// # Safety
/// All 32 lanes of the warp call it together with their fragments.
#[inline(always)]
pub unsafe fn m16n8k16_f32_bf16(d: &mut [f32; 4], a: [u32; 4], b: [u32; 2]) {
    unsafe {
        asm!("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {{{d0}, {d1}, {d2}, {d3}}}, {{{a0}, {a1}, {a2}, {a3}}}, {{{b0}, {b1}}}, {{{d0}, {d1}, {d2}, {d3}}};",
             d0 = inout(reg32) d[0], d1 = inout(reg32) d[1], d2 = inout(reg32) d[2],
             d3 = inout(reg32) d[3], a0 = in(reg32) a[0], a1 = in(reg32) a[1],
             a2 = in(reg32) a[2], a3 = in(reg32) a[3], b0 = in(reg32) b[0], b1 = in(reg32) b[1],
             options(nomem, nostack))
    };
}

/// d += a·b, f16 operands.
///
/// # Safety
/// As [`m16n8k16_f32_bf16`].
#[inline(always)]
pub unsafe fn m16n8k16_f32_f16(d: &mut [f32; 4], a: [u32; 4], b: [u32; 2]) {
    unsafe {
        asm!("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {{{d0}, {d1}, {d2}, {d3}}}, {{{a0}, {a1}, {a2}, {a3}}}, {{{b0}, {b1}}}, {{{d0}, {d1}, {d2}, {d3}}};",
             d0 = inout(reg32) d[0], d1 = inout(reg32) d[1], d2 = inout(reg32) d[2],
             d3 = inout(reg32) d[3], a0 = in(reg32) a[0], a1 = in(reg32) a[1],
             a2 = in(reg32) a[2], a3 = in(reg32) a[3], b0 = in(reg32) b[0], b1 = in(reg32) b[1],
             options(nomem, nostack))
    };
}
