//! Staging global tiles into shared memory.
use crate::arch::{cp_async, global, shared, thread};
use crate::tile::SmemTile;

/// The walk of a staged tile that [`rows`], [`rows_sw128`] and [`store_rows`] share: thread
/// `tid` moves column vector tid % VECS (16 bytes) of rows tid / VECS + n·(THREADS / VECS), so
/// its column (and the column bound) is the same in every move and the next move's shared and
/// global addresses are a constant stride further (`at(r, c)` is the shared address of
/// element (r, c), `row_bytes` the shared bytes from one row to the next along the walk). With the sizes constant at the call site the
/// loop unrolls completely into one row compare and one 64-bit add per move (a loop over a
/// flat index idx = tid + n·THREADS cost ~10 integer instructions per move plus a remainder
/// loop, since the compiler cannot know tid < THREADS). `each(shared, global, inside)` moves
/// one vector; `inside` is false for rows ≥ `t_end` and columns ≥ `dim`.
#[inline(always)]
fn walk<const THREADS: u32, const VECS: u32>(
    tid: u32,
    (at, row_bytes): (impl Fn(u32, u32) -> u32, u32),
    base: u64,
    (t, t_end): (u32, u32),
    (c0, dim): (u32, u32),
    rows: u32,
    mut each: impl FnMut(u32, u64, bool),
) {
    const {
        assert!(
            THREADS.is_multiple_of(VECS),
            "a thread moves the same column vector of every row it moves"
        )
    };
    let (r0, c) = (tid / VECS, (tid % VECS) * 8);
    let step = THREADS / VECS; // rows between one thread's moves
    let col_ok = c0 + c < dim;
    let mut global = base + (((t + r0) * dim + c0 + c) as u64) * 2;
    let mut shared = at(r0, c);
    for n in 0..rows.div_ceil(step) {
        let r = r0 + n * step;
        if rows.is_multiple_of(step) || r < rows {
            each(shared, global, t + r < t_end && col_ok);
        }
        global += (step * dim) as u64 * 2;
        shared += step * row_bytes;
    }
}

/// Issues `cp.async` copies of `rows` rows of a row-major (S, dim) tensor of 16-bit elements,
/// starting at row `t`, columns c0 .. c0 + 8·VECS, into `tile`; rows ≥ `t_end` and columns
/// ≥ `dim` become zeros. The caller commits and waits. (Walked as [`walk`] says.)
///
/// # Safety
/// Called by all THREADS threads; `base` is the head's 16-byte aligned base; `dim` is a multiple
/// of 8; the tile has `rows` rows of 8·VECS columns.
#[inline(always)]
pub unsafe fn rows<const THREADS: u32, const VECS: u32>(
    tile: SmemTile,
    base: u64,
    span: (u32, u32),
    cols: (u32, u32),
    rows: u32,
) {
    unsafe {
        copy_walk::<THREADS, VECS>(
            (|r, c| tile.offset(r, c), tile.stride),
            base,
            span,
            cols,
            rows,
        )
    };
}

/// The `cp.async` copies of [`rows`] and [`rows_sw128`] along [`walk`], shared element address
/// `at` (and the shared bytes between rows): what lies outside the tensor becomes zeros.
///
/// # Safety
/// As [`rows`].
#[inline(always)]
unsafe fn copy_walk<const THREADS: u32, const VECS: u32>(
    at: (impl Fn(u32, u32) -> u32, u32),
    base: u64,
    span: (u32, u32),
    cols: (u32, u32),
    rows: u32,
) {
    walk::<THREADS, VECS>(
        thread::thread_idx(),
        at,
        base,
        span,
        cols,
        rows,
        |dst, src, ok| {
            let from = if ok { src } else { base };
            unsafe { cp_async::copy_16(dst, from, if ok { 16 } else { 0 }) };
        },
    );
}

/// Shared-memory offset of element (r, c) (c a multiple of 8) of a tile of `rows` rows in the
/// 128-byte swizzle (`arch::wgmma`): panels of 64 columns, `rows` × 128 bytes each, one after
/// the other; in a panel row r at 128·r, its 16-byte chunk (c % 64) / 8 at that XOR r % 8.
#[cfg(target_feature = "sm_90a")]
#[inline(always)]
pub const fn sw128(rows: u32, r: u32, c: u32) -> u32 {
    (c / 64) * sw128_panel(rows) + r * 128 + (((c % 64) / 8) ^ (r % 8)) * 16
}

