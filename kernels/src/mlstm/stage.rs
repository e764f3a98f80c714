//! Staging global tiles into shared memory.
use crate::arch::{cp_async, global, shared, thread};
use crate::tile::SmemTile;

/// Issues `cp.async` copies of `rows` rows of a row-major (S, dim) tensor of 16-bit elements,
/// starting at row `t`, columns c0 .. c0 + 8·vecs, into `tile`; rows ≥ `t_end` and columns
/// ≥ `dim` become zeros. The caller commits and waits.
///
/// # Safety
/// Called by all THREADS threads; `base` is the head's 16-byte aligned base; `dim` is a multiple
/// of 8; the tile has `rows` rows of 8·vecs columns.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub unsafe fn rows<const THREADS: u32>(
    tile: SmemTile,
    base: u64,
    (t, t_end): (u32, u32),
    (c0, dim): (u32, u32),
    rows: u32,
    vecs: u32,
) {
    let mut idx = thread::thread_idx();
    while idx < rows * vecs {
        let (r, c) = (idx / vecs, c0 + (idx % vecs) * 8);
        let ok = t + r < t_end && c < dim;
        let src = if ok { base + (((t + r) * dim + c) as u64) * 2 } else { base };
        unsafe { cp_async::copy_16(tile.offset(r, c - c0), src, if ok { 16 } else { 0 }) };
        idx += THREADS;
    }
}

/// Converts an f32 (rows × cols) block of a row-major (·, dim) f32 matrix, starting at
/// (r0, c0), into 16-bit elements of `tile`; entries outside (r_end, dim) become zeros.
///
/// # Safety
/// Called by all THREADS threads; `base` is 16-byte aligned; `dim` and `cols` are multiples of
/// 4; the tile has `rows` rows of `cols` columns.
#[inline(always)]
pub unsafe fn f32_block<E: crate::arch::convert::Elem, const THREADS: u32>(
    tile: SmemTile,
    base: u64,
    (r0, c0): (u32, u32),
    (r_end, dim): (u32, u32),
    (rows, cols): (u32, u32),
) {
    let vecs = cols / 4;
    let mut idx = thread::thread_idx();
    while idx < rows * vecs {
        let (r, c) = (idx / vecs, (idx % vecs) * 4);
        let x = if r0 + r < r_end && c0 + c < dim {
            unsafe { global::ld_v4_f32(base + (((r0 + r) * dim + c0 + c) as u64) * 4) }
        } else {
            [0.0; 4]
        };
        unsafe { shared::st_v2(tile.offset(r, c), [E::pack(x[0], x[1]), E::pack(x[2], x[3])]) };
        idx += THREADS;
    }
}
