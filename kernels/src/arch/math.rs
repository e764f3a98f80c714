//! Fast transcendental functions (`ex2.approx`, `lg2.approx`: about 2 ulp) and the gate math
//! built on them.
use core::arch::asm;

pub const LOG2_E: f32 = core::f32::consts::LOG2_E;
pub const LN_2: f32 = core::f32::consts::LN_2;

/// 2^x.
#[inline(always)]
pub fn exp2(x: f32) -> f32 {
    let r: f32;
    // SAFETY: arithmetic only.
    unsafe {
        asm!("ex2.approx.ftz.f32 {r}, {x};", r = out(reg32) r, x = in(reg32) x, options(pure, nomem, nostack))
    };
    r
}

/// log2(x).
#[inline(always)]
pub fn log2(x: f32) -> f32 {
    let r: f32;
    // SAFETY: arithmetic only.
    unsafe {
        asm!("lg2.approx.ftz.f32 {r}, {x};", r = out(reg32) r, x = in(reg32) x, options(pure, nomem, nostack))
    };
    r
}

/// e^x.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    exp2(x * LOG2_E)
}

/// log σ(x) = min(x, 0) − ln(1 + e^{−|x|}), to a few ulp in both tails: for t = e^{−|x|} below
/// 2⁻⁷ ln(1 + t) is its series t − t²/2 + t³/3 (relative error < t³/4), since 1 + t rounds
/// away most of t's digits there and lg2.approx is accurate to ~2⁻²² absolute only (a forget
/// gate near 1 would get λ wrong by up to 100%, a drift the f32 path would sum over the steps).
#[inline(always)]
pub fn log_sigmoid(x: f32) -> f32 {
    let t = exp2(-x.abs() * LOG2_E);
    let ln1p = if t < 1.0 / 128.0 {
        t * (1.0 - t * (0.5 - t * (1.0 / 3.0)))
    } else {
        log2(1.0 + t) * LN_2
    };
    x.min(0.0) - ln1p
}

/// σ(x) = 1 / (1 + e^{−x}), from e^{−|x|} so neither tail overflows.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    let t = exp2(-x.abs() * LOG2_E);
    let r = 1.0 / (1.0 + t);
    if x >= 0.0 { r } else { t * r }
}
