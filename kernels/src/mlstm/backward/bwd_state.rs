//! Backward, state gradients (inter-chunk, reverse): for one head and one TILE_QK × TILE_HV
//! tile of dC̃, walk the chunks from the last to the first and write the gradient of the state
//! after each chunk.
//!
//! With the normalizer as a value column (`shared/MATH.md`, the reference's
//! `chunkwise_backward`), C'_k = [C̃_k | ñ_k] and dnum'_i = [dh_i ρ_i, δ_i]:
//!   dC'_k = γ_k dC'_{k+1} + Σ_i α_i q̂_i dnum'_iᵀ,   γ_k = e^{g + m_k − m_{k+1}},
//! seeded with the final-state gradient (dñ only in Exact mode). The products Q̂ᵀ(dH ⊙ ·) run
//! on the tensor cores exactly as the forward's K̃ᵀV (`chunk_state`): each warp holds 16 rows
//! (DQK) of the tile in registers (a `RegTile`) for the whole walk, Q and dH stream through a
//! `cp.async` ring of SUB_L-step sub-tiles, and the row weights α_i ρ_i (and α_i δ_i for the ñ
//! column, a second weighting of the same Q fragment) are applied in registers.
//!
//! The walk (`state_grads`) is one for both shapes; a [`GradEngine`] holds what differs: the
//! shared memory and how dH is staged, the k-step, and what its registers allow around it
//! (`Narrow` here: 16 × 128 per warp on `mma.sync`, C'_k read into registers before the
//! chunk's weight maxima; `bwd_state_wg::Wg`: m64n256 `wgmma` accumulators at 255 registers,
//! C'_k copied into the staging tile during the previous chunk's items and the thread's
//! coordinates re-read where used).
//!
//! Writes dC̃_{k+1} (input dtype: the dk and dv kernels consume it rounded for their `mma`) and
//! dñ_{k+1} (f32) for every chunk k, dC̃_0, dñ_0 (f32) when asked, and per tile the partial
//! dots the gate gradients need: γ_k ⟨dC'_{k+1}, C'_k⟩ for every chunk, ⟨dC'_0, C'_0⟩ and
//! ⟨dC'_S, C'_S⟩.
use super::block::{self, Add};
use super::bwd_state_walk as walk;
use super::gates::GateKind;
use super::seqs::chunk_range;
use super::stage;
use crate::arch::convert::Elem;
use crate::arch::{cp_async, global, shared, thread};
use crate::tile::{RegTile, SmemTile, a_pos, acc_pos, leads_quad};
use tfla_params::bwd::state::{MAX_TILES, dots_per_head, final_dot, init_dot};
use tfla_params::bwd::{BwdParams, rows, state};
use tfla_params::fwd::SMEM_ROW_PAD;

/// One staged sub-tile as a warp's k-step reads it: Q (`q`, padded rows), dH (`dh`, as the
/// engine stages it) and the steps' weights (`w`: α ρ, then α δ, f32), the chunk's product
/// scales, whether the ñ column rides along, and the thread's lane and warp.
#[derive(Clone, Copy)]
pub struct GradSubTile<Dh> {
    pub q: SmemTile,
    pub dh: Dh,
    pub w: u32,
    pub scale_c: f32,
    pub scale_n: f32,
    pub with_n: bool,
    pub lane: u32,
    pub warp: u32,
}

/// What a state-gradient shape adds to the walk: the block's tile and pipeline, shared memory,
/// how dH is staged, the thread's coordinates, the k-step, and whether its tile leaves
/// registers to spare.
pub trait GradEngine<E: Elem, const NB: usize> {
    /// The block's tile of dC̃ (DQK rows, DHV columns).
    const TILE: (u32, u32);
    /// Steps per staged sub-tile, stages of the ring and items in flight ahead (1 or 2).
    const SUB_L: u32;
    const STAGES: u32;
    const AHEAD: u32;
    /// With registers to spare, the walk reads each chunk's C'_k into registers before the
    /// chunk's weight maxima (hiding their latency) and keeps the final-state dot to the end;
    /// without, C'_k comes through the staging tile (copied during the previous chunk's
    /// items) and the final-state dot is stored at once.
    const SPARE_REGISTERS: bool;
    /// A stage's dH sub-tile, as the k-step reads it.
    type Dh: Copy;

