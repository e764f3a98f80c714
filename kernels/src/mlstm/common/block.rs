//! Block-wide scans and reductions over f32 vectors in shared memory (the gate cumulative sums
//! and running maxima of a chunk). Every function is called by all threads of the block.
use crate::arch::{shared, shfl, thread};

/// An associative operation with its identity.
pub trait ScanOp {
    const IDENTITY: f32;
    fn op(a: f32, b: f32) -> f32;
}

/// Sum.
pub struct Add;
/// Maximum.
pub struct Max;

impl ScanOp for Add {
    const IDENTITY: f32 = 0.0;
    #[inline(always)]
    fn op(a: f32, b: f32) -> f32 {
        a + b
    }
}

impl ScanOp for Max {
    const IDENTITY: f32 = f32::NEG_INFINITY;
    #[inline(always)]
    fn op(a: f32, b: f32) -> f32 {
        a.max(b)
    }
}

/// Inclusive warp scan of one value per lane.
///
/// # Safety
/// All 32 lanes call it together.
#[inline(always)]
unsafe fn warp_scan<O: ScanOp>(mut v: f32, lane: u32) -> f32 {
    let mut d = 1;
    while d < 32 {
        let u = unsafe { shfl::up_f32(v, d) };
        if lane >= d {
            v = O::op(u, v);
        }
        d *= 2;
    }
    v
}

/// In-place inclusive scan of `arr[0..n]` (f32, shared address `arr`). Each thread scans a
/// contiguous run of ceil(n / THREADS) elements, the run totals are scanned across the block,
/// then each run is offset. `scratch` holds one f32 per warp. Ends with a barrier.
///
/// # Safety
/// Every thread of the block (THREADS of them) calls it with the same arguments; `arr` and
/// `scratch` are valid shared addresses for n and THREADS / 32 f32; a barrier separates the
/// writes of `arr` from this call.
pub unsafe fn scan<O: ScanOp, const THREADS: u32>(arr: u32, n: u32, scratch: u32) {
    let tid = thread::thread_idx();
    let (lane, warp) = (tid % 32, tid / 32);
    let per = n.div_ceil(THREADS);
    let start = (tid * per).min(n);
    let end = (start + per).min(n);
    unsafe {
        let mut run = O::IDENTITY;
        for j in start..end {
            run = O::op(run, shared::ld_f32(arr + 4 * j));
            shared::st_f32(arr + 4 * j, run);
        }
        let incl = warp_scan::<O>(run, lane);
        if lane == 31 {
            shared::st_f32(scratch + 4 * warp, incl);
        }
        thread::sync_threads();
        // Exclusive prefix of this thread's run: earlier warps' totals, then earlier lanes.
        let mut prefix = O::IDENTITY;
        for w in 0..warp {
            prefix = O::op(prefix, shared::ld_f32(scratch + 4 * w));
        }
        let below = shfl::up_f32(incl, 1);
        if lane > 0 {
            prefix = O::op(prefix, below);
        }
        for j in start..end {
            shared::st_f32(arr + 4 * j, O::op(prefix, shared::ld_f32(arr + 4 * j)));
        }
        thread::sync_threads();
    }
}

/// Reduction of one value per thread over the block; every thread gets the result. `scratch`
/// holds one f32 per warp. Starts and ends with a barrier, so `scratch` may be reused at once.
///
/// # Safety
/// As [`scan`].
pub unsafe fn reduce<O: ScanOp, const THREADS: u32>(v: f32, scratch: u32) -> f32 {
    let tid = thread::thread_idx();
    let mut v = v;
    unsafe {
        let mut m = 16;
        while m > 0 {
            v = O::op(v, shfl::xor_f32(v, m));
            m /= 2;
        }
        thread::sync_threads();
        if tid.is_multiple_of(32) {
            shared::st_f32(scratch + 4 * (tid / 32), v);
        }
        thread::sync_threads();
        let mut r = O::IDENTITY;
        for w in 0..THREADS / 32 {
            r = O::op(r, shared::ld_f32(scratch + 4 * w));
        }
        r
    }
}
