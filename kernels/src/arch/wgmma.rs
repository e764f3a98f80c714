//! `wgmma` (sm_90a only: the module is compiled for `-C target-cpu=sm_90a`): warpgroup matrix
//! multiplies whose B operand (and A, in the SS forms) is read from shared memory through
//! 64-bit matrix descriptors, asynchronously: a group of them is issued, committed, and waited
//! for.
//!
//! Operand layout: the 128-byte swizzle, atoms of 8 rows × 128 bytes (1024-byte aligned) whose
//! 16-byte chunk c of row r sits at chunk c ^ r (the XOR scatters the 8 rows of one column
//! chunk over all banks, so `cp.async` writes and the tensor core's reads are conflict-free).
//! Verified on an H100 with a 64 × 64 × 64 probe, every form against a CPU product
//! (benches/LOG.md):
//! - K-major (rows of 64 k, as Q for A and K for B = Kᵀ): SBO = 1024 between 8-row atoms, the
//!   start advanced 32 bytes per k16 step;
//! - MN-major (rows of 64 n, k the row index, as C̃_k and V): SBO = 1024 between 8-row atoms
//!   along K, LBO between 64-column panels along N, the start advanced 2048 bytes (two atoms)
//!   per k16 step, `imm-trans-b` = 1. (The reading with LBO and SBO swapped computes garbage.)
//!   An MN-major A operand (`imm-trans-a` = 1: a stored tile read transposed) takes the same
//!   descriptor; the backward's dk and dv on `wgmma` read their score tiles so, checked by the
//!   backward's GPU tests against the float64 reference.
//!
//! The accumulators of an m64nN instruction are the `mma.sync` m16n8 fragments of the four
//! warps stacked: warp w of the warpgroup holds rows 16w .. 16w + 16, n-block j in elements
//! 4j .. 4j + 4 (rows lane/4 and lane/4 + 8, columns 8j + 2·(lane%4) + {0, 1}). An A operand
//! from registers is the warp's `mma.sync` m16n8k16 A fragment of its 16 rows.
use super::convert::{Bf16, F16};
use core::arch::asm;

/// The descriptor of a tile in the 128-byte swizzle at shared address `addr` (inside a
/// 1024-byte aligned atom) with strides `lbo` and `sbo` in bytes (layout mode 1, bits 62–63).
#[inline(always)]
pub fn desc_sw128(addr: u32, lbo: u32, sbo: u32) -> u64 {
    let field = |x: u32| ((x & 0x3_ffff) >> 4) as u64;
    field(addr) | field(lbo) << 16 | field(sbo) << 32 | 1 << 62
}

/// A K-major operand in the swizzle at `addr` (rows of 64 k: Q, K), k16 step `ks`: 32 bytes
/// along the 128-byte rows; 8-row atoms 1024 bytes apart.
#[inline(always)]
pub fn k_major(addr: u32, ks: u32) -> u64 {
    desc_sw128(addr + 32 * ks, 16, 1024)
}

/// An MN-major operand in the swizzle at `addr` (rows of the reduction index: C̃_k, V) whose
/// 64-column panels are `panel` bytes apart, k16 step `ks`: two 8-row atoms on.
#[inline(always)]
pub fn mn_major(addr: u32, ks: u32, panel: u32) -> u64 {
    desc_sw128(addr + 2048 * ks, panel, 1024)
}

/// Orders this thread's earlier register writes (accumulators, A fragments) before the next
/// `wgmma`.
///
/// # Safety
/// Executed by all threads of the warpgroup.
#[inline(always)]
pub unsafe fn fence() {
    unsafe { asm!("wgmma.fence.sync.aligned;", options(nostack)) };
}

/// Makes this thread's generic-proxy shared-memory writes (plain stores, completed `cp.async`)
/// visible to the async proxy that `wgmma` reads operands through; a barrier follows.
///
/// # Safety
/// None beyond being on sm_90.
#[inline(always)]
pub unsafe fn fence_proxy_async() {
    unsafe { asm!("fence.proxy.async.shared::cta;", options(nostack)) };
}

/// Closes the group of `wgmma`s issued since the last commit.
///
/// # Safety
/// Executed by all threads of the warpgroup.
#[inline(always)]
pub unsafe fn commit() {
    unsafe { asm!("wgmma.commit_group.sync.aligned;", options(nostack)) };
}

/// Waits until all committed groups have completed. The accumulators are written by the
/// hardware until then: pass each through [`Hold::hold`] after the wait, so that the compiler
/// reads them only afterwards.
///
/// # Safety
/// Executed by all threads of the warpgroup.
#[inline(always)]
pub unsafe fn wait_all() {
    unsafe { wait::<0>() };
}

