//! The `mma.sync` m16n8k16 fragment maps: which element of a tile each lane holds or addresses.
//! The device crate's tiles (`kernels/src/tile.rs`) compute their `ldmatrix` addresses and
//! accumulator positions here, and the tests below check them on the host against the layouts
//! of the PTX ISA (g = lane / 4, t = lane % 4; each register holds 2 elements, the lower column
//! in the low half):
//! - A (16×16, row-major, 4 regs): a0 (g, 2t), a1 (g+8, 2t), a2 (g, 2t+8), a3 (g+8, 2t+8).
//! - B (16×8, indexed (k, n), 2 regs): b0 (k=2t, n=g), b1 (k=2t+8, n=g).
//! - C/D (16×8 f32, 4 regs): c0, c1 at (g, 2t), (g, 2t+1); c2, c3 at (g+8, 2t), (g+8, 2t+1).
//!
//! `ldmatrix.x4` reads four 8×8 matrices of 16-bit elements, matrix j from the row addresses of
//! lanes 8j..8j+7, and gives lane l register j holding (row l / 4, columns 2(l % 4), +1) of
//! matrix j (`.trans`: rows 2(l % 4), +1 of column l / 4).

/// Row (within the warp's 16) and column (within the n-block) of accumulator element `e`.
#[inline(always)]
pub const fn acc_pos(lane: u32, e: usize) -> (u32, u32) {
    (
        lane / 4 + ((e as u32) / 2) * 8,
        (lane % 4) * 2 + (e as u32) % 2,
    )
}

/// Row and column (within the 16×16 block) of the first of the two elements of A fragment
/// register `j` that `lane` holds; the second is one column right.
#[inline(always)]
pub const fn a_pos(lane: u32, j: usize) -> (u32, u32) {
    (
        lane / 4 + ((j as u32) % 2) * 8,
        (lane % 4) * 2 + ((j as u32) / 2) * 8,
    )
}

/// (k, n) within the 16×8 block of the first of the two elements of B fragment register `j`
/// that `lane` holds; the second is at k + 1.
#[inline(always)]
pub const fn b_pos(lane: u32, j: usize) -> (u32, u32) {
    ((lane % 4) * 2 + (j as u32) * 8, lane / 4)
}

/// Whether `lane` leads its quad (t = 0): of the four lanes that share accumulator rows g and
/// g + 8 it holds columns 0 and 1, and is the one that writes a value kept once per row (a row
/// sum after the quad's shuffles, ñ of the row).
#[inline(always)]
pub const fn leads_quad(lane: u32) -> bool {
    lane.is_multiple_of(4)
}

/// The (row, column) of a row-major A tile that `lane` addresses for `ldmatrix.x4` of the
/// 16×16 block at `(r0, c0)` (each map adds its origin in the order the kernels always did, so
/// their code is unchanged): matrices (rows 0-7, cols 0-7), (8-15, 0-7), (0-7, 8-15), (8-15,
/// 8-15), so register j is a_j.
#[inline(always)]
pub const fn a_rows(lane: u32, (r0, c0): (u32, u32)) -> (u32, u32) {
    (r0 + lane % 16, c0 + (lane / 16) * 8)
}

/// The (k, m) row and column that `lane` addresses for `ldmatrix.x4.trans` of the A fragment
/// of a tile that holds A transposed (k rows, m columns): stored blocks (k 0-7, m 0-7), (k 0-7,
/// m 8-15), (k 8-15, m 0-7), (k 8-15, m 8-15).
#[inline(always)]
pub const fn a_trans_rows(lane: u32, (k0, m0): (u32, u32)) -> (u32, u32) {
    (k0 + lane % 8 + (lane / 16) * 8, m0 + ((lane / 8) % 2) * 8)
}