    /// Stage `st`: the Q sub-tile, the dH sub-tile, the sub-tile's weights.
    fn stage(st: u32) -> (SmemTile, Self::Dh, u32);
    /// One f32 per warp for block reductions, and the tile dC̃ is staged in for its store.
    fn scratch() -> u32;
    fn staging() -> SmemTile;
    /// This thread's element 0 of n-block 0 in the block's tile (row, column).
    fn local() -> (u32, u32);

    /// Starts the copies of steps `steps` of the head's dH at `gdh` (columns from v0 of dhv)
    /// into a stage's dH sub-tile (the walk commits the group).
    ///
    /// # Safety
    /// The stage is not being read.
    unsafe fn stage_dh(dh: Self::Dh, gdh: u64, steps: (u32, u32), cols: (u32, u32));
    /// One pipeline step: issue `next` (or an empty group), wait for the current item.
    ///
    /// # Safety
    /// As `stage::advance_by`.
    unsafe fn advance(next: Option<u32>, issue: impl Fn(u32));
    /// Adds the sub-tile's Q̂ᵀ(dH ⊙ α ρ), scaled, to the warp's tile, and (`with_n`) Q̂ᵀ(α δ)
    /// to dñ of its 16 rows (`nacc`, elements 0 and 2).
    ///
    /// # Safety
    /// The stage has landed and every thread sees it.
    unsafe fn multiply(acc: &mut RegTile<1, NB>, nacc: &mut [f32; 4], t: GradSubTile<Self::Dh>);
}

/// The state-gradient walk of one block (module docs), on engine `X` with THREADS threads;
/// QK_VECS and HV_VECS are the 16-byte vectors of a row of the tile's Q and dH.
///
/// # Safety
/// Launched on the engine's grid with THREADS threads and its shared memory, after the rows
/// kernel, on parameters validated by the host.
#[inline(always)]
pub unsafe fn state_grads<
    E,
    G,
    X,
    const NB: usize,
    const THREADS: u32,
    const QK_VECS: u32,
    const HV_VECS: u32,
