//! Chunk states (forward, inter-chunk): for one head and one TILE_QK × TILE_HV tile of its
//! state, walk the chunks in order and write the state before each chunk.
//!
//! Notation: BH = B·NH heads, S steps, L chunk size, NC = ceil(S/L) chunks, DQK × DHV state.
//! Inside chunk k (steps kL … kL+len−1, local index j), λ_j = logσ(f̃_j), ι_j the log input gate,
//! b_j = Σ_{s≤j} λ_s, g = b_{len−1}, a_j = g − b_j + ι_j = g + u_j (chunk_gates wrote b, u, the
//! running max cm of u, and g):
//!   m_{k+1} = max(g + m_k, g + cm_{len−1})                 (m ≡ 0 without the stabilizer)
//!   C̃_{k+1} = e^{g + m_k − m_{k+1}} C̃_k + Σ_j e^{a_j − m_{k+1}} k_j v_jᵀ   (K̃ᵀV on tensor cores)
//!   ñ_{k+1} = e^{g + m_k − m_{k+1}} ñ_k + Σ_j e^{a_j − m_{k+1}} k_j
//! Each warp holds its part of the block's state tile in registers (a `RegTile`) across the
//! whole walk; K and V are staged in SUB_L-step sub-tiles with `cp.async`, one or two items ahead
//! (the next sub-tiles load while this one multiplies; a chunk's first sub-tile loads during its
//! gate math); the gate weights e^{a_j − m} are applied to the K fragments in registers.
//!
//! The walk (`chunk_states`) is one for every shape; a [`StateEngine`] holds what differs: the
//! warps' tiles, the shared memory and how V is staged, and the multiply of one staged sub-tile
//! into the register tile. `Narrow` (here: 16 rows × 128 columns per warp, `mma.sync`),
//! `chunk_state_wide::Wide` (64 × 64 per warp) and `chunk_state_wg::Wg` (`wgmma`, m64n256 per
//! warpgroup).
//!
//! C̃_k is stored in the input dtype: the chunk-output kernel rounds it to that dtype for its
//! `mma` anyway, so storing it rounded changes no result and halves the bytes materialized.
//! The final state is stored in f32.
//!
//! In a packed variable-length batch (`super::seqs`) each block walks the chunks of one
//! sequence (grid z), from that sequence's initial state to its final state.
//!
//! Initial and final states live at the head's state head (`super::slots`: itself, or its
//! batch row's slot of a state pool), possibly the same memory. Each thread reads its C̃0
//! elements before the walk and writes the same elements of C̃_final after it; ñ_0 and m_0
//! come from the chunk states at chunk 0 (chunk_gates copied them there), which this kernel
//! does not rewrite. So no block reads what another block of the head writes.
use super::gates::GateKind;
use super::slots::state_head;
use super::stage;
use super::state_walk::{self, StateSmem, Walk};
use crate::arch::convert::Elem;
use crate::arch::{cp_async, thread};
use crate::tile::{RegTile, SmemTile, acc_pos, load_tile, stage_tile, store_tile};
use tfla_params::fwd::{FwdParams, state};

/// One staged sub-tile as a warp's k-step reads it: K̃ (`k`, padded rows), V (`v`, as the
/// engine stages it) and the steps' u (`u`, f32), with the chunk's log w0 (step j's weight is
/// e^{log w0 + u_j}), whether ñ rides along, and the thread's lane and warp.
#[derive(Clone, Copy)]
pub struct SubTile<V> {
    pub k: SmemTile,
    pub v: V,
    pub u: u32,
    pub log_w0: f32,
    pub with_n: bool,
    pub lane: u32,
    pub warp: u32,
}

/// What a chunk-state shape adds to the walk: the block's state tile and pipeline, where each
/// warp's `RegTile<MT, NB>` lies in the tile, the shared memory, how V is staged, and the
/// k-step.
pub trait StateEngine<E: Elem, const MT: usize, const NB: usize> {
    /// The block's state tile (DQK rows, DHV columns): the grid of its `StateTiles`.
    const TILE: (u32, u32);
    /// Steps per staged sub-tile, and sub-tiles in flight ahead of the one multiplied (1 or 2).
    const SUB_L: u32;
    const AHEAD: u32;
    /// Stages of the ring (AHEAD + 1 or more).
    const STAGES: u32;
    /// A stage's V sub-tile, as the k-step reads it.
    type V: Copy;

    /// Row and column of warp `warp`'s tile within the block's tile.
    fn warp_origin(warp: u32) -> (u32, u32);
    /// Stage `st`: the K sub-tile, the V sub-tile, the sub-tile's u (f32).
    fn stage(st: u32) -> (SmemTile, Self::V, u32);
    /// The tile C̃_k is staged in for its store.
    fn staging() -> SmemTile;

