//! A probe of the `wgmma` path (sm_90a builds only): one warpgroup computes a 64 × 64 × 64
//! bf16 product C = A·B through the wrappers of `arch::wgmma`, in one of several operand
//! forms (`mode`), so that one GPU run (`tfla-wgmma-probe`) tells which descriptor fields and
//! layouts the hardware agrees with before a kernel is built on them:
//! - 0: A and B from shared memory, both K-major (B stored as Bᵀ);
//! - 1, 2: B MN-major (stored as B, `TRANS_B` = 1), with LBO/SBO as (along K, along N) and
//!   as (along N, along K): the two readings of the descriptor for this layout;
//! - 3: A from registers (`mma.sync` A fragments loaded with `ldmatrix`), B K-major;
//! - 4, 5: A from registers, B MN-major with the two readings;
//! - 6: 128-byte swizzle, A and B K-major (SBO 1024, the start advanced 32 bytes per k16 step);
//! - 7: 128-byte swizzle, A K-major, B MN-major, the start advanced 2048 bytes (two 8-row
//!   atoms along K) per k16 step, with SBO = 1024 (between atoms along K) and LBO = 8192 (the
//!   would-be stride between 64-column panels; B has one);
//! - 8: as 7 with A from registers;
//! - 9, 10: as 7 and 8 with the other reading, LBO = 1024 and SBO = 8192.
use crate::arch::{global, shared, thread, wgmma};
use crate::tile::SmemTile;

/// Tile edge (M = N = K).
const T: u32 = 64;
/// Core matrices: 8 × 8 elements of 16 bits, 8 rows of 16 bytes, 128 contiguous bytes.
const CORE: u32 = 128;

/// Offset of the 16-byte row piece (r, c .. c + 8) of a T × T tile stored in core matrices,
/// r indexing rows of the stored matrix (M or N for K-major, K for MN-major) and c its
/// contiguous dimension: core (r / 8, c / 8) at ((c / 8)·(T / 8) + r / 8)·CORE when the core
/// matrices run along r first (`r_first`), else ((r / 8)·(T / 8) + c / 8)·CORE.
const fn core_piece(r: u32, c: u32, r_first: bool) -> u32 {
    let core = if r_first {
        (c / 8) * (T / 8) + r / 8
    } else {
        (r / 8) * (T / 8) + c / 8
    };
    core * CORE + (r % 8) * 16
}

/// Offset of the 16-byte chunk (r, c .. c + 8) of a T × T tile (T = 64: one 128-byte row per
/// r) in the 128-byte swizzle: atom r / 8 at 1024·(r / 8), row r % 8 at 128 bytes each, chunk
/// c / 8 XOR r % 8.
const fn sw128_piece(r: u32, c: u32) -> u32 {
    (r / 8) * 1024 + (r % 8) * 128 + (((c / 8) ^ (r % 8)) * 16)
}