>(
    p: &BwdParams,
) where
    E: Elem,
    G: GateKind,
    X: GradEngine<E, NB>,
{
    let tid = thread::thread_idx();
    let (lane, warp) = (tid % 32, tid / 32);
    let (tile_qk, tile_hv) = X::TILE;
    let tiles_hv = p.dhv.div_ceil(tile_hv);
    // The block's tile corner (d0, v0), and the state head of its initial and final states and
    // their gradients (B = 1 when packed), from its index.
    let place = |(bx, bh, seq): (u32, u32, u32)| {
        let corner = ((bx / tiles_hv) * tile_qk, (bx % tiles_hv) * tile_hv);
        (corner, seq as u64 * p.bh as u64 + bh as u64)
    };
    let (bx, bh, seq) = thread::block_idx();
    let ((d0, v0), sh) = place((bx, bh, seq));
    let (l, nc, s) = (p.chunk, p.num_chunks, p.s);
    let (dqk, dhv) = (p.dqk, p.dhv);
    let (scratch, staging) = (X::scratch(), X::staging());

    let head = bh as u64;
    let gq = p.ptr.q + head * (s as u64) * (dqk as u64) * 2;
    let gdh = p.ptr.dh + head * (s as u64) * (dhv as u64) * 2;
    let padded = (nc * l) as u64;
    let coef =
        |plane: u32| p.ptr.row_coef + (plane as u64 * p.bh as u64 * padded + head * padded) * 4;
    let (g_wq, g_wn) = (coef(rows::WQ), coef(rows::WN));

    // The state row of this thread's accumulator element 2·half, and its element 0 (row, column
    // in the state), from the engine's coordinates once per use: the per-element addresses are
    // redone there instead of kept live across the walk.
    let row_at = |d0: u32, half: usize| d0 + X::local().0 + 8 * half as u32;
    let origin_at = |(d0, v0): (u32, u32)| {
        let (r, c) = X::local();
        (d0 + r, v0 + c)
    };
    let row = |half: usize| row_at(d0, half);
    let origin = || origin_at((d0, v0));
    // Element offset of accumulator pair (nb, e) in a (DQK, DHV) matrix, and whether it exists.
    let at = |(r0, c0): (u32, u32), nb: usize, e: usize| {
        let (r, c) = (r0 + (e as u32 / 2) * 8, c0 + nb as u32 * 8);
        ((r * dhv + c) as u64, r < dqk && c < dhv)
    };
    // This block's chunks [k_lo, k_hi) (all, or one sequence's: `super::seqs`).
    let (k_lo, k_hi) = unsafe { chunk_range(p.ptr.seq_chunks, nc, seq) };
    let mat = sh * (dqk as u64) * (dhv as u64);
    // This tile's entry of chunk 0 in the (BH, dots_per_head, MAX_TILES) state dots.
    let dots = p.ptr.state_dots
        + ((head * dots_per_head(nc, p.seqs) as u64) * MAX_TILES as u64 + bx as u64) * 4;
    let per_chunk = MAX_TILES as u64 * 4;
    let vec = sh * dqk as u64;

    // ñ rides along as a value column of ones in the blocks of the first DHV tile (as in the
    // forward): `nacc` holds dñ of the warp's rows g and g+8 in elements 0 and 2.
    let normalizer = G::NORMALIZED && p.exact != 0;
    let with_n = normalizer && v0 == 0;
    let mut acc = RegTile::<1, NB>::ZERO;
    let mut nacc = [0f32; 4];
    let mut dot_final = 0f32;
    if p.ptr.dc_final != 0 {
        let o = origin();
        unroll!(32, nb => {
            if nb < NB {
                for half in 0..2 {
                    let e = 2 * half;
                    let (idx, inside) = at(o, nb, e);
                    let x = unsafe { global::ld_v2_f32_or_zero(inside, p.ptr.dc_final + (mat + idx) * 4) };
                    let c = unsafe { global::ld_v2_f32_or_zero(inside, p.ptr.c_final + (mat + idx) * 4) };
                    acc.0[0][nb][e] = x[0];
                    acc.0[0][nb][e + 1] = x[1];
                    dot_final += x[0] * c[0] + x[1] * c[1];
                }
            }
        });
    }
    if with_n && p.ptr.dn_final != 0 {
        unsafe { walk::seed_n(p, row, vec, lane, &mut nacc, &mut dot_final) };
    }
    // (Stored at once where the registers are all taken: not kept across the walk.)
    let dot_final = unsafe { block::reduce::<Add, THREADS>(dot_final, scratch) };
    if !X::SPARE_REGISTERS && tid == 0 {
        unsafe { global::st_f32(dots + final_dot(nc, seq) as u64 * per_chunk, dot_final) };
    }

    // Items are SUB_L-step sub-tiles, walked from the last; chunk boundaries are multiples of
    // SUB_L, so item `it` lies in chunk it·SUB_L / L.
    let sub_l = X::SUB_L;
    let (item_lo, n_items) = (
        k_lo * (l / sub_l),
        (k_hi * (l / sub_l)).min(s.div_ceil(sub_l)),
    );
    let issue = |it: u32| unsafe {
        let ((sq, sdh, sw), j0) = (X::stage(it % X::STAGES), it * sub_l);
        stage::rows::<THREADS, QK_VECS>(sq, gq, (j0, s), (d0, dqk), sub_l);
        X::stage_dh(sdh, gdh, (j0, s), (v0, dhv));
        stage::f32_vec::<THREADS>(sw, g_wq, (j0, s), sub_l);
        stage::f32_vec::<THREADS>(sw + 4 * sub_l, g_wn, (j0, s), sub_l);
        cp_async::commit();
    };
    // Without spare registers, C'_k reaches the dot through the staging tile: its copies are
    // issued with the previous chunk's items (the first chunk's with the first item), so the
    // chunk boundary reads it from shared memory instead of waiting on 64 loads per thread
    // from memory. (A'_k of the initial state's chunk reads C'_0 as given instead.)
    let stage_c = |k: u32| unsafe {
        if !X::SPARE_REGISTERS && !(k == k_lo && p.ptr.c0 != 0) {
            let hk = head * nc as u64 + k as u64;
            let c = p.ptr.c_states + hk * (dqk as u64) * (dhv as u64) * 2;
            stage::rows::<THREADS, HV_VECS>(staging, c, (d0, dqk), (v0, dhv), tile_qk);
        }
    };
    // AHEAD items ahead, walking down.
    stage_c(k_hi - 1);
    issue(n_items - 1);
    if X::AHEAD == 2 {
        if n_items >= item_lo + 2 {
            issue(n_items - 2);
        } else {
            unsafe { cp_async::commit() };
        }
    }

    let mut k = k_hi;
    while k > k_lo {
        k -= 1;
        let hk = head * nc as u64 + k as u64;
        // Store dC'_{k+1}, through the staging tile (`stage::store_rows`: whole sectors): with
        // spare registers first, else after the dot has read C'_k from that tile.
        let store = || unsafe {
            walk::store_dc::<NB, THREADS, HV_VECS>(
                p,
                staging,
                hk,
                (d0, v0),
                X::local(),
                tile_qk,
                |nb, half| {
                    let [x0, x1] = acc.pair(0, nb, half);
                    E::pack(x0, x1)
                },
            );
            if with_n && leads_quad(lane) {
                walk::store_dn(p, row, hk, &nacc);
            }
        };
        if X::SPARE_REGISTERS {
            store();
        }

        // The chunk's reads from memory before its products (γ_k's gate scalars, ñ_k and, with
        // spare registers, C'_k for A_k, the largest row weights) are issued before any of them
        // is used: one round trip per chunk on the walk's critical path instead of three.
        let (g, m_k, cm_last) = unsafe { walk::gate_scalars::<G>(p, head, k) };
        // C'_0 as given (f32), not rounded to the input dtype as the chunk states are, is read
        // in its own loop below. (Branches around whole loops: one inside made the kernel 1.7×
        // slower.)
        let from_c0 = k == k_lo && p.ptr.c0 != 0;
        let c_states = |idx: u64| p.ptr.c_states + (hk * (dqk as u64) * (dhv as u64) + idx) * 2;
        let n_states = |r: u32| p.ptr.n_states + (hk * dqk as u64 + r as u64) * 4;
        let mut c_k = [[0u32; 2]; NB];
        let mut n_k = [0f32; 2];
        if X::SPARE_REGISTERS && !from_c0 {
            let o = origin();
            unroll!(32, nb => {
                if nb < NB {
                    // (Indexed: the iterator form clippy suggests costs 56 more predicate
                    // computations in the SASS.)
                    #[allow(clippy::needless_range_loop)]
                    for half in 0..2 {
                        let (idx, inside) = at(o, nb, 2 * half);
                        let x = unsafe { global::ld_nc_f32_or_zero(inside, c_states(idx)) };
                        c_k[nb][half] = x.to_bits();
                    }
                }
            });
        }
        if with_n && leads_quad(lane) {
            for (half, n) in n_k.iter_mut().enumerate() {
                let r = row(half);
                *n = unsafe { global::ld_nc_f32_or_zero(r < dqk, n_states(r)) };
            }
        }
        let rows = (k * l, l.min(s - k * l));
        let w_max = unsafe { walk::weight_max::<THREADS>((g_wq, g_wn), rows, tid) };
        let decay = walk::decay::<G>(g, m_k, cm_last);
        // A_k = γ_k ⟨dC'_{k+1}, C'_k⟩, this tile's part (the forget gates' share through the
        // decay of the state into the next chunk).
        let mut dot = 0f32;
        if from_c0 {
            // (The state head from the block index here and after the walk, not kept across
            // it: beside the `wgmma` tile the driver's compiler spilled it.)
            let (_, sh) = place(thread::block_idx_here());
            let mat = sh * (dqk as u64) * (dhv as u64);
            let o = origin();
            unroll!(32, nb => {
                if nb < NB {
                    for half in 0..2 {
                        let e = 2 * half;
                        let (idx, inside) = at(o, nb, e);
                        let x = unsafe { global::ld_v2_f32_or_zero(inside, p.ptr.c0 + (mat + idx) * 4) };
                        dot += acc.0[0][nb][e] * x[0] + acc.0[0][nb][e + 1] * x[1];
                    }
                }
            });
        } else if X::SPARE_REGISTERS {
            unroll!(32, nb => {
                if nb < NB {
                    #[allow(clippy::needless_range_loop)]
                    for half in 0..2 {
                        let e = 2 * half;
                        let (x0, x1) = E::unpack(c_k[nb][half]);
                        dot += acc.0[0][nb][e] * x0 + acc.0[0][nb][e + 1] * x1;
                    }
                }
            });
        } else {
            // C'_k in the staging tile (zeros outside the state), at the places this thread's
            // pairs of dC'_{k+1} are stored from: its copies have landed once every group has.
            unsafe {
                cp_async::wait::<0>();
                thread::sync_threads();
            }
            let (r0, c0) = X::local();
            unroll!(32, nb => {
                if nb < NB {
                    for half in 0..2 {
                        let e = 2 * half;
                        let at = staging.offset(r0 + half as u32 * 8, c0 + nb as u32 * 8);
                        let (x0, x1) = E::unpack(unsafe { shared::ld_u32(at) });
                        dot += acc.0[0][nb][e] * x0 + acc.0[0][nb][e + 1] * x1;
                    }
                }
            });
        }
        if with_n && leads_quad(lane) {
            for half in 0..2 {
                dot += nacc[2 * half] * n_k[half];
            }
        }
        if !X::SPARE_REGISTERS {
            // Every thread has read the staging tile before dC'_{k+1} goes there.
            unsafe { thread::sync_threads() };
            store();
        }
        // (The reduction's barriers also order the store's reads of the staging tile before
        // the copies of C'_{k−1}, which land with this chunk's items.)
        let dot = unsafe { block::reduce::<Add, THREADS>(dot, scratch) };
        if tid == 0 {
            unsafe { global::st_f32(dots + k as u64 * per_chunk, decay * dot) };
        }
        if k > k_lo {
            stage_c(k - 1);
        }

        let (wc, wn) = unsafe { walk::weight_scales::<THREADS>(w_max, decay, scratch) };
        let (scale_c, scale_n) = (p.scale / wc, p.scale / wn);
        acc.scale(decay / wc);
        for x in nacc.iter_mut() {
            *x *= decay / wn;
        }

        let first_item = k * (l / sub_l);
        let mut it = (first_item + l / sub_l).min(n_items);
        while it > first_item {
            it -= 1;
            let next = (it >= item_lo + X::AHEAD).then(|| it - X::AHEAD);
            unsafe { X::advance(next, issue) };
            let (sq, sdh, sw) = X::stage(it % X::STAGES);
            let t = GradSubTile {
                q: sq,
                dh: sdh,
                w: sw,
                scale_c,
                scale_n,
                with_n,
                lane,
                warp,
            };
            unsafe { X::multiply(&mut acc, &mut nacc, t) };
            unsafe { thread::sync_threads() };
        }
        acc.scale(wc);
        for x in nacc.iter_mut() {
            *x *= wn;
        }
    }

    // dC'_0: the initial-state gradient, and its dot with the initial state; the block's place
    // again from its index.
    let ((d0, v0), sh) = place(thread::block_idx_here());
    let (mat, vec) = (sh * (dqk as u64) * (dhv as u64), sh * dqk as u64);
    let row = |half: usize| row_at(d0, half);
    let mut dot_init = 0f32;
    let o = origin_at((d0, v0));
    unroll!(32, nb => {
        if nb < NB {
            for half in 0..2 {
                let e = 2 * half;
                let (idx, inside) = at(o, nb, e);
                let v = acc.pair(0, nb, half);
                if p.ptr.dc0 != 0 {
                    unsafe { global::st_v2_f32_if(inside, p.ptr.dc0 + (mat + idx) * 4, v) };
                }
                if p.ptr.c0 != 0 {
                    let c = unsafe { global::ld_v2_f32_or_zero(inside, p.ptr.c0 + (mat + idx) * 4) };
                    dot_init += v[0] * c[0] + v[1] * c[1];
                }
            }
        }
    });
    if v0 == 0 && leads_quad(lane) {
        unsafe { walk::initial_n(p, row, vec, &nacc, &mut dot_init) };
    }
    let dot_init = unsafe { block::reduce::<Add, THREADS>(dot_init, scratch) };
    if tid == 0 {
        unsafe {
            global::st_f32(dots + init_dot(nc, seq) as u64 * per_chunk, dot_init);
            if X::SPARE_REGISTERS {
                global::st_f32(dots + final_dot(nc, seq) as u64 * per_chunk, dot_final);
            }
        }
    }
}

