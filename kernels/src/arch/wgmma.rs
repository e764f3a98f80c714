//! `wgmma` (sm_90a only: the module is compiled for `-C target-cpu=sm_90a`): warpgroup matrix
//! multiplies with both operands in shared memory, described by 64-bit matrix descriptors.
//!
//! Operand layouts: (a) unswizzled, in 8 × 8 "core matrices" of 16-bit elements (8 rows of 16
//! bytes, 128 contiguous bytes), the descriptor naming the tile's start and two strides (LBO
//! and SBO: between core matrices along the two dimensions); (b) with the 128-byte swizzle, in
//! atoms of 8 rows × 128 bytes (1024-byte aligned) whose 16-byte chunk c of row r sits at chunk
//! c ^ r, SBO the bytes between atoms along the 8-row dimension.
//!
//! The accumulators of an m64nN instruction are the `mma.sync` m16n8 fragments of the four
//! warps stacked: warp w of the warpgroup holds rows 16w .. 16w + 16, n-block j in elements
//! 4j .. 4j + 4 (rows lane/4 and lane/4 + 8, columns 8j + 2·(lane%4) + {0, 1}).
use core::arch::asm;

/// The descriptor of an unswizzled operand tile at shared address `addr` (16-byte aligned)
/// with strides `lbo` and `sbo` in bytes.
#[inline(always)]
pub fn desc(addr: u32, lbo: u32, sbo: u32) -> u64 {
    let field = |x: u32| ((x & 0x3_ffff) >> 4) as u64;
    field(addr) | field(lbo) << 16 | field(sbo) << 32
}

/// The descriptor of a tile in the 128-byte swizzle (layout mode 1 in bits 62–63).
#[inline(always)]
pub fn desc_sw128(addr: u32, lbo: u32, sbo: u32) -> u64 {
    desc(addr, lbo, sbo) | 1 << 62
}

/// Orders this thread's earlier register writes of accumulators before the next `wgmma`.
///
/// # Safety
/// Executed by all threads of the warpgroup.
#[inline(always)]
pub unsafe fn fence() {
    unsafe { asm!("wgmma.fence.sync.aligned;", options(nostack)) };
}

/// Makes this thread's generic-proxy shared-memory writes (plain stores, `cp.async`) visible
/// to the async proxy that `wgmma` reads operands through; a barrier follows.
///
/// # Safety
/// None beyond being on sm_90a.
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

/// Waits until all committed groups have completed; `acc` passes through the instruction so
/// the compiler reads the accumulators only after it.
///
/// # Safety
/// Executed by all threads of the warpgroup.
#[inline(always)]
pub unsafe fn wait_all(acc: &mut [f32; 32]) {
    unsafe {
        asm!(
            "wgmma.wait_group.sync.aligned 0;",
            "// accumulators held across the wait: {d0} {d1} {d2} {d3} {d4} {d5} {d6} {d7} {d8} {d9} {d10} {d11} {d12} {d13} {d14} {d15} {d16} {d17} {d18} {d19} {d20} {d21} {d22} {d23} {d24} {d25} {d26} {d27} {d28} {d29} {d30} {d31}",
            d0 = inout(reg32) acc[0],
            d1 = inout(reg32) acc[1],
            d2 = inout(reg32) acc[2],
            d3 = inout(reg32) acc[3],
            d4 = inout(reg32) acc[4],
            d5 = inout(reg32) acc[5],
            d6 = inout(reg32) acc[6],
            d7 = inout(reg32) acc[7],
            d8 = inout(reg32) acc[8],
            d9 = inout(reg32) acc[9],
            d10 = inout(reg32) acc[10],
            d11 = inout(reg32) acc[11],
            d12 = inout(reg32) acc[12],
            d13 = inout(reg32) acc[13],
            d14 = inout(reg32) acc[14],
            d15 = inout(reg32) acc[15],
            d16 = inout(reg32) acc[16],
            d17 = inout(reg32) acc[17],
            d18 = inout(reg32) acc[18],
            d19 = inout(reg32) acc[19],
            d20 = inout(reg32) acc[20],
            d21 = inout(reg32) acc[21],
            d22 = inout(reg32) acc[22],
            d23 = inout(reg32) acc[23],
            d24 = inout(reg32) acc[24],
            d25 = inout(reg32) acc[25],
            d26 = inout(reg32) acc[26],
            d27 = inout(reg32) acc[27],
            d28 = inout(reg32) acc[28],
            d29 = inout(reg32) acc[29],
            d30 = inout(reg32) acc[30],
            d31 = inout(reg32) acc[31],
            options(nostack)
        )
    };
}

