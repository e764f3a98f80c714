//! `ldmatrix`: warp-collective loads of four 8×8 matrices of 16-bit elements from shared memory.
//! Lanes 8i..8i+7 give the row addresses of matrix i; every lane receives one 32-bit register
//! per matrix holding (row = lane/4, cols 2·(lane%4), +1), or the transpose with `.trans`.
use core::arch::asm;

/// # Safety
/// All 32 lanes call it together; each lane's `addr` is a 16-byte aligned shared address of a
/// 16-byte row inside the dynamic shared memory.
#[inline(always)]
pub unsafe fn x4(addr: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    unsafe {
        asm!("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {{{a}, {b}, {c}, {d}}}, [{p}];",
             p = in(reg32) addr, a = out(reg32) a, b = out(reg32) b, c = out(reg32) c,
             d = out(reg32) d, options(readonly, nostack))
    };
    [a, b, c, d]
}

/// As [`x4`], each matrix transposed.
///
/// # Safety
/// As [`x4`].
#[inline(always)]
pub unsafe fn x4_trans(addr: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    unsafe {
        asm!("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {{{a}, {b}, {c}, {d}}}, [{p}];",
             p = in(reg32) addr, a = out(reg32) a, b = out(reg32) b, c = out(reg32) c,
             d = out(reg32) d, options(readonly, nostack))
    };
    [a, b, c, d]
}