/// The `mma.sync` shape (`tfla_params::bwd::state`): each warp holds 16 rows × 128 columns
/// (16 n-blocks), one item ahead, C'_k prefetched.
pub struct Narrow;

const NB: usize = (state::TILE_HV / 8) as usize;
const _: () = assert!(
    NB == 16 && state::SUB_L == 64,
    "the unroll! counts below assume 16 n-blocks and 64-step sub-tiles"
);

impl<E: Elem> GradEngine<E, NB> for Narrow {
    const TILE: (u32, u32) = (state::TILE_QK, state::TILE_HV);
    const SUB_L: u32 = state::SUB_L;
    const STAGES: u32 = state::STAGES;
    const AHEAD: u32 = 1;
    const SPARE_REGISTERS: bool = true;
    type Dh = SmemTile;

    // Shared memory: STAGES × (Q sub-tile, dH sub-tile, the sub-tile's α ρ and α δ), scratch,
    // the staging tile of dC̃ (TILE_QK × TILE_HV).
    #[inline(always)]
    fn stage(st: u32) -> (SmemTile, SmemTile, u32) {
        use state::*;
        let q = SmemTile {
            base: shared::base() + st * stage_bytes(),
            stride: (TILE_QK + SMEM_ROW_PAD) * 2,
        };
        let dh = SmemTile {
            base: q.base + q_bytes(),
            stride: (TILE_HV + SMEM_ROW_PAD) * 2,
        };
        (q, dh, dh.base + dh_bytes())
    }
    #[inline(always)]
    fn scratch() -> u32 {
        shared::base() + state::STAGES * state::stage_bytes()
    }
    #[inline(always)]
    fn staging() -> SmemTile {
        SmemTile {
            base: <Self as GradEngine<E, NB>>::scratch() + state::WARPS * 4,
            stride: (state::TILE_HV + SMEM_ROW_PAD) * 2,
        }
    }
    #[inline(always)]
    fn local() -> (u32, u32) {
        // Through `opaque`: redone where used (the driver's compiler spilled 32 kept 64-bit
        // addresses).
        let tid = thread::thread_idx();
        let (lane, warp) = (thread::opaque(tid % 32), tid / 32);
        (warp * 16 + acc_pos(lane, 0).0, acc_pos(lane, 0).1)
    }

