//! A probe of the `wgmma` path (sm_90a builds only): one warpgroup computes a 64 × 64 × 64
//! bf16 product with both operands in shared memory, through the wrappers of `arch::wgmma`.
//! It exists to check those wrappers, the descriptor fields and the core-matrix layout on a
//! GPU (`tfla-wgmma-probe`) before a kernel is built on them.
use crate::arch::{global, shared, thread, wgmma};

/// Tile edge (M = N = K).
const T: u32 = 64;

/// Shared-memory offset of element (r, k) of a T × T K-major tile in core matrices: core
/// matrix (r / 8, k / 8) at ((r / 8)·(T / 8) + k / 8)·128 bytes, so LBO (along K) is 128 and
/// SBO (along M/N) is (T / 8)·128; its row r % 8 at 16 bytes each.
const fn core_offset(r: u32, k: u32) -> u32 {
    ((r / 8) * (T / 8) + k / 8) * 128 + (r % 8) * 16 + (k % 8) * 2
}
const LBO: u32 = 128;
const SBO: u32 = (T / 8) * 128;

/// C (T × T f32, row-major) = A (T × T bf16, row-major, M × K) · B, with B given as Bᵀ
/// (T × T bf16, row-major, N × K).
///
/// # Safety
/// One block of 128 threads, 2·T·T·2 bytes of dynamic shared memory; the pointers hold the
/// three matrices.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn tfla_probe_wgmma_bf16(a: u64, bt: u64, c: u64) {
    let tid = thread::thread_idx();
    let (lane, warp) = (tid % 32, tid / 32);
    let (sa, sb) = (shared::base(), shared::base() + T * T * 2);
    // Each thread moves 16-byte row pieces (8 elements along K) into the core-matrix layout.
    let mut i = tid;
    while i < T * T / 8 {
        let (r, k) = (i / (T / 8), (i % (T / 8)) * 8);
        let from = ((r * T + k) * 2) as u64;
        unsafe {
            shared::st_v4(sa + core_offset(r, k), global::ld_nc_v4(a + from));
            shared::st_v4(sb + core_offset(r, k), global::ld_nc_v4(bt + from));
        }
        i += 128;
    }
    unsafe {
        wgmma::fence_proxy_async();
        thread::sync_threads();
    }
    let mut acc = [0f32; 32];
    unsafe { wgmma::fence() };
    unroll!(4, ks => {
        // k16 step ks: core matrices 2·ks and 2·ks + 1 along K.
        let at = ks as u32 * 2 * 128;
        let (da, db) = (wgmma::desc(sa + at, LBO, SBO), wgmma::desc(sb + at, LBO, SBO));
        unsafe { wgmma::m64n64k16_bf16(&mut acc, da, db, ks > 0) };
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