/// Waits until at most `N` committed groups of this warpgroup are still in flight: the
/// groups before them have completed (their accumulators and operands are free; the
/// accumulators of the ones in flight are not to be touched).
///
/// # Safety
/// Executed by all threads of the warpgroup.
#[inline(always)]
pub unsafe fn wait<const N: u32>() {
    unsafe { asm!("wgmma.wait_group.sync.aligned {n};", n = const N, options(nostack)) };
}

/// An accumulator array that can be pinned in place after [`wait_all`]: an empty `asm!` that
/// reads and writes every register, ordered after the wait (both have side effects), so that
/// no read of the accumulators is scheduled before the wait.
pub trait Hold {
    fn hold(&mut self);
}

macro_rules! impl_hold {
    ($n:literal, [$($i:literal),*]) => {
        impl Hold for [f32; $n] {
            #[inline(always)]
            fn hold(&mut self) {
                // SAFETY: an empty instruction.
                unsafe { asm!($(concat!("// {", $i, "}"),)* $(inout(reg32) self[$i],)* options(nostack, nomem)) };
            }
        }
    };
}
impl_hold!(
    128,
    [
        0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24,
        25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47,
        48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70,
        71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93,
        94, 95, 96, 97, 98, 99, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, 112,
        113, 114, 115, 116, 117, 118, 119, 120, 121, 122, 123, 124, 125, 126, 127
    ]
);
impl_hold!(
    64,
    [
        0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63
    ]
);
impl_hold!(
    32,
    [
        0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24,
        25, 26, 27, 28, 29, 30, 31
    ]
);
impl_hold!(4, [0, 1, 2, 3]);

/// The `wgmma` forms the kernels use, per 16-bit element type (`E` of the kernels).
///
/// # Safety (every method)
/// Executed by all threads of the warpgroup after [`fence`]; the shared-memory operands were
/// written before a [`fence_proxy_async`] and a barrier; the accumulators (and `a`) are not
/// touched again before [`wait_all`].
pub trait Wgmma {
    /// acc (+)= A·B, m64n256k16: A K-major (`da`), B MN-major (`db`); `accumulate` false
    /// overwrites acc.
    unsafe fn ss_n256_mn(acc: &mut [f32; 128], da: u64, db: u64, accumulate: bool);
    /// acc (+)= A·Bᵀ, m64n256k16: A and B K-major (B stored as N × K).
    unsafe fn ss_n256_k(acc: &mut [f32; 128], da: u64, db: u64, accumulate: bool);
    /// acc (+)= A·B, m64n256k16: A MN-major (stored as K × M: Aᵀ row-major), B MN-major.
    unsafe fn ss_n256_t_mn(acc: &mut [f32; 128], da: u64, db: u64, accumulate: bool);
    /// acc += A·B, m64n256k16: A from registers, B MN-major.
    unsafe fn rs_n256_mn(acc: &mut [f32; 128], a: [u32; 4], db: u64);
    /// acc (+)= A·Bᵀ, m64n128k16: A and B K-major (B stored as N × K).
    unsafe fn ss_n128_k(acc: &mut [f32; 64], da: u64, db: u64, accumulate: bool);
    /// acc (+)= A·B, m64n128k16: A K-major, B MN-major.
    unsafe fn ss_n128_mn(acc: &mut [f32; 64], da: u64, db: u64, accumulate: bool);
    /// acc += A·B, m64n128k16: A from registers, B MN-major.
    unsafe fn rs_n128_mn(acc: &mut [f32; 64], a: [u32; 4], db: u64);
    /// acc (+)= A·Bᵀ, m64n64k16: A and B K-major (B stored as N × K).
    unsafe fn ss_n64_k(acc: &mut [f32; 32], da: u64, db: u64, accumulate: bool);
    /// acc (+)= A·Bᵀ, m64n8k16: A and B K-major.
    unsafe fn ss_n8_k(acc: &mut [f32; 4], da: u64, db: u64, accumulate: bool);
}

/// One `wgmma` in asm: the accumulator list is spelled out from the index list (positional
/// operands 0 .. N/2 − 1), then the A operand (a descriptor or four registers) and B's; the
/// SS form's transpose literal is "imm-trans-a, imm-trans-b", the RS form's imm-trans-b.
macro_rules! wgmma {
    (ss, $ty:literal, $n:literal, $t:literal, $acc:ident, [$i0:literal $(, $i:literal)*], $da:ident, $db:ident, $scale:expr) => {
        asm!(
            concat!(
                "{{ .reg .pred p; setp.ne.b32 p, {scale}, 0;\n",
                "wgmma.mma_async.sync.aligned.m64n", $n, "k16.f32.", $ty, ".", $ty,
                " {{{", $i0, "}", $(", {", $i, "}",)* "}}, {da}, {db}, p, 1, 1, ", $t, "; }}"
            ),
            inout(reg32) $acc[$i0], $(inout(reg32) $acc[$i],)*
            da = in(reg64) $da,
            db = in(reg64) $db,
            scale = in(reg32) $scale,
            options(nostack)
        )
    };
    (rs, $ty:literal, $n:literal, $tb:literal, $acc:ident, [$i0:literal $(, $i:literal)*], $a:ident, $db:ident) => {
        asm!(
            concat!(
                "{{ .reg .pred p; setp.eq.u32 p, 1, 1;\n",
                "wgmma.mma_async.sync.aligned.m64n", $n, "k16.f32.", $ty, ".", $ty,
                " {{{", $i0, "}", $(", {", $i, "}",)* "}}, {{{a0}, {a1}, {a2}, {a3}}}, {db}, p, 1, 1, ", $tb, "; }}"
            ),
            inout(reg32) $acc[$i0], $(inout(reg32) $acc[$i],)*
            a0 = in(reg32) $a[0],
            a1 = in(reg32) $a[1],
            a2 = in(reg32) $a[2],
            a3 = in(reg32) $a[3],
            db = in(reg64) $db,
            options(nostack)
        )
    };
}