/// C (T × T f32, row-major) = A · B; `a` is A (M × K), `b` is B (K × N) and `bt` is Bᵀ
/// (N × K), all T × T bf16 row-major; `mode` as in the module doc.
///
/// # Safety
/// One block of 128 threads and `3·T·(T + 8)·2 + 1024` bytes of dynamic shared memory; the
/// pointers hold the matrices.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn tfla_probe_wgmma_bf16(
    a: u64,
    b: u64,
    bt: u64,
    c: u64,
    mode: u32,
) {
    let tid = thread::thread_idx();
    let (lane, warp) = (tid % 32, tid / 32);
    // 1024-byte aligned (the swizzled layouts' atoms); the launch adds 1024 bytes for this.
    let sa = (shared::base() + 1023) & !1023; // A, K-major (T·T·2 bytes)
    let sb = sa + T * T * 2; // B in the layout of the mode
    // A row-major with padded rows, for `ldmatrix` (the register-A modes).
    let rows = SmemTile {
        base: sb + T * T * 2,
        stride: (T + 8) * 2,
    };
    let mn_major = matches!(mode, 1 | 2 | 4 | 5 | 7 | 8 | 9 | 10);
    let swizzled = mode >= 6;
    let mut i = tid;
    while i < T * T / 8 {
        let (r, c8) = (i / (T / 8), (i % (T / 8)) * 8);
        let from = ((r * T + c8) * 2) as u64;
        unsafe {
            let va = global::ld_nc_v4(a + from);
            shared::st_v4(rows.offset(r, c8), va);
            if swizzled {
                // A's row r is m, B's (mode 7, 8) is k, Bᵀ's (mode 6) is n: 128-byte rows.
                shared::st_v4(sa + sw128_piece(r, c8), va);
                let vb = global::ld_nc_v4(if mn_major { b + from } else { bt + from });
                shared::st_v4(sb + sw128_piece(r, c8), vb);
                i += 128;
                continue;
            }
            shared::st_v4(sa + core_piece(r, c8, false), va);
            if mn_major {
                // B's row r is k; its 16-byte pieces run along N. Core (k/8, n/8) at
                // ((n/8)·(T/8) + k/8)·CORE: 128 bytes apart along K, T/8·128 along N.
                shared::st_v4(sb + core_piece(r, c8, true), global::ld_nc_v4(b + from));
            } else {
                // Bᵀ's row r is n; K-major like A.
                shared::st_v4(sb + core_piece(r, c8, false), global::ld_nc_v4(bt + from));
            }
        }
        i += 128;
    }
    unsafe {
        wgmma::fence_proxy_async();
        thread::sync_threads();
    }
    let (along_k, along_mn) = (CORE, (T / 8) * CORE);
    let mut acc = [0f32; 32];
    unsafe { wgmma::fence() };
    unroll!(4, ks => {
        let ks = ks as u32;
        // k16 step ks: two core matrices along K, 2·CORE bytes on in every layout here.
        let (da, db) = match mode {
            // K-major swizzled: the k16 step is 32 bytes into each 128-byte row.
            6 => (
                wgmma::desc_sw128(sa + ks * 32, 16, 1024),
                wgmma::desc_sw128(sb + ks * 32, 16, 1024),
            ),
            // MN-major swizzled B: 16 k are two 8-row atoms.
            7 | 8 => (
                wgmma::desc_sw128(sa + ks * 32, 16, 1024),
                wgmma::desc_sw128(sb + ks * 2048, 8192, 1024),
            ),
            9 | 10 => (
                wgmma::desc_sw128(sa + ks * 32, 16, 1024),
                wgmma::desc_sw128(sb + ks * 2048, 1024, 8192),
            ),
            1 | 4 => (
                wgmma::desc(sa + ks * 2 * CORE, along_k, along_mn),
                wgmma::desc(sb + ks * 2 * CORE, along_k, along_mn),
            ),
            2 | 5 => (
                wgmma::desc(sa + ks * 2 * CORE, along_k, along_mn),
                wgmma::desc(sb + ks * 2 * CORE, along_mn, along_k),
            ),
            _ => (
                wgmma::desc(sa + ks * 2 * CORE, along_k, along_mn),
                wgmma::desc(sb + ks * 2 * CORE, along_k, along_mn),
            ),
        };
        let on = ks > 0;
        unsafe {
            match mode {
                0 | 6 => wgmma::m64n64k16_bf16_ss::<0>(&mut acc, da, db, on),
                1 | 2 | 7 | 9 => wgmma::m64n64k16_bf16_ss::<1>(&mut acc, da, db, on),
                3 => wgmma::m64n64k16_bf16_rs::<0>(&mut acc, rows.a(16 * warp, 16 * ks, lane), db, on),
                _ => wgmma::m64n64k16_bf16_rs::<1>(&mut acc, rows.a(16 * warp, 16 * ks, lane), db, on),
            }
        }
    });
    unsafe {
        wgmma::commit();
        wgmma::wait_all(&mut acc);
    }
    // Warp w holds rows 16w + lane/4 (+ 8); n-block j columns 8j + 2·(lane % 4) (+ 1).
    unroll!(8, j => {
        unroll!(2, half => {
            let r = 16 * warp + lane / 4 + 8 * half as u32;
            let col = 8 * j as u32 + 2 * (lane % 4);
            let at = c + ((r * T + col) * 4) as u64;
            unsafe {
                global::st_f32(at, acc[4 * j + 2 * half]);
                global::st_f32(at + 4, acc[4 * j + 2 * half + 1]);
            }
        });
    });
}