/// Bytes of one 64-column panel of `rows` rows in the swizzle of [`sw128`] (the stride between
/// panels: an MN-major descriptor's LBO).
#[cfg(target_feature = "sm_90a")]
pub const fn sw128_panel(rows: u32) -> u32 {
    rows * 128
}

/// As [`rows`] into a tile at `saddr` (1024-byte aligned) in the 128-byte swizzle of
/// [`sw128`]: K-major operands (64 columns of the reduction index, one panel) and MN-major ones
/// (rows of the reduction index, 8·VECS columns in panels of 64) of `wgmma`.
///
/// # Safety
/// As [`rows`]; the tile at `saddr` holds ⌈8·VECS / 64⌉ panels of `rows` rows.
#[cfg(target_feature = "sm_90a")]
#[inline(always)]
pub unsafe fn rows_sw128<const THREADS: u32, const VECS: u32>(
    saddr: u32,
    base: u64,
    span: (u32, u32),
    cols: (u32, u32),
    rows: u32,
) {
    const {
        assert!(
            (THREADS / VECS).is_multiple_of(8),
            "a thread's rows keep one swizzle phase: its column's chunk moves the same in each"
        )
    };
    unsafe {
        copy_walk::<THREADS, VECS>(
            (|r, c| saddr + sw128(rows, r, c), 128),
            base,
            span,
            cols,
            rows,
        )
    };
}

/// Writes `rows` rows of a 16-bit tile in shared memory, columns 0 .. 8·VECS, to rows
/// t .. t + rows, columns c0 .. of a row-major (·, dim) global matrix, in 16-byte stores; rows
/// ≥ `t_end` and columns ≥ `dim` are not written. The counterpart of [`rows`] for results,
/// walked the same way: an `mma` accumulator stored straight from its fragments writes 16
/// bytes per row and store (half a 32-byte sector), which the L2 has to merge; staged through
/// shared memory, every store writes whole sectors. (The fragments' own layout lives in the
/// caller; it fills `tile` and puts a barrier between.)
///
/// # Safety
/// Called by all THREADS threads of the block after a barrier that follows the tile's
/// writes; `base` is 16-byte aligned; `dim` is a multiple of 8.
#[inline(always)]
pub unsafe fn store_rows<const THREADS: u32, const VECS: u32>(
    tile: SmemTile,
    base: u64,
    span: (u32, u32),
    cols: (u32, u32),
    rows: u32,
) {
    // Through `opaque`: a state walk stores once per chunk, and its per-thread offsets would
    // otherwise be hoisted out of the walk and held in registers the whole time.
    let tid = thread::opaque(thread::thread_idx());
    let at = (|r, c| tile.offset(r, c), tile.stride);
    walk::<THREADS, VECS>(tid, at, base, span, cols, rows, |src, dst, ok| {
        let v = unsafe { shared::ld_v4(src) };
        unsafe { global::st_v4_b32_if(ok, dst, v) };
    });
}

/// Issues `cp.async` copies of `n` f32 of a (S,) vector from index `t` into `saddr`; entries
/// at or past `t_end` become zeros. The caller commits and waits.
///
/// # Safety
/// Called by all THREADS threads; `base` is 16-byte aligned; `t` and `n` are multiples of 4;
/// `saddr` holds `n` f32 and is 16-byte aligned.
#[inline(always)]
pub unsafe fn f32_vec<const THREADS: u32>(saddr: u32, base: u64, (t, t_end): (u32, u32), n: u32) {
    let mut idx = thread::thread_idx();
    while idx < n / 4 {
        let j = t + 4 * idx;
        // Copy the valid prefix of this group of 4; a partial group zero-fills its tail.
        let bytes = (t_end.saturating_sub(j)).min(4) * 4;
        let src = if bytes > 0 { base + j as u64 * 4 } else { base };
        unsafe { cp_async::copy_16(saddr + 16 * idx, src, bytes) };
        idx += THREADS;
    }
}