/// [`wgmma!`] of an m64n256 form: the 128 accumulator indices spelled out once.
macro_rules! wgmma_n256 {
    ($form:ident, $ty:literal, $t:literal, $acc:ident, $($rest:tt)*) => {
        wgmma!(
            $form,
            $ty,
            "256",
            $t,
            $acc,
            [
                0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
                23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43,
                44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64,
                65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 83, 84, 85,
                86, 87, 88, 89, 90, 91, 92, 93, 94, 95, 96, 97, 98, 99, 100, 101, 102, 103, 104,
                105, 106, 107, 108, 109, 110, 111, 112, 113, 114, 115, 116, 117, 118, 119, 120, 121,
                122, 123, 124, 125, 126, 127
            ],
            $($rest)*
        )
    };
}

/// [`wgmma!`] of an m64n128 form: the 64 accumulator indices spelled out once.
macro_rules! wgmma_n128 {
    ($form:ident, $ty:literal, $t:literal, $acc:ident, $($rest:tt)*) => {
        wgmma!(
            $form,
            $ty,
            "128",
            $t,
            $acc,
            [
                0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63
            ],
            $($rest)*
        )
    };
}

macro_rules! impl_wgmma {
    ($e:ty, $ty:literal) => {
        impl Wgmma for $e {
            #[inline(always)]
            unsafe fn ss_n256_mn(acc: &mut [f32; 128], da: u64, db: u64, accumulate: bool) {
                unsafe { wgmma_n256!(ss, $ty, "0, 1", acc, da, db, accumulate as u32) }
            }
            #[inline(always)]
            unsafe fn ss_n256_k(acc: &mut [f32; 128], da: u64, db: u64, accumulate: bool) {
                unsafe { wgmma_n256!(ss, $ty, "0, 0", acc, da, db, accumulate as u32) }
            }
            #[inline(always)]
            unsafe fn ss_n256_t_mn(acc: &mut [f32; 128], da: u64, db: u64, accumulate: bool) {
                unsafe { wgmma_n256!(ss, $ty, "1, 1", acc, da, db, accumulate as u32) }
            }
            #[inline(always)]
            unsafe fn rs_n256_mn(acc: &mut [f32; 128], a: [u32; 4], db: u64) {
                unsafe { wgmma_n256!(rs, $ty, "1", acc, a, db) }
            }
            #[inline(always)]
            unsafe fn ss_n128_k(acc: &mut [f32; 64], da: u64, db: u64, accumulate: bool) {
                unsafe { wgmma_n128!(ss, $ty, "0, 0", acc, da, db, accumulate as u32) }
            }
            #[inline(always)]
            unsafe fn ss_n128_mn(acc: &mut [f32; 64], da: u64, db: u64, accumulate: bool) {
                unsafe { wgmma_n128!(ss, $ty, "0, 1", acc, da, db, accumulate as u32) }
            }
            #[inline(always)]
            unsafe fn rs_n128_mn(acc: &mut [f32; 64], a: [u32; 4], db: u64) {
                unsafe { wgmma_n128!(rs, $ty, "1", acc, a, db) }
            }
            #[inline(always)]
            unsafe fn ss_n64_k(acc: &mut [f32; 32], da: u64, db: u64, accumulate: bool) {
                unsafe {
                    wgmma!(
                        ss,
                        $ty,
                        "64",
                        "0, 0",
                        acc,
                        [
                            0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19,
                            20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31
                        ],
                        da,
                        db,
                        accumulate as u32
                    )
                }
            }
            #[inline(always)]
            unsafe fn ss_n8_k(acc: &mut [f32; 4], da: u64, db: u64, accumulate: bool) {
                unsafe {
                    wgmma!(
                        ss,
                        $ty,
                        "8",
                        "0, 0",
                        acc,
                        [0, 1, 2, 3],
                        da,
                        db,
                        accumulate as u32
                    )
                }
            }
        }
    };
}
impl_wgmma!(Bf16, "bf16");
impl_wgmma!(F16, "f16");
