//! Backward, the input gradients of one chunk in one kernel for small heads
//! (`tfla_params::bwd::chunk`): what `bwd_scores` and the three `bwd_combine` kernels compute
//! for the chunk, with the score matrices kept on chip (notation as in those two modules).
//!
//! The block stages the chunk's Q, K, V, dH and the states C̃_k, dC̃_{k+1} whole, in three
//! `cp.async` groups in the order they are needed, then warp w computes
//! 1. dq of rows i = 16w..: the inter-chunk term dH·C̃_kᵀ scaled per row (with ñ_k), then per
//!    key tile up to its rows the tiles S = Q·Kᵀ and dS = dH·Vᵀ, gated into dP in registers,
//!    which is the A operand of dP·K (`acc_to_a`); the pair gradients G_ij are summed over
//!    rows and columns here as `bwd_scores` does;
//! 2. dv of key rows j = 16w..: K·dC̃ scaled per row, then per query tile from its rows on the
//!    tile Sᵀ = K·Qᵀ gated into Pᵀ, the A operand of Pᵀ·dH;
//! 3. dk of the same rows: V·dC̃ᵀ scaled (with dñ), then dSᵀ = V·dHᵀ gated into dPᵀ, the A
//!    operand of dPᵀ·Q.
//!
//! The transposed tiles are recomputed rather than passed through shared memory: there is no
//! room beside the six operands, and recomputing needs no barrier between a warp's passes. The
//! products and their roundings to the input dtype are those of the four kernels (f32 sums
//! may be ordered differently). A warp of the first row tile has one key tile for dq and two
//! query tiles each for dv and dk, one of the second the other way round, so the warps' work
//! balances.
//!
//! Code size is the constraint that shaped the loops: one block of 8 warps per SM (its shared
//! memory) hides latency only with what each warp issues, and a fully unrolled kernel (140 KB
//! of SASS) left warps waiting on instruction fetch 45% of the time. So k-steps over the head
//! dims are rolled loops (`thread::rolled_loop`), bounded by the head dims; only the products
//! that read a register tile are unrolled. (Running 2 and 3 as one code path, selected per
//! role, made the code smaller still but the kernel 10% slower: measured, not kept.)
use super::bwd_chunk_terms::{ChunkProducts, ChunkTerms};
use super::gates::GateKind;
use super::stage;
use crate::arch::convert::Elem;
use crate::arch::{cp_async, shared, thread};
use crate::tile::{SmemTile, acc_to_a};
use tfla_params::bwd::{BwdParams, chunk::*};
use tfla_params::fwd::SMEM_ROW_PAD;

const NB: usize = (TILE_D / 8) as usize;
const TB: usize = (TILE / 8) as usize;
const _: () = assert!(
    NB == 16 && TB == 8 && CHUNK == 2 * TILE,
    "the unroll! counts below assume 16 output n-blocks, 8 k-steps over a head dim, and two \
     64-wide score tiles per chunk"
);

/// A warp's 16 rows × TILE_D columns of dq, dk or dv.
type Acc = [[f32; 4]; NB];
/// A warp's 16 rows × TILE columns of a score tile.
type Tile = [[f32; 4]; TB];

/// The warp's products on the staged operands (padded rows, `ldmatrix` fragments).
struct Products<E> {
    lane: u32,
    warp: u32,
    dqk: u32,
    dhv: u32,
    _elem: core::marker::PhantomData<E>,
}

impl<E> Products<E> {
    #[inline(always)]
    fn operand(&self, x: u32) -> SmemTile {
        SmemTile {
            base: shared::base() + x * tile_bytes(),
            stride: (TILE_D + SMEM_ROW_PAD) * 2,
        }
    }
}

// (`product`, `scores` and `score_pair` address through an opaque lane: else the compiler
// keeps the A fragments of one product in registers for the next product with the same rows.)
impl<E: Elem> ChunkProducts for Products<E> {
    type Acc = Acc;
    type Tile = Tile;

    #[inline(always)]
    fn zero_acc(&self) -> Acc {
        [[0f32; 4]; NB]
    }

    /// The k-steps a rolled loop.
    #[inline(always)]
    fn product(&self, acc: &mut Acc, a: u32, b: u32, nk: bool) {
        let dim = slot::head_dim(a, (self.dqk, self.dhv));
        let (a, b) = (self.operand(a), self.operand(b));
        let (lane, warp) = (thread::opaque(self.lane), self.warp);
        thread::rolled_loop(dim.div_ceil(16), |ks| {
            let af = unsafe { a.a(warp * 16, ks * 16, lane) };
            unroll!(8, pr => {
                let (n0, k0) = (pr as u32 * 16, ks * 16);
                let bf = if nk { unsafe { b.b_nk(n0, k0, lane) } } else { unsafe { b.b_kn(k0, n0, lane) } };
                unsafe {
                    E::mma(&mut acc[2 * pr], af, bf[0]);
                    E::mma(&mut acc[2 * pr + 1], af, bf[1]);
                }
            });
        });
    }