    /// Starts the copies of steps `steps` of the head's V at `gv` (columns from v0 of dhv) into
    /// a stage's V sub-tile (the walk commits the group).
    ///
    /// # Safety
    /// The stage is not being read.
    unsafe fn stage_v(v: Self::V, gv: u64, steps: (u32, u32), cols: (u32, u32));
    /// One pipeline step: issue `next` (or an empty group), wait for the current item.
    ///
    /// # Safety
    /// As `stage::advance_by`.
    unsafe fn advance(next: Option<u32>, issue: impl Fn(u32));
    /// Adds the sub-tile's K̃ᵀV, K̃ weighted, to the warp's tile, and (`with_n`) its K̃ᵀ1 to ñ of
    /// the warp's 16 rows 16·warp.. (`nacc`, elements 0 and 2).
    ///
    /// # Safety
    /// The stage has landed and every thread sees it.
    unsafe fn multiply(acc: &mut RegTile<MT, NB>, nacc: &mut [f32; 4], t: SubTile<Self::V>);
}

/// The chunk-state walk of one block (module docs), on engine `X` with THREADS threads; QK_VECS
/// and HV_VECS are the 16-byte vectors of a row of the tile's K and V (`X::TILE` / 8: const
/// arguments of the staging copies, which a trait's constants cannot be).
///
/// # Safety
/// Launched on the grid of `X::TILE`'s `StateTiles`, with THREADS threads and the engine's
/// shared memory, on parameters validated by the host (shapes, alignment, chunk size).
#[inline(always)]
pub unsafe fn chunk_states<
    E,
    G,
    X,
    const MT: usize,
    const NB: usize,
    const THREADS: u32,
    const QK_VECS: u32,
    const HV_VECS: u32,
>(
    p: &FwdParams,
) where
    E: Elem,
    G: GateKind,
    X: StateEngine<E, MT, NB>,
{
    let tid = thread::thread_idx();
    let (lane, warp) = (tid % 32, tid / 32);
    // This block's tile and chunks [k_lo, k_hi]: all of them, or one sequence's.
    let Walk {
        bx,
        bh,
        seq,
        d0,
        v0,
        k_lo,
        k_hi,
    } = unsafe { state_walk::walk(p, X::TILE) };
    let (l, nc, s) = (p.chunk, p.num_chunks, p.s);
    let (dqk, dhv) = (p.dqk, p.dhv);

    // Global bases of this head (bytes).
    let head = bh as u64;
    let gk = p.ptr.k + head * (s as u64) * (dqk as u64) * 2;
    let gv = p.ptr.v + head * (s as u64) * (dhv as u64) * 2;
    let g_u = p.ptr.gate_u + head * ((nc * l) as u64) * 4; // (BH, NC·L) rows

    // This thread's element 0 of its tile within the block's tile; in the state, through
    // `thread::opaque` at each use, so that per-element addresses are redone there rather than
    // kept live across the walk.
    let (wr, wc) = X::warp_origin(warp);
    let (r_in, c_in) = (wr + acc_pos(lane, 0).0, wc + acc_pos(lane, 0).1);
    let origin = || (thread::opaque(d0 + r_in), thread::opaque(v0 + c_in));

    // Initial state (coherent loads: with a state pool, C̃_final below overwrites them).
    let sh = unsafe { state_head(p, bh, seq) };
    let mut acc = RegTile::<MT, NB>::ZERO;
    if p.ptr.c0 != 0 {
        let base = p.ptr.c0 + sh * (dqk as u64) * (dhv as u64) * 4;
        unsafe { load_tile(&mut acc, base, origin(), (dqk, dhv)) };
    }
    // ñ rides along as a value column of ones, in the blocks of the first DHV tile: `nacc` is
    // one more n-block whose 8 columns all hold ñ of the state rows 16·warp + g and + 8 (g =
    // lane / 4), in elements 0 and 2.
    let with_n = G::NORMALIZED && v0 == 0;
    let n_rows = |half: u32| d0 + warp * 16 + acc_pos(lane, 0).0 + 8 * half;
    let (mut nacc, mut m) =
        unsafe { state_walk::initial_n_m::<G>(p, head, k_lo, |h| n_rows(h as u32), with_n) };

    // Sub-tiles are items of one pipeline over the whole walk (`state_walk::items`).
    let (item_lo, n_items) = state_walk::items(p, (k_lo, k_hi), X::SUB_L);
    let issue = |it: u32| unsafe {
        let ((sk, sv, su), j0) = (X::stage(it % X::STAGES), it * X::SUB_L);
        stage::rows::<THREADS, QK_VECS>(sk, gk, (j0, s), (d0, dqk), X::SUB_L);
        X::stage_v(sv, gv, (j0, s), (v0, dhv));
        stage::f32_vec::<THREADS>(su, g_u, (j0, s), X::SUB_L);
        cp_async::commit();
    };
    if X::AHEAD == 2 {
        unsafe { state_walk::prime_two(issue, item_lo, n_items) };
    } else {
        issue(item_lo);
    }
    // Chunk k's gate scalars, loaded one chunk ahead.
    let gate_scalars = |k: u32| unsafe { state_walk::gate_scalars::<G>(p, head, k) };
    let (mut g, mut umax) = gate_scalars(k_lo);

    for k in k_lo..=k_hi {
        // Store the state before chunk k (k = k_hi: the final state).
        let (c_out, n_out, m_out) = state_walk::outputs(p, head, sh, k, k_hi);
        if k < k_hi || p.ptr.c_final != 0 {
            if k < k_hi {
                // C̃_k through the staging tile (`stage::store_rows`: whole sectors per store;
                // the staging tile is next written after the walk's next barrier).
                let staged = X::staging();
                unsafe {
                    stage_tile::<E, MT, NB>(&acc, staged, (thread::opaque(r_in), c_in));
                    thread::sync_threads();
                    stage::store_rows::<THREADS, HV_VECS>(
                        staged,
                        c_out,
                        (d0, dqk),
                        (v0, dhv),
                        X::TILE.0,
                    );
                }
            } else {
                unsafe { store_tile(&acc, c_out, origin(), (dqk, dhv)) };
            }
            unsafe {
                state_walk::store_n_m::<G>(
                    p,
                    (k, k_lo, k_hi),
                    (n_out, m_out),
                    ([n_rows(0), n_rows(1)], &nacc),
                    m,
                    with_n,
                    (v0 == 0, lane),
                    bx == 0 && tid == 0,
                )
            };
        }
        if k == k_hi {
            break;
        }
        let next = if k + 1 < k_hi {
            gate_scalars(k + 1)
        } else {
            (0.0, 0.0)
        };

        // Chunk k: advance the max state, decay the state, add the chunk's K̃ᵀV.
        let (m_next, decay, log_w0) = state_walk::max_step::<G>((g, umax), m);
        m = m_next;
        acc.scale(decay);
        for x in nacc.iter_mut() {
            *x *= decay;
        }
        let first = k * (l / X::SUB_L);
        for it in first..(first + l / X::SUB_L).min(n_items) {
            let ahead = it + X::AHEAD;
            unsafe { X::advance((ahead < n_items).then_some(ahead), issue) };
            let (sk, sv, su) = X::stage(it % X::STAGES);
            let t = SubTile {
                k: sk,
                v: sv,
                u: su,
                log_w0,
                with_n,
                lane,
                warp,
            };
            unsafe { X::multiply(&mut acc, &mut nacc, t) };
            unsafe { thread::sync_threads() };
        }
        (g, umax) = next;
    }
}