/// One step of a two-stage `cp.async` pipeline: issues item `next` (or, past the last item, an
/// empty group, which keeps the wait count uniform), then waits until the current item has
/// landed and every thread sees it.
///
/// # Safety
/// Called by all threads of the block; `issue` issues and commits one group of copies.
#[inline(always)]
pub unsafe fn advance(next: Option<u32>, issue: impl Fn(u32)) {
    unsafe { advance_by::<1>(next, issue) }
}

/// One step of a pipeline that keeps `AHEAD` items in flight behind the current one (a ring of
/// AHEAD + 1 stages, primed with AHEAD groups): issues item `next` = current + AHEAD (or an
/// empty group), then waits until the current item has landed and every thread sees it.
///
/// # Safety
/// As [`advance`]; the stage `next` goes to was last read before the previous barrier.
#[inline(always)]
pub unsafe fn advance_by<const AHEAD: u32>(next: Option<u32>, issue: impl Fn(u32)) {
    unsafe { step::<AHEAD, false>(next, issue) }
}

/// [`advance_by`] for stages that `wgmma` reads: between the wait and the barrier each thread
/// makes its landed copies visible to the async proxy.
///
/// # Safety
/// As [`advance_by`].
#[cfg(target_feature = "sm_90a")]
#[inline(always)]
pub unsafe fn advance_by_for_wgmma<const AHEAD: u32>(next: Option<u32>, issue: impl Fn(u32)) {
    unsafe { step::<AHEAD, true>(next, issue) }
}

/// Issues item `item` of a ring of `n_items` (`issue` commits one group), or past the last
/// item an empty group: the waits count groups.
///
/// # Safety
/// Called by all threads of the block.
#[cfg(target_feature = "sm_90a")]
#[inline(always)]
pub unsafe fn issue_or_empty(item: u32, n_items: u32, issue: &impl Fn(u32)) {
    if item < n_items {
        issue(item);
    } else {
        unsafe { cp_async::commit() };
    }
}

/// The two barriers per item of a ring whose `wgmma`s stay one item in flight
/// (`chunk_output_wg`, `bwd_combine_wg`), so the tensor pipe never drains at an item boundary.
/// This one, before the item's `wgmma`s are issued: the item has landed while the `BEHIND`
/// groups after it may still load, each thread's copies are visible to the async proxy, and
/// every thread sees them.
///
/// # Safety
/// Called by all threads of the block, with BEHIND groups committed after the item's.
#[cfg(target_feature = "sm_90a")]
#[inline(always)]
pub unsafe fn landed_for_wgmma<const BEHIND: u32>() {
    unsafe {
        cp_async::wait::<BEHIND>();
        crate::arch::wgmma::fence_proxy_async();
        thread::sync_threads();
    }
}

/// The second barrier of [`landed_for_wgmma`]'s ring, after the item's `wgmma`s are issued:
/// the previous item's are done in this warpgroup (all of them where it `issued` nothing this
/// item, its newest group being older), and after the barrier in every warpgroup, so the
/// stage that item read is free for `issue_next`'s copies, which load while this item
/// multiplies.
///
/// # Safety
/// Called by all threads of the block; `issue_next` commits one group (empty past the last
/// item: the waits count groups).
#[cfg(target_feature = "sm_90a")]
#[inline(always)]
pub unsafe fn release_for_wgmma(issued: bool, issue_next: impl FnOnce()) {
    unsafe {
        if issued {
            crate::arch::wgmma::wait::<1>();
        } else {
            crate::arch::wgmma::wait_all();
        }
        thread::sync_threads();
    }
    issue_next();
}

/// The pipeline step of [`advance_by`] and [`advance_by_for_wgmma`] (`ASYNC_PROXY`).
#[inline(always)]
unsafe fn step<const AHEAD: u32, const ASYNC_PROXY: bool>(next: Option<u32>, issue: impl Fn(u32)) {
    match next {
        Some(n) => issue(n),
        None => unsafe { cp_async::commit() },
    }
    unsafe {
        cp_async::wait::<AHEAD>();
        #[cfg(target_feature = "sm_90a")]
        if ASYNC_PROXY {
            crate::arch::wgmma::fence_proxy_async();
        }
        thread::sync_threads();
    }
}