/// acc (+)= A · B for a 64 × 16 A (K-major, descriptor `da`) and a 16 × 64 B (descriptor `db`:
/// K-major when `TRANS_B` is 0, i.e. stored as Bᵀ, N × 16; MN-major when 1, stored as B,
/// 16 × N); `accumulate` false overwrites acc.
///
/// # Safety
/// Executed by all threads of the warpgroup (warps 4g .. 4g + 4) after [`fence`]; the
/// operands were written before a [`fence_proxy_async`] and a barrier.
#[inline(always)]
pub unsafe fn m64n64k16_bf16_ss<const TRANS_B: u32>(
    acc: &mut [f32; 32],
    da: u64,
    db: u64,
    accumulate: bool,
) {
    unsafe {
        asm!(
            "{{ .reg .pred p; setp.ne.b32 p, {scale}, 0;",
            "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {{{d0}, {d1}, {d2}, {d3}, {d4}, {d5}, {d6}, {d7}, {d8}, {d9}, {d10}, {d11}, {d12}, {d13}, {d14}, {d15}, {d16}, {d17}, {d18}, {d19}, {d20}, {d21}, {d22}, {d23}, {d24}, {d25}, {d26}, {d27}, {d28}, {d29}, {d30}, {d31}}}, {da}, {db}, p, 1, 1, 0, {tb}; }}",
            d0 = inout(reg32) acc[0],
            d1 = inout(reg32) acc[1],
            d2 = inout(reg32) acc[2],
            d3 = inout(reg32) acc[3],
            d4 = inout(reg32) acc[4],
            d5 = inout(reg32) acc[5],
            d6 = inout(reg32) acc[6],
            d7 = inout(reg32) acc[7],
            d8 = inout(reg32) acc[8],
            d9 = inout(reg32) acc[9],
            d10 = inout(reg32) acc[10],
            d11 = inout(reg32) acc[11],
            d12 = inout(reg32) acc[12],
            d13 = inout(reg32) acc[13],
            d14 = inout(reg32) acc[14],
            d15 = inout(reg32) acc[15],
            d16 = inout(reg32) acc[16],
            d17 = inout(reg32) acc[17],
            d18 = inout(reg32) acc[18],
            d19 = inout(reg32) acc[19],
            d20 = inout(reg32) acc[20],
            d21 = inout(reg32) acc[21],
            d22 = inout(reg32) acc[22],
            d23 = inout(reg32) acc[23],
            d24 = inout(reg32) acc[24],
            d25 = inout(reg32) acc[25],
            d26 = inout(reg32) acc[26],
            d27 = inout(reg32) acc[27],
            d28 = inout(reg32) acc[28],
            d29 = inout(reg32) acc[29],
            d30 = inout(reg32) acc[30],
            d31 = inout(reg32) acc[31],
            da = in(reg64) da,
            db = in(reg64) db,
            scale = in(reg32) accumulate as u32,
            tb = const TRANS_B,
            options(nostack)
        )
    };
}

/// As [`m64n64k16_bf16_ss`] with A from registers: `a` is this warp's `mma.sync` m16n8k16 A
/// fragment of rows 16w .. 16w + 16 (warp w of the warpgroup) and the 16 k of the step.
///
/// # Safety
/// As [`m64n64k16_bf16_ss`]; `a` is not written again before the next [`wait_all`].
#[inline(always)]
pub unsafe fn m64n64k16_bf16_rs<const TRANS_B: u32>(
    acc: &mut [f32; 32],
    a: [u32; 4],
    db: u64,
    accumulate: bool,
) {
    unsafe {
        asm!(
            "{{ .reg .pred p; setp.ne.b32 p, {scale}, 0;",
            "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {{{d0}, {d1}, {d2}, {d3}, {d4}, {d5}, {d6}, {d7}, {d8}, {d9}, {d10}, {d11}, {d12}, {d13}, {d14}, {d15}, {d16}, {d17}, {d18}, {d19}, {d20}, {d21}, {d22}, {d23}, {d24}, {d25}, {d26}, {d27}, {d28}, {d29}, {d30}, {d31}}}, {{{a0}, {a1}, {a2}, {a3}}}, {db}, p, 1, 1, {tb}; }}",
            d0 = inout(reg32) acc[0],
            d1 = inout(reg32) acc[1],
            d2 = inout(reg32) acc[2],
            d3 = inout(reg32) acc[3],
            d4 = inout(reg32) acc[4],
            d5 = inout(reg32) acc[5],
            d6 = inout(reg32) acc[6],
            d7 = inout(reg32) acc[7],
            d8 = inout(reg32) acc[8],
            d9 = inout(reg32) acc[9],
            d10 = inout(reg32) acc[10],
            d11 = inout(reg32) acc[11],
            d12 = inout(reg32) acc[12],
            d13 = inout(reg32) acc[13],
            d14 = inout(reg32) acc[14],
            d15 = inout(reg32) acc[15],
            d16 = inout(reg32) acc[16],
            d17 = inout(reg32) acc[17],
            d18 = inout(reg32) acc[18],
            d19 = inout(reg32) acc[19],
            d20 = inout(reg32) acc[20],
            d21 = inout(reg32) acc[21],
            d22 = inout(reg32) acc[22],
            d23 = inout(reg32) acc[23],
            d24 = inout(reg32) acc[24],
            d25 = inout(reg32) acc[25],
            d26 = inout(reg32) acc[26],
            d27 = inout(reg32) acc[27],
            d28 = inout(reg32) acc[28],
            d29 = inout(reg32) acc[29],
            d30 = inout(reg32) acc[30],
            d31 = inout(reg32) acc[31],
            a0 = in(reg32) a[0],
            a1 = in(reg32) a[1],
            a2 = in(reg32) a[2],
            a3 = in(reg32) a[3],
            db = in(reg64) db,
            scale = in(reg32) accumulate as u32,
            tb = const TRANS_B,
            options(nostack)
        )
    };
}