/// The narrow shape (`tfla_params::fwd::state`): each warp holds 16 rows × all TILE_HV = 128
/// columns of the tile (16 n-blocks), one item ahead.
pub struct Narrow;

const NB: usize = (state::TILE_HV / 8) as usize;
const _: () = assert!(
    NB == 16 && state::SUB_L == 64,
    "the unroll! counts below assume 16 n-blocks and 64-step sub-tiles"
);

impl<E: Elem> StateEngine<E, 1, NB> for Narrow {
    const TILE: (u32, u32) = (state::TILE_QK, state::TILE_HV);
    const SUB_L: u32 = state::SUB_L;
    const AHEAD: u32 = 1;
    const STAGES: u32 = state::STAGES;
    type V = SmemTile;

    #[inline(always)]
    fn warp_origin(warp: u32) -> (u32, u32) {
        (warp * 16, 0)
    }
    #[inline(always)]
    fn stage(st: u32) -> (SmemTile, SmemTile, u32) {
        let smem = StateSmem(state::TILES);
        (smem.k(st), smem.v(st), smem.u(st))
    }
    #[inline(always)]
    fn staging() -> SmemTile {
        StateSmem(state::TILES).staging()
    }

    #[inline(always)]
    unsafe fn stage_v(v: SmemTile, gv: u64, steps: (u32, u32), cols: (u32, u32)) {
        use state::*;
        unsafe { stage::rows::<THREADS, { TILE_HV / 8 }>(v, gv, steps, cols, SUB_L) }
    }
    #[inline(always)]
    unsafe fn advance(next: Option<u32>, issue: impl Fn(u32)) {
        unsafe { stage::advance(next, issue) }
    }

    #[inline(always)]
    unsafe fn multiply(acc: &mut RegTile<1, NB>, nacc: &mut [f32; 4], t: SubTile<SmemTile>) {
        let (sk, sv, su, lane, warp) = (t.k, t.v, t.u, t.lane, t.warp);
        let (log_w0, with_n) = (t.log_w0, t.with_n);
        unroll!(4, ks => {
            let (tiles, at) = ((sk, sv, su), (lane, warp));
            unsafe { state_walk::add_slice::<E, NB>((acc, nacc), tiles, ks as u32, at, log_w0, with_n) };
        });
    }
}

/// # Safety
/// Launched with `state::TILES.grid(p)`, `state::THREADS` threads and `state::TILES.smem_bytes()`
/// bytes of dynamic shared memory, on parameters validated by the host.
#[inline(always)]
pub unsafe fn chunk_state<E: Elem, G: GateKind>(p: &FwdParams) {
    use state::*;
    unsafe { chunk_states::<E, G, Narrow, 1, NB, THREADS, { TILE_QK / 8 }, { TILE_HV / 8 }>(p) }
}
