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
use super::bwd_chunk_terms::ChunkTerms;
use super::gates::GateKind;
use super::stage;
use crate::arch::convert::Elem;
use crate::arch::{cp_async, shared, thread};
use crate::tile::{SmemTile, acc_to_a};
use tfla_params::bwd::{BwdParams, chunk::*, combine};
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

/// # Safety
/// Launched with `grid(p)`, THREADS threads and `smem_bytes()` bytes of dynamic shared memory
/// after the rows and state kernels, on parameters validated by the host (`applies`).
#[inline(always)]
pub unsafe fn bwd_chunk<E: Elem, G: GateKind>(p: &BwdParams) {
    let tid = thread::thread_idx();
    let (lane, warp) = (tid % 32, tid / 32);
    let (dqk, dhv) = (p.dqk, p.dhv);
    let normalizer = G::NORMALIZED && p.exact != 0;

    // Shared memory: Q, K, V, dH, C̃_k, dC̃_{k+1}; the row vectors and column sums.
    let operand = |x: u32| SmemTile {
        base: shared::base() + x * tile_bytes(),
        stride: (TILE_D + SMEM_ROW_PAD) * 2,
    };
    let (sq, sk, sv, sdh, sc, sdc) = (
        operand(0),
        operand(1),
        operand(2),
        operand(3),
        operand(4),
        operand(5),
    );
    let ct = ChunkTerms::at(p, shared::base() + TILES * tile_bytes());
    let len = ct.len;
    unsafe {
        ct.stage(normalizer, |x, global, rows, cols, n| {
            stage::rows::<THREADS, { TILE_D / 8 }>(operand(x), global, rows, cols, n)
        })
    };

    let active = warp * 16 < len;

    // acc += A·B over `dim` (a head dim): A the warp's rows of `a`, B stored (n, k) where `nk`,
    // else (k, n); the k-steps a rolled loop. (This and `score_tile` address through an opaque
    // lane: else the compiler keeps the A fragments of one product in registers for the next
    // product with the same rows.)
    let mma_ab = #[inline(always)]
    |acc: &mut Acc, a: SmemTile, b: SmemTile, dim: u32, nk: bool| {
        let lane = thread::opaque(lane);
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
    };
    // The warp's rows of `a` times rows n0.. of `b`, transposed, over `dim`: a score tile.
    let score_tile = #[inline(always)]
    |a: SmemTile, b: SmemTile, n0: u32, dim: u32| -> Tile {
        let lane = thread::opaque(lane);
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
    };
    // dq's two score tiles S = Q·Kᵀ and dS = dH·Vᵀ of key tile j0.., in one rolled loop over
    // the larger head dim (the staged operands are zeros past theirs): twice the independent
    // `mma` per iteration of two separate loops.
    let score_pair = #[inline(always)]
    |j0: u32| -> (Tile, Tile) {
        let lane = thread::opaque(lane);
        let (mut st, mut dt) = ([[0f32; 4]; TB], [[0f32; 4]; TB]);
        thread::rolled_loop(dqk.max(dhv).div_ceil(16), |ks| {
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
    };
    // acc += T·Z: T a gated score tile in registers, Z rows z0.. of `z`.
    let mma_tile = #[inline(always)]
    |acc: &mut Acc, t: &Tile, z: SmemTile, z0: u32| {
        unroll!(4, ks => {
            let af = acc_to_a::<E>(&t[2 * ks], &t[2 * ks + 1]);
            unroll!(8, pr => {
                let bf = unsafe { z.b_kn(z0 + ks as u32 * 16, pr as u32 * 16, lane) };
                unsafe {
                    E::mma(&mut acc[2 * pr], af, bf[0]);
                    E::mma(&mut acc[2 * pr + 1], af, bf[1]);
                }
            });
        });
    };
    // Element pair (r, c) of a staged operand, for the row dots.
    let elem = |x: SmemTile| move |r: u32, c: u32| x.offset(r, c);
    let own_tile = warp / 4;

    // dq̂ = α ρ C̃_k dh + α δ ñ_k + Σ_{j ≤ i} dP_ij k_j (dq = scale·dq̂).
    unsafe {
        cp_async::wait::<2>();
        thread::sync_threads();
    }
    let mut acc = [[0f32; 4]; NB];
    if active {
        mma_ab(&mut acc, sdh, sc, dhv, true);
        ct.scale_dq(&mut acc, normalizer);
    }
    unsafe {
        cp_async::wait::<1>();
        thread::sync_threads();
    }
    if active {
        ct.row_dot::<E, _>(&acc, elem(sq), p.scale, combine::DOT_Q_INTER);
        let rows = ct.query_rows();
        // Key tiles up to the warp's rows (a loop, as the k-steps).
        for jt in 0..=own_tile {
            let (sacc, mut dp) = score_pair(jt * TILE);
            ct.gate_dp(jt, rows, &sacc, &mut dp);
            mma_tile(&mut acc, &dp, sk, jt * TILE);
        }
        ct.store::<E, _>(&acc, p.scale, p.ptr.dq, dqk);
    }
    unsafe {
        cp_async::wait::<0>();
        thread::sync_threads();
    }
    ct.column_sums(tid);

    if active {
        let c_j = ct.key_rows();

        // dv_j = w_j dC̃_{k+1}ᵀ k_j + Σ_{i ≥ j} P_ij dh_i.
        let mut acc = [[0f32; 4]; NB];
        mma_ab(&mut acc, sk, sdc, dqk, false);
        ct.scale_dv(&mut acc);
        for it in own_tile..len.div_ceil(TILE) {
            let mut pt = score_tile(sk, sq, it * TILE, dqk);
            ct.gate_pt(c_j, it * TILE, &mut pt);
            mma_tile(&mut acc, &pt, sdh, it * TILE);
        }
        ct.store::<E, _>(&acc, 1.0, p.ptr.dv, dhv);

        // dk_j = w_j (dC̃_{k+1} v_j + dñ_{k+1}) + scale · Σ_{i ≥ j} dP_ij q_i.
        let mut acc = [[0f32; 4]; NB];
        mma_ab(&mut acc, sv, sdc, dhv, true);
        ct.scale_dk(&mut acc, normalizer);
        ct.row_dot::<E, _>(&acc, elem(sk), p.scale, combine::DOT_K_INTER);
        for it in own_tile..len.div_ceil(TILE) {
            let mut dpt = score_tile(sv, sdh, it * TILE, dhv);
            ct.gate_dpt(c_j, it * TILE, &mut dpt);
            mma_tile(&mut acc, &dpt, sq, it * TILE);
        }
        ct.row_dot::<E, _>(&acc, elem(sk), p.scale, combine::DOT_K);
        ct.store::<E, _>(&acc, p.scale, p.ptr.dk, dqk);
    }
}
