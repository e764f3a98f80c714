//! Shared-memory tiles of 16-bit elements and the `mma.sync` m16n8k16 fragments over them. The
//! fragment maps themselves (which element each lane holds or addresses, and the layouts of
//! the PTX ISA they produce) are `tfla_params::fragment`, where the host tests them.
//!
//! The C layout of two adjacent n-blocks, packed pairwise, is exactly an A fragment: that is
//! how a product computed in registers (P = S ⊙ gates) feeds the next `mma` without shared
//! memory (see [`acc_to_a`]).
use crate::arch::ldmatrix;
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
pub fn acc_to_a<E: crate::arch::convert::Elem>(lo: &[f32; 4], hi: &[f32; 4]) -> [u32; 4] {
    [
        E::pack(lo[0], lo[1]),
        E::pack(lo[2], lo[3]),
        E::pack(hi[0], hi[1]),
        E::pack(hi[2], hi[3]),
    ]
}

pub use tfla_params::fragment::{a_pos, acc_pos, b_pos, leads_quad};

/// Calls `f(nb, e, inside, idx)` for the accumulator element pairs (n-block nb < NB ≤ 32,
/// first element e = 0, 2) of a warp's 16-row tile whose first element (e = 0 of lane 0's
/// n-block 0 shifted to this lane: row g, column 2t) is (r0, c0) of a row-major (rows, cols)
/// matrix: `idx` is the pair's first element index, `inside` whether the pair lies in the
/// matrix. How register tiles of state are loaded, stored and dotted with global matrices.
#[inline(always)]
pub fn acc_pairs<const NB: usize>(
    (r0, c0): (u32, u32),
    (rows, cols): (u32, u32),
    mut f: impl FnMut(usize, usize, bool, u64),
) {
    unroll!(32, nb => {
        if nb < NB {
            for half in 0..2 {
                let (r, c) = (r0 + half as u32 * 8, c0 + nb as u32 * 8);
                f(nb, 2 * half, r < rows && c < cols, (r * cols + c) as u64);
            }
        }
    });
}

/// Splits a pair of f32 into a packed 16-bit head (round to nearest) and the packed 16-bit
/// rounding error of that head: head + tail carries about 16 significant bits instead of 8
/// (bf16) or 11 (f16), at the price of a second `mma` with the tail.
#[inline(always)]
pub fn split2<E: crate::arch::convert::Elem>(x: [f32; 2]) -> (u32, u32) {
    let hi = E::pack(x[0], x[1]);
    let (h0, h1) = E::unpack(hi);
    (hi, E::pack(x[0] - h0, x[1] - h1))
}