    /// S and dS in one rolled loop over the larger head dim (the staged operands are zeros past
    /// theirs): twice the independent `mma` per iteration of two separate loops.
    #[inline(always)]
    fn score_pair(&self, j0: u32) -> (Tile, Tile) {
        let [sq, sk, sv, sdh] = [slot::Q, slot::K, slot::V, slot::DH].map(|x| self.operand(x));
        let (lane, warp) = (thread::opaque(self.lane), self.warp);
        let (mut st, mut dt) = ([[0f32; 4]; TB], [[0f32; 4]; TB]);
        thread::rolled_loop(self.dqk.max(self.dhv).div_ceil(16), |ks| {
            let (qa, ha) = unsafe {
                (
                    sq.a(warp * 16, ks * 16, lane),
                    sdh.a(warp * 16, ks * 16, lane),
                )
            };
            unroll!(4, pr => {
                let (kb, vb) = unsafe {
                    (sk.b_nk(j0 + pr as u32 * 16, ks * 16, lane), sv.b_nk(j0 + pr as u32 * 16, ks * 16, lane))
                };
                unsafe {
                    E::mma(&mut st[2 * pr], qa, kb[0]);
                    E::mma(&mut st[2 * pr + 1], qa, kb[1]);
                    E::mma(&mut dt[2 * pr], ha, vb[0]);
                    E::mma(&mut dt[2 * pr + 1], ha, vb[1]);
                }
            });
        });
        (st, dt)
    }

    #[inline(always)]
    fn scores(&self, a: u32, b: u32, n0: u32) -> Tile {
        let dim = slot::head_dim(a, (self.dqk, self.dhv));
        let (a, b) = (self.operand(a), self.operand(b));
        let (lane, warp) = (thread::opaque(self.lane), self.warp);
        let mut t = [[0f32; 4]; TB];
        thread::rolled_loop(dim.div_ceil(16), |ks| {
            let af = unsafe { a.a(warp * 16, ks * 16, lane) };
            unroll!(4, pr => {
                let bf = unsafe { b.b_nk(n0 + pr as u32 * 16, ks * 16, lane) };
                unsafe {
                    E::mma(&mut t[2 * pr], af, bf[0]);
                    E::mma(&mut t[2 * pr + 1], af, bf[1]);
                }
            });
        });
        t
    }

    #[inline(always)]
    fn mma_tile(&self, acc: &mut Acc, t: &Tile, z: u32, z0: u32) {
        let z = self.operand(z);
        unroll!(4, ks => {
            let af = acc_to_a::<E>(&t[2 * ks], &t[2 * ks + 1]);
            unroll!(8, pr => {
                let bf = unsafe { z.b_kn(z0 + ks as u32 * 16, pr as u32 * 16, self.lane) };
                unsafe {
                    E::mma(&mut acc[2 * pr], af, bf[0]);
                    E::mma(&mut acc[2 * pr + 1], af, bf[1]);
                }
            });
        });
    }

    #[inline(always)]
    fn elem(&self, x: u32, r: u32, c: u32) -> u32 {
        self.operand(x).offset(r, c)
    }
}

/// # Safety
/// Launched with `grid(p)`, THREADS threads and `smem_bytes()` bytes of dynamic shared memory
/// after the rows and state kernels, on parameters validated by the host (`applies`).
#[inline(always)]
pub unsafe fn bwd_chunk<E: Elem, G: GateKind>(p: &BwdParams) {
    let tid = thread::thread_idx();
    let (lane, warp) = (tid % 32, tid / 32);
    let normalizer = G::NORMALIZED && p.exact != 0;
    let ops = Products::<E> {
        lane,
        warp,
        dqk: p.dqk,
        dhv: p.dhv,
        _elem: core::marker::PhantomData,
    };

    // Shared memory: Q, K, V, dH, C̃_k, dC̃_{k+1}; the row vectors and column sums.
    let ct = ChunkTerms::at(p, shared::base() + TILES * tile_bytes());
    unsafe {
        ct.stage(normalizer, |x, global, rows, cols, n| {
            stage::rows::<THREADS, { TILE_D / 8 }>(ops.operand(x), global, rows, cols, n)
        })
    };
    let active = warp * 16 < ct.len;
    let own_tile = warp / 4;

    // dq, as each group of operands lands; the column sums of its pair gradients once every
    // warp's are staged; then dv and dk.
    unsafe {
        cp_async::wait::<2>();
        thread::sync_threads();
    }
    let acc = if active {
        ct.dq_inter(&ops, normalizer)
    } else {
        ops.zero_acc()
    };
    unsafe {
        cp_async::wait::<1>();
        thread::sync_threads();
    }
    if active {
        ct.dq_intra::<E, _>(&ops, acc, own_tile);
    }
    unsafe {
        cp_async::wait::<0>();
        thread::sync_threads();
    }
    ct.column_sums(tid);
    if active {
        ct.dv_dk::<E, _>(&ops, own_tile, normalizer);
    }
}
