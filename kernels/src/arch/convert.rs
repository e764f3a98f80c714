//! 16-bit element types: packing f32 pairs into the 32-bit registers `mma` consumes, unpacking,
//! and the matching `mma` instruction. A kernel is generic over [`Elem`].
use core::arch::asm;

/// A 16-bit input element type (bf16 or f16), always accumulated in f32.
pub trait Elem {
    /// Packs (lo, hi) into one register, round to nearest even; `lo` in the low half.
    fn pack(lo: f32, hi: f32) -> u32;
    /// Unpacks one register into (lo, hi).
    fn unpack(x: u32) -> (f32, f32);
    /// d += a·b on the tensor cores.
    ///
    /// # Safety
    /// All 32 lanes of the warp call it together.
    unsafe fn mma(d: &mut [f32; 4], a: [u32; 4], b: [u32; 2]);
}

/// bfloat16.
pub struct Bf16;
/// IEEE half.
pub struct F16;
/// f32 (no tensor-core path: a marker for the kernels with an f32 instance).
pub struct F32;

impl Elem for Bf16 {
    #[inline(always)]
    fn pack(lo: f32, hi: f32) -> u32 {
        let r: u32;
        // SAFETY: arithmetic only.
        unsafe {
            asm!("cvt.rn.bf16x2.f32 {r}, {hi}, {lo};", r = out(reg32) r, hi = in(reg32) hi, lo = in(reg32) lo, options(pure, nomem, nostack))
        };
        r
    }
    #[inline(always)]
    fn unpack(x: u32) -> (f32, f32) {
        (f32::from_bits(x << 16), f32::from_bits(x & 0xffff_0000))
    }
    #[inline(always)]
    unsafe fn mma(d: &mut [f32; 4], a: [u32; 4], b: [u32; 2]) {
        unsafe { super::mma::m16n8k16_f32_bf16(d, a, b) }
    }
}

impl Elem for F16 {
    #[inline(always)]
    fn pack(lo: f32, hi: f32) -> u32 {
        let r: u32;
        // SAFETY: arithmetic only.
        unsafe {
            asm!("cvt.rn.f16x2.f32 {r}, {hi}, {lo};", r = out(reg32) r, hi = in(reg32) hi, lo = in(reg32) lo, options(pure, nomem, nostack))
        };
        r
    }
    #[inline(always)]
    fn unpack(x: u32) -> (f32, f32) {
        let (lo, hi): (f32, f32);
        // SAFETY: arithmetic only.
        unsafe {
            asm!("{{ .reg .f16 l, h; mov.b32 {{l, h}}, {x}; cvt.f32.f16 {lo}, l; cvt.f32.f16 {hi}, h; }}",
                 x = in(reg32) x, lo = out(reg32) lo, hi = out(reg32) hi, options(pure, nomem, nostack))
        };
        (lo, hi)
    }
    #[inline(always)]
    unsafe fn mma(d: &mut [f32; 4], a: [u32; 4], b: [u32; 2]) {
        unsafe { super::mma::m16n8k16_f32_f16(d, a, b) }
    }
}
