//! Backward, the chunk gradients on `wgmma` (sm_90a builds; `tfla_params::bwd::chunk_wg`):
//! what `bwd_chunk` computes for one chunk of small heads (same math, notation, outputs and
//! roundings, the gating and row terms shared through `bwd_chunk_terms`), by two warpgroups of
//! 64 rows instead of eight warps of 16.
//!
//! `bwd_chunk`'s warps each multiply their 16 rows by B operands they read whole from shared
//! memory through `ldmatrix`: every B tile is read eight times per product, and the `mma.sync`
//! stream left the kernel latency-bound (an instruction issued in a third of the cycles). Here
//! each product is one `wgmma` per k16 step for a warpgroup's 64 rows, B read by the tensor
//! cores through a descriptor (twice per product, once per warpgroup), asynchronously.
//!
//! The operands are staged whole as in `bwd_chunk` (three `cp.async` groups in the order they
//! are needed), in the 128-byte swizzle (`stage::rows_sw128`: two 64-column panels each).
//! Warpgroup g owns rows 64g .. 64g + 64 of every product, so warp w still owns rows 16w .. of
//! every tile (the accumulators are the warps' `mma.sync` fragments stacked), and its passes
//! are `bwd_chunk`'s:
//! 1. dq: dH·C̃_kᵀ (B = C̃_k K-major), per key tile up to its rows S = Q·Kᵀ and dS = dH·Vᵀ
//!    (m64n64, B K-major), gated into dP, the register A operand of dP·K (K MN-major);
//! 2. dv: K·dC̃_{k+1} (B MN-major), per query tile from its rows Sᵀ = K·Qᵀ gated into Pᵀ,
//!    A of Pᵀ·dH;
//! 3. dk: V·dC̃_{k+1}ᵀ (B K-major), per query tile dSᵀ = V·dHᵀ gated into dPᵀ, A of dPᵀ·Q.
//!
//! Each `wgmma` group is waited for before its registers are read or written again (the two
//! warpgroups' gating overlaps the other's products). After the operands have landed the two
//! warpgroups run their passes without waiting for each other: warpgroup 0 has one key tile
//! in the dq pass and two query tiles each in dv and dk, warpgroup 1 the other way round, and
//! a barrier between the passes held warpgroup 0 for a sixth of the kernel.
use super::bwd_chunk_terms::{ChunkProducts, ChunkTerms};
use super::gates::GateKind;
use super::stage;
use crate::arch::convert::Elem;
use crate::arch::wgmma::{self, Hold, Wgmma, k_major, mn_major};
use crate::arch::{shared, thread};
use crate::tile::acc_to_a;
use tfla_params::bwd::{BwdParams, chunk::slot, chunk_wg::*};

/// n-blocks (8 columns) of a dq, dk or dv accumulator and of a score tile.
const NB: usize = (TILE_D / 8) as usize;
const TB: usize = (TILE / 8) as usize;
/// Bytes between the two 64-column panels of a staged operand (an MN-major descriptor's LBO).
const PANEL: u32 = stage::sw128_panel(CHUNK);
const _: () = assert!(
    NB == 16 && TB == 8 && TILE == 64 && CHUNK == TILE_D,
    "m64n128 accumulators, m64n64 score tiles (4 k16 steps of the products that read them), 8 \
     k16 steps over a head dim; every operand CHUNK rows"
);
/// A warpgroup's 64 rows × TILE_D columns of dq, dk or dv (m64n128 accumulators).
type Acc = [f32; 4 * NB];
/// A warpgroup's 64 rows × TILE columns of a score tile (m64n64).
type Tile = [f32; 4 * TB];
// (From constants: a repeat expression this long becomes a store loop that keeps the array
// out of registers.)
const ZERO_ACC: Acc = [0.0; 4 * NB];
const ZERO_TILE: Tile = [0.0; 4 * TB];

/// The warpgroup's products on the staged operands (swizzled, through descriptors): each
/// `wgmma` group waited for before its registers are read or written again.
struct Products<E> {
    /// The operands' shared base (1024-byte aligned).
    base: u32,
    /// The warpgroup's first row.
    m0: u32,
    /// k16 steps over DQK and over DHV.
    ks: (u32, u32),
    _elem: core::marker::PhantomData<E>,
}

impl<E> Products<E> {
    #[inline(always)]
    fn operand(&self, x: u32) -> u32 {
        self.base + x * tile_bytes()
    }

    /// A K-major descriptor (A, or B stored N × K): rows r0 .. of operand x, k16 step ks of its
    /// head dim.
    #[inline(always)]
    fn kd(&self, x: u32, r0: u32, ks: u32) -> u64 {
        k_major(self.operand(x) + (ks / 4) * PANEL + r0 * 128, ks % 4)
    }

    /// An MN-major B descriptor whose k16 step ks is rows 16·ks .. of operand x, all TILE_D
    /// columns.
    #[inline(always)]
    fn mn(&self, x: u32, ks: u32) -> u64 {
        mn_major(self.operand(x), ks, PANEL)
    }

    /// The warpgroup's rows of `a` times rows n0 .. n0 + TILE of `b`, transposed, over `ks`
    /// k16 steps, into `t` (issued; the caller commits and waits).
    #[inline(always)]
    fn score_tile(&self, t: &mut Tile, a: u32, b: u32, n0: u32, ks: u32)
    where
        E: Wgmma,
    {
        unroll!(8, x => {
            let x = x as u32;
            if x == 0 || x < ks {
                unsafe { E::ss_n64_k(t, self.kd(a, self.m0, x), self.kd(b, n0, x), x > 0) };
            }
        });
    }
}

