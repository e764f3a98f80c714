//! Shared-memory tiles of 16-bit elements and the `mma.sync` m16n8k16 fragments over them. The
//! fragment maps themselves (which element each lane holds or addresses, and the layouts of
//! the PTX ISA they produce) are `tfla_params::fragment`, where the host tests them.
//!
//! The C layout of two adjacent n-blocks, packed pairwise, is exactly an A fragment: that is
//! how a product computed in registers (P = S ⊙ gates) feeds the next `mma` without shared
//! memory (see [`acc_to_a`]).
use crate::arch::convert::Elem;
use crate::arch::{global, ldmatrix, shared, thread};
use tfla_params::fragment;

/// A row-major tile of 16-bit elements in shared memory: `rows × cols`, rows `stride` bytes
/// apart (cols · 2 plus padding, a multiple of 16).
#[derive(Clone, Copy)]
pub struct SmemTile {
    pub base: u32,
    pub stride: u32,
}

impl SmemTile {
    /// Byte address of element (r, c).
    #[inline(always)]
    pub fn offset(self, r: u32, c: u32) -> u32 {
        self.base + r * self.stride + c * 2
    }

    /// A fragment of rows r0..r0+16, cols c0..c0+16 (the tile holds A itself).
    ///
    /// # Safety
    /// Warp-collective; the 16×16 block lies inside the tile.
    #[inline(always)]
    pub unsafe fn a(self, r0: u32, c0: u32, lane: u32) -> [u32; 4] {
        let (r, c) = fragment::a_rows(lane, (r0, c0));
        unsafe { ldmatrix::x4(self.offset(r, c)) }
    }

    /// A fragment of Aᵀ where the tile holds A transposed: A's rows m0..m0+16 are tile columns,
    /// A's k0..k0+16 are tile rows.
    ///
    /// # Safety
    /// Warp-collective; the 16×16 block lies inside the tile.
    #[inline(always)]
    pub unsafe fn a_trans(self, k0: u32, m0: u32, lane: u32) -> [u32; 4] {
        let (k, m) = fragment::a_trans_rows(lane, (k0, m0));
        unsafe { ldmatrix::x4_trans(self.offset(k, m)) }
    }

    /// B fragments of two adjacent n-blocks (n0..n0+16) for k0..k0+16, where the tile is
    /// indexed (n, k): rows are the output columns (as K in S = Q·Kᵀ).
    ///
    /// # Safety
    /// Warp-collective; the 16×16 block lies inside the tile.
    #[inline(always)]
    pub unsafe fn b_nk(self, n0: u32, k0: u32, lane: u32) -> [[u32; 2]; 2] {
        let (n, k) = fragment::b_nk_rows(lane, (n0, k0));
        let r = unsafe { ldmatrix::x4(self.offset(n, k)) };
        [[r[0], r[1]], [r[2], r[3]]]
    }

    /// B fragments of two adjacent n-blocks (n0..n0+16) for k0..k0+16, where the tile is
    /// indexed (k, n): rows are the reduction index (as V in O = P·V).
    ///
    /// # Safety
    /// Warp-collective; the 16×16 block lies inside the tile.
    #[inline(always)]
    pub unsafe fn b_kn(self, k0: u32, n0: u32, lane: u32) -> [[u32; 2]; 2] {
        let (k, n) = fragment::b_kn_rows(lane, (k0, n0));
        let r = unsafe { ldmatrix::x4_trans(self.offset(k, n)) };
        [[r[0], r[1]], [r[2], r[3]]]
    }
}

/// Packs the f32 accumulators of n-blocks 2s and 2s+1 (16 rows × 16 cols) into the A fragment
/// of the k-step s of the next product.
#[inline(always)]
pub fn acc_to_a<E: Elem>(lo: &[f32; 4], hi: &[f32; 4]) -> [u32; 4] {
    [
        E::pack(lo[0], lo[1]),
        E::pack(lo[2], lo[3]),
        E::pack(hi[0], hi[1]),
        E::pack(hi[2], hi[3]),
    ]
}

pub use tfla_params::fragment::{a_pos, acc_pos, b_pos, leads_quad};

pub use tfla_params::fragment::RegTile;

/// Loads a register tile from the row-major (rows, cols) f32 matrix at `base`, the lane's
/// element 0 of block (0, 0) at `origin` (`RegTile::pairs`); zeros outside the matrix.
///
/// # Safety
/// `base` holds the matrix, 8-byte aligned.
#[inline(always)]
pub unsafe fn load_tile<const MT: usize, const NB: usize>(
    tile: &mut RegTile<MT, NB>,
    base: u64,
    origin: (u32, u32),
    (rows, cols): (u32, u32),
) {
    let base = thread::opaque_u64(base);
    RegTile::<MT, NB>::pairs(origin, |mt, nb, half, rc| {
        let (at, inside) = pair_at(base, rc, (rows, cols));
        let x = unsafe { global::ld_v2_f32_or_zero(inside, at) };
        tile.set_pair(mt, nb, half, x);
    });
}

/// Stores a register tile as [`load_tile`] reads it; nothing outside the matrix.
///
/// # Safety
/// As [`load_tile`].
#[inline(always)]
pub unsafe fn store_tile<const MT: usize, const NB: usize>(
    tile: &RegTile<MT, NB>,
    base: u64,
    origin: (u32, u32),
    (rows, cols): (u32, u32),
) {
    let base = thread::opaque_u64(base);
    RegTile::<MT, NB>::pairs(origin, |mt, nb, half, rc| {
        let (at, inside) = pair_at(base, rc, (rows, cols));
        unsafe { global::st_v2_f32_if(inside, at, tile.pair(mt, nb, half)) };
    });
}

/// The address of element (r, c) of the row-major (rows, cols) f32 matrix at `base`, and
/// whether it lies in the matrix.
#[inline(always)]
fn pair_at(base: u64, (r, c): (u32, u32), (rows, cols): (u32, u32)) -> (u64, bool) {
    (base + (r * cols + c) as u64 * 4, r < rows && c < cols)
}

/// Writes a register tile, rounded to 16 bits, into a shared tile at the lane's positions from
/// `origin` (as [`load_tile`]): how a block stages a tile for a store of whole rows.
///
/// # Safety
/// The tile's rows and columns from `origin` lie inside `to`.
#[inline(always)]
pub unsafe fn stage_tile<E: Elem, const MT: usize, const NB: usize>(
    tile: &RegTile<MT, NB>,
    to: SmemTile,
    origin: (u32, u32),
) {
    RegTile::<MT, NB>::pairs(origin, |mt, nb, half, (r, c)| {
        let [x0, x1] = tile.pair(mt, nb, half);
        unsafe { shared::st_u32(to.offset(r, c), E::pack(x0, x1)) };
    });
}

/// Splits a pair of f32 into a packed 16-bit head (round to nearest) and the packed 16-bit
/// rounding error of that head: head + tail carries about 16 significant bits instead of 8
/// (bf16) or 11 (f16), at the price of a second `mma` with the tail.
#[inline(always)]
pub fn split2<E: Elem>(x: [f32; 2]) -> (u32, u32) {
    let hi = E::pack(x[0], x[1]);
    let (h0, h1) = E::unpack(hi);
    (hi, E::pack(x[0] - h0, x[1] - h1))
}