    #[inline(always)]
    unsafe fn stage_dh(dh: SmemTile, gdh: u64, steps: (u32, u32), cols: (u32, u32)) {
        use state::*;
        unsafe { stage::rows::<THREADS, { TILE_HV / 8 }>(dh, gdh, steps, cols, SUB_L) }
    }
    #[inline(always)]
    unsafe fn advance(next: Option<u32>, issue: impl Fn(u32)) {
        unsafe { stage::advance(next, issue) }
    }

    #[inline(always)]
    unsafe fn multiply(acc: &mut RegTile<1, NB>, nacc: &mut [f32; 4], t: GradSubTile<SmemTile>) {
        let (sq, sdh, sw, lane, warp) = (t.q, t.dh, t.w, t.lane, t.warp);
        let ones = [E::pack(1.0, 1.0); 2];
        unroll!(4, ks => {
            let ks = ks as u32;
            let jj = ks * 16 + a_pos(lane, 0).1;
            let q = unsafe { sq.a_trans(ks * 16, warp * 16, lane) };
            let a = unsafe { walk::weighted::<E>(q, sw, jj, t.scale_c) };
            unroll!(8, pair => {
                let b = unsafe { sdh.b_kn(ks * 16, pair as u32 * 16, lane) };
                unsafe {
                    E::mma(&mut acc.0[0][2 * pair], a, b[0]);
                    E::mma(&mut acc.0[0][2 * pair + 1], a, b[1]);
                }
            });
            if t.with_n {
                let an = unsafe { walk::weighted::<E>(q, sw + 4 * state::SUB_L, jj, t.scale_n) };
                unsafe { E::mma(nacc, an, ones) };
            }
        });
    }
}

/// # Safety
/// Launched with `state::grid(p)`, `state::THREADS` threads and `state::smem_bytes()` bytes of
/// dynamic shared memory after the rows kernel, on parameters validated by the host.
#[inline(always)]
pub unsafe fn bwd_state<E: Elem, G: GateKind>(p: &BwdParams) {
    use state::*;
    unsafe { state_grads::<E, G, Narrow, NB, THREADS, { TILE_QK / 8 }, { TILE_HV / 8 }>(p) }
}