// Every array a `wgmma` writes is held before the fence: the zeros it starts from, moved in
// after the fence, made ptxas serialize the `wgmma`s.
impl<E: Elem + Wgmma> ChunkProducts for Products<E> {
    type Acc = Acc;
    type Tile = Tile;

    #[inline(always)]
    fn zero_acc(&self) -> Acc {
        ZERO_ACC
    }

    #[inline(always)]
    fn product(&self, acc: &mut Acc, a: u32, b: u32, nk: bool) {
        let ks = slot::head_dim(a, self.ks);
        acc.hold();
        unsafe {
            wgmma::fence();
            unroll!(8, x => {
                let x = x as u32;
                if x == 0 || x < ks {
                    if nk {
                        E::ss_n128_k(acc, self.kd(a, self.m0, x), self.kd(b, 0, x), x > 0);
                    } else {
                        E::ss_n128_mn(acc, self.kd(a, self.m0, x), self.mn(b, x), x > 0);
                    }
                }
            });
            wgmma::commit();
            wgmma::wait_all();
        }
        acc.hold();
    }

    /// S and dS issued together.
    #[inline(always)]
    fn score_pair(&self, j0: u32) -> (Tile, Tile) {
        let (mut sacc, mut dp) = (ZERO_TILE, ZERO_TILE);
        sacc.hold();
        dp.hold();
        unsafe {
            wgmma::fence();
            self.score_tile(&mut sacc, slot::Q, slot::K, j0, self.ks.0);
            self.score_tile(&mut dp, slot::DH, slot::V, j0, self.ks.1);
            wgmma::commit();
            wgmma::wait_all();
        }
        sacc.hold();
        dp.hold();
        (sacc, dp)
    }

    #[inline(always)]
    fn scores(&self, a: u32, b: u32, n0: u32) -> Tile {
        let mut t = ZERO_TILE;
        t.hold();
        unsafe {
            wgmma::fence();
            self.score_tile(&mut t, a, b, n0, slot::head_dim(a, self.ks));
            wgmma::commit();
            wgmma::wait_all();
        }
        t.hold();
        t
    }

    /// T in registers, Z MN-major.
    #[inline(always)]
    fn mma_tile(&self, acc: &mut Acc, t: &Tile, z: u32, z0: u32) {
        let a = [0, 1, 2, 3].map(|x| {
            let f = |nb: usize| [t[4 * nb], t[4 * nb + 1], t[4 * nb + 2], t[4 * nb + 3]];
            acc_to_a::<E>(&f(2 * x), &f(2 * x + 1))
        });
        unsafe {
            wgmma::fence();
            unroll!(4, x => { E::rs_n128_mn(acc, a[x], self.mn(z, z0 / 16 + x as u32)) });
            wgmma::commit();
            wgmma::wait_all();
        }
        acc.hold();
    }

    #[inline(always)]
    fn elem(&self, x: u32, r: u32, c: u32) -> u32 {
        self.operand(x) + stage::sw128(CHUNK, r, c) + 2 * (c % 8)
    }
}

/// # Safety
/// Launched with `grid(p)`, THREADS threads and `smem_bytes()` bytes of dynamic shared memory
/// after the rows and state kernels, on parameters validated by the host (`applies`).
#[inline(always)]
pub unsafe fn bwd_chunk_wg<E: Elem + Wgmma, G: GateKind>(p: &BwdParams) {
    let tid = thread::thread_idx();
    let wg = unsafe { thread::warpgroup() };
    let normalizer = G::NORMALIZED && p.exact != 0;

    // Shared memory: Q, K, V, dH, C̃_k, dC̃_{k+1} (swizzled, 1024-byte aligned); the row
    // vectors and column sums.
    let base = (shared::base() + ALIGN - 1) & !(ALIGN - 1);
    let ops = Products::<E> {
        base,
        m0: 64 * wg,
        ks: (p.dqk.div_ceil(16), p.dhv.div_ceil(16)),
        _elem: core::marker::PhantomData,
    };
    let ct = ChunkTerms::at(p, base + TILES * tile_bytes());
    // Whether any of the warpgroup's rows is a step.
    let wg_live = ops.m0 < ct.len;

    unsafe {
        ct.stage(normalizer, |x, global, rows, cols, n| {
            stage::rows_sw128::<THREADS, { TILE_D / 8 }>(ops.operand(x), global, rows, cols, n)
        })
    };

    unsafe { stage::landed_for_wgmma::<2>() };
    let acc = if wg_live {
        ct.dq_inter(&ops, normalizer)
    } else {
        ZERO_ACC
    };
    // Q, K, V and dC̃_{k+1} (the last two groups) together: after this barrier a warpgroup
    // goes from its dq pass to its dv and dk passes without waiting for the other (warpgroup
    // 0 has one key tile for dq and two query tiles each for dv and dk, warpgroup 1 the other
    // way round; a barrier between the passes held warpgroup 0 for 15% of the kernel's
    // issue cycles, ncu in benches/LOG.md).
    unsafe { stage::landed_for_wgmma::<0>() };
    if wg_live {
        ct.dq_intra::<E, _>(&ops, acc, wg);
        ct.dv_dk::<E, _>(&ops, wg, normalizer);
    }
    // Every warp's partial column sums of the dq pass are staged.
    unsafe { thread::sync_threads() };
    ct.column_sums(tid);
}