/// The (n, k) that `lane` addresses for `ldmatrix.x4` of the B fragments of two adjacent
/// n-blocks from a tile indexed (n, k): registers (0, 1) are n-block 0's b0, b1, (2, 3) n-block
/// 1's.
#[inline(always)]
pub const fn b_nk_rows(lane: u32, (n0, k0): (u32, u32)) -> (u32, u32) {
    (n0 + lane % 8 + (lane / 16) * 8, k0 + ((lane / 8) % 2) * 8)
}

/// The (k, n) that `lane` addresses for `ldmatrix.x4.trans` of the B fragments of two adjacent
/// n-blocks from a tile indexed (k, n), registers as [`b_nk_rows`].
#[inline(always)]
pub const fn b_kn_rows(lane: u32, (k0, n0): (u32, u32)) -> (u32, u32) {
    (k0 + lane % 8 + ((lane / 8) % 2) * 8, n0 + (lane / 16) * 8)
}

/// A warp's f32 accumulator tile: `MT` m-tiles of 16 rows × `NB` n-blocks of 8 columns, each
/// block in the C layout above (lane holds elements e = 0..4 at [`acc_pos`]), so the warp's
/// tile is 16·MT × 8·NB. A `wgmma` m64nN accumulator is this tile per warp with MT = 1 and
/// NB = N / 8: its register 4·nb + e is element e of n-block nb ([`RegTile::flat`]), which is
/// how the same tile serves `mma.sync` and `wgmma` kernels.
///
/// Every loop over the tile is unrolled (`unroll!`), so each element stays in a register; MT ≤ 4
/// and NB ≤ 32.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct RegTile<const MT: usize, const NB: usize>(pub [[[f32; 4]; NB]; MT]);

impl<const MT: usize, const NB: usize> RegTile<MT, NB> {
    const FITS: () = assert!(
        MT <= 4 && NB <= 32,
        "unroll! below covers 4 m-tiles, 32 n-blocks"
    );

    /// All zeros (from a constant: a repeat expression this long can become a store loop that
    /// keeps the tile out of registers).
    pub const ZERO: Self = Self([[[0.0; 4]; NB]; MT]);

    /// (row, column) in the warp's tile of element `e` of block (`mt`, `nb`) in `lane`.
    #[inline(always)]
    pub const fn pos(lane: u32, mt: usize, nb: usize, e: usize) -> (u32, u32) {
        let (r, c) = acc_pos(lane, e);
        (16 * mt as u32 + r, 8 * nb as u32 + c)
    }

    /// Calls `f(mt, nb, half, (r, c))` for each pair of horizontally adjacent elements (e =
    /// 2·half, 2·half + 1) of the lane's tile, m-tiles, then halves, then n-blocks: (r, c) is
    /// the pair's first element, where `origin` is the lane's element 0 of block (0, 0)
    /// (`pos(lane, 0, 0, 0)` plus where the warp's tile lies).
    #[inline(always)]
    pub fn pairs((r0, c0): (u32, u32), mut f: impl FnMut(usize, usize, usize, (u32, u32))) {
        let () = Self::FITS;
        unroll!(4, mt => {
            if mt < MT {
                unroll!(2, half => {
                    let r = r0 + mt as u32 * 16 + half as u32 * 8;
                    unroll!(32, nb => {
                        if nb < NB {
                            f(mt, nb, half, (r, c0 + nb as u32 * 8));
                        }
                    });
                });
            }
        });
    }

    /// The pair (e = 2·half, 2·half + 1) of block (mt, nb).
    #[inline(always)]
    pub fn pair(&self, mt: usize, nb: usize, half: usize) -> [f32; 2] {
        let b = &self.0[mt][nb];
        [b[2 * half], b[2 * half + 1]]
    }

    #[inline(always)]
    pub fn set_pair(&mut self, mt: usize, nb: usize, half: usize, x: [f32; 2]) {
        let b = &mut self.0[mt][nb];
        (b[2 * half], b[2 * half + 1]) = (x[0], x[1]);
    }

    /// Every element times `x`.
    #[inline(always)]
    pub fn scale(&mut self, x: f32) {
        let () = Self::FITS;
        unroll!(4, mt => {
            if mt < MT {
                unroll!(32, nb => {
                    if nb < NB {
                        unroll!(4, e => { self.0[mt][nb][e] *= x; });
                    }
                });
            }
        });
    }

    /// The index of element e of n-block nb in the flat register list of a `wgmma` accumulator.
    #[inline(always)]
    pub const fn flat(nb: usize, e: usize) -> usize {
        4 * nb + e
    }
}

impl<const NB: usize> RegTile<1, NB> {
    /// The tile as the flat register list a `wgmma` m64n(8·NB) instruction takes (`N` = 4·NB:
    /// the layouts agree, [`RegTile::flat`]).
    #[inline(always)]
    pub fn flat_mut<const N: usize>(&mut self) -> &mut [f32; N] {
        const { assert!(N == 4 * NB, "a wgmma accumulator of 4·NB registers") };
        // SAFETY: [[[f32; 4]; NB]; 1] and [f32; 4·NB] have the same size and alignment, and
        // arrays are laid out contiguously in index order.
        unsafe { &mut *(self as *mut Self).cast::<[f32; N]>() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `ldmatrix.x4` (or `.trans`) hands lane `l` in register `j`: the two elements'
    /// (row, column) in the tile, given each lane's row address (row, first column).
    fn ldmatrix(addr: impl Fn(u32) -> (u32, u32), trans: bool, l: u32, j: u32) -> [(u32, u32); 2] {
        let row_of = |i: u32| addr(8 * j + i); // matrix j's row i: (tile row, first column)
        if trans {
            // Rows 2(l % 4), +1 of the stored matrix, column l / 4.
            [0, 1].map(|h| {
                let (r, c) = row_of(2 * (l % 4) + h);
                (r, c + l / 4)
            })
        } else {
            let (r, c) = row_of(l / 4);
            [0, 1].map(|h| (r, c + 2 * (l % 4) + h))
        }
    }

    #[test]
    fn accumulator_covers_the_16_by_8_tile_once_in_the_isa_layout() {
        let mut seen = [[0u32; 8]; 16];
        for lane in 0..32 {
            let (g, t) = (lane / 4, lane % 4);
            for e in 0..4 {
                let (r, c) = acc_pos(lane, e);
                let want = (g + 8 * (e as u32 / 2), 2 * t + e as u32 % 2);
                assert_eq!((r, c), want, "lane {lane} c{e}");
                seen[r as usize][c as usize] += 1;
            }
        }
        assert!(seen.iter().flatten().all(|&n| n == 1));
        // The quad's leader holds columns 0 and 1 of its rows.
        for lane in 0..32 {
            assert_eq!(leads_quad(lane), acc_pos(lane, 0).1 == 0);
        }
    }

    #[test]
    fn a_fragments_from_ldmatrix_are_the_isa_layout() {
        for l in 0..32 {
            let (g, t) = (l / 4, l % 4);
            // a_j's first element per the ISA, (row, column) of A.
            let want = [
                (g, 2 * t),
                (g + 8, 2 * t),
                (g, 2 * t + 8),
                (g + 8, 2 * t + 8),
            ];
            for j in 0..4 {
                let (r, c) = want[j as usize];
                assert_eq!(a_pos(l, j as usize), (r, c), "a{j} position");
                assert_eq!(
                    ldmatrix(|l| a_rows(l, (0, 0)), false, l, j),
                    [(r, c), (r, c + 1)],
                    "a{j}"
                );
                // Transposed storage: the tile's (k, m) is A's (m, k).
                let got = ldmatrix(|l| a_trans_rows(l, (0, 0)), true, l, j).map(|(k, m)| (m, k));
                assert_eq!(got, [(r, c), (r, c + 1)], "a{j} from the transposed tile");
            }
        }
    }

    #[test]
    fn b_fragments_from_ldmatrix_are_the_isa_layout() {
        for l in 0..32 {
            let (g, t) = (l / 4, l % 4);
            for nb in 0..2 {
                for reg in 0..2 {
                    // b_reg of n-block nb: (k, n) = (2t + 8·reg, +1; g + 8·nb).
                    let (k, n) = (2 * t + 8 * reg, g + 8 * nb);
                    assert_eq!(b_pos(l, reg as usize), (k, g), "b{reg} position");
                    let j = 2 * nb + reg;
                    let nk = ldmatrix(|l| b_nk_rows(l, (0, 0)), false, l, j).map(|(n, k)| (k, n));
                    assert_eq!(
                        nk,
                        [(k, n), (k + 1, n)],
                        "b{reg} of n-block {nb}, (n, k) tile"
                    );
                    let kn = ldmatrix(|l| b_kn_rows(l, (0, 0)), true, l, j);
                    assert_eq!(
                        kn,
                        [(k, n), (k + 1, n)],
                        "b{reg} of n-block {nb}, (k, n) tile"
                    );
                }
            }
        }
    }

    /// Visits every pair of a `RegTile<MT, NB>` in every lane: each at its `pos`, the warp's
    /// 16·MT × 8·NB tile covered once.
    fn check_tile<const MT: usize, const NB: usize>() {
        let mut seen = std::vec![0u32; 16 * MT * 8 * NB];
        for lane in 0..32 {
            let origin = RegTile::<MT, NB>::pos(lane, 0, 0, 0);
            let mut pairs = 0;
            RegTile::<MT, NB>::pairs(origin, |mt, nb, half, (r, c)| {
                assert_eq!((r, c), RegTile::<MT, NB>::pos(lane, mt, nb, 2 * half));
                assert_eq!(
                    (r, c + 1),
                    RegTile::<MT, NB>::pos(lane, mt, nb, 2 * half + 1)
                );
                for (r, c) in [(r, c), (r, c + 1)] {
                    seen[r as usize * 8 * NB + c as usize] += 1;
                }
                pairs += 1;
            });
            assert_eq!(pairs, 2 * MT * NB, "lane {lane}");
        }
        assert!(
            seen.iter().all(|&n| n == 1),
            "{MT} x {NB}: every element once"
        );
    }

    #[test]
    fn register_tiles_cover_their_tile_once() {
        check_tile::<4, 8>(); // chunk_state_wide: 64 × 64 per warp
        check_tile::<1, 16>(); // chunk_state: 16 × 128
        check_tile::<1, 32>(); // chunk_state_wg: the m64n256 accumulator, 16 rows per warp
        check_tile::<1, 1>();
    }

    #[test]
    fn a_one_row_tile_is_the_wgmma_accumulator_layout() {
        // PTX ISA, wgmma .m64nNk16 D fragment: thread T's register i holds row
        // 16·(T / 32) + (T % 32) / 4 + 8·((i / 2) % 2), column 8·(i / 4) + 2·(T % 4) + i % 2
        // (rows within the warp's 16 below).
        for lane in 0..32u32 {
            for i in 0..128usize {
                let want = (
                    lane / 4 + 8 * ((i as u32 / 2) % 2),
                    8 * (i as u32 / 4) + 2 * (lane % 4) + i as u32 % 2,
                );
                let (nb, e) = (i / 4, i % 4);
                assert_eq!(RegTile::<1, 32>::flat(nb, e), i);
                assert_eq!(
                    RegTile::<1, 32>::pos(lane, 0, nb, e),
                    want,
                    "lane {lane} register {i}"
                );
            }
        }
        let mut t = RegTile::<1, 32>::ZERO;
        t.0[0][5][3] = 1.5;
        t.set_pair(0, 31, 1, [2.0, 3.0]);
        let flat: &mut [f32; 128] = t.flat_mut();
        assert_eq!(
            (flat[RegTile::<1, 32>::flat(5, 3)], flat[126], flat[127]),
            (1.5, 2.0, 3.0)
        );
        flat[0] = 4.0;
        t.scale(0.5);
        assert_eq!((t.0[0][0][0], t.pair(0, 5, 1)), (2.0, [0.0, 0.75]));
    }
}
