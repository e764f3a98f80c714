//! Backward, input gradients (intra-chunk, TFLA's second level of parallelism): TILE rows of
//! one chunk and TILE_OUT columns of dq, dk or dv,
//!   out = c · (r ⊙ (A·M) + e ⊗ u + T·Z),
//! with r, e per-row coefficients, M a per-chunk state, u a per-chunk vector and T a score
//! matrix of the chunk (`bwd_scores`). With the notation of `chunkwise_backward`:
//!   dq̂_i = α_i ρ_i C̃_k dh_i + α_i δ_i ñ_k + Σ_{j≤i} dP_ij k_j            (dq = scale·dq̂)
//!   dk_j = w_j (dC̃_{k+1} v_j + dñ_{k+1}) + scale · Σ_{i≥j} dP_ij q_i
//!   dv_j = w_j dC̃_{k+1}ᵀ k_j + Σ_{i≥j} P_ij dh_i
//! so each is one walk: first the state term (KD-wide slices of A and M), scaled per row,
//! then the key tiles of T (up to the diagonal for dq, from it for dk and dv, T transposed)
//! with the matching rows of Z, through one two-stage `cp.async` ring. The dq and dk blocks
//! also write their part of the row dots the gate gradients need: q̂·(inter-chunk part of
//! dq̂), k·dk and k·(inter-chunk part of dk).
use super::gates::GateKind;
use super::stage;
use crate::arch::convert::Elem;
use crate::arch::{cp_async, global, shared, shfl, thread};
use crate::tile::{SmemTile, acc_pos};
use tfla_params::bwd::{BwdParams, combine::*, rows, scores};
#[cfg(target_feature = "sm_90a")]
use tfla_params::bwd::{BwdKernel, combine_wg};
use tfla_params::fwd::SMEM_ROW_PAD;

const NB: usize = (TILE_OUT / 8) as usize;
const _: () = assert!(
    NB == 16 && TILE == 64 && KD == 64,
    "the unroll! counts below assume 16 output n-blocks and 64-wide slices and key tiles"
);

/// What one gradient reads: see the module doc. Device addresses are of the whole tensor.
pub struct Operands {
    /// A (BH, S, a_dim) and the state M per (head, chunk), a_dim × out_dim elements.
    pub a: u64,
    pub a_dim: u32,
    pub state: u64,
    /// Z (BH, S, out_dim), the output (BH, S, out_dim), the score matrices (BH, NC, L, L).
    pub z: u64,
    pub out: u64,
    pub out_dim: u32,
    pub t: u64,
    /// r = r_mul · plane r_plane; e likewise (e_plane = None: no rank-one term).
    pub r_plane: u32,
    pub r_mul: f32,
    pub e_plane: Option<u32>,
    /// u per (head, chunk): out_dim f32.
    pub u: u64,
    pub c_out: f32,
    /// Row dots the gate gradients need, each with the rows of one input x (BH, S, out_dim):
    /// their row-dot planes, of the inter-chunk part c·(r ⊙ (A·M) + e ⊗ u) and of the whole
    /// output (`dot_input` is 0 where the role writes none).
    pub dot_input: u64,
    pub inter_dot: Option<u32>,
    pub end_dot: Option<u32>,
}

/// One of dq, dk, dv.
pub trait Role {
    /// T is read transposed and the key tiles run from the block's own to the chunk's end.
    const TRANSPOSED: bool;
    /// M is stored (a_dim, out_dim) row-major; otherwise (out_dim, a_dim).
    const STATE_KN: bool;
    /// It writes row dots (`inter_dot` or `end_dot`): `combine_wg::row_dots` of its kernel.
    #[cfg(target_feature = "sm_90a")]
    const ROW_DOTS: bool;
    fn operands<G: GateKind>(p: &BwdParams) -> Operands;
}

pub struct Dq;
pub struct Dk;
pub struct Dv;

impl Role for Dq {
    const TRANSPOSED: bool = false;
    const STATE_KN: bool = false;
    #[cfg(target_feature = "sm_90a")]
    const ROW_DOTS: bool = combine_wg::row_dots(BwdKernel::DqWg);
    #[inline(always)]
    fn operands<G: GateKind>(p: &BwdParams) -> Operands {
        let normalizer = G::NORMALIZED && p.exact != 0;
        Operands {
            a: p.ptr.dh,
            a_dim: p.dhv,
            state: p.ptr.c_states,
            z: p.ptr.k,
            out: p.ptr.dq,
            out_dim: p.dqk,
            t: p.ptr.scores_dp,
            r_plane: rows::WQ,
            r_mul: 1.0,
            e_plane: if normalizer { Some(rows::WN) } else { None },
            u: p.ptr.n_states,
            c_out: p.scale,
            dot_input: p.ptr.q,
            inter_dot: Some(DOT_Q_INTER),
            end_dot: None,
        }
    }
}

impl Role for Dk {
    const TRANSPOSED: bool = true;
    const STATE_KN: bool = false;
    #[cfg(target_feature = "sm_90a")]
    const ROW_DOTS: bool = combine_wg::row_dots(BwdKernel::DkWg);
    #[inline(always)]
    fn operands<G: GateKind>(p: &BwdParams) -> Operands {
        let normalizer = G::NORMALIZED && p.exact != 0;
        Operands {
            a: p.ptr.v,
            a_dim: p.dhv,
            state: p.ptr.dc_states,
            z: p.ptr.q,
            out: p.ptr.dk,
            out_dim: p.dqk,
            t: p.ptr.scores_dp,
            r_plane: rows::WK,
            r_mul: 1.0 / p.scale,
            e_plane: if normalizer { Some(rows::WK) } else { None },
            u: p.ptr.dn_states,
            c_out: p.scale,
            dot_input: p.ptr.k,
            inter_dot: Some(DOT_K_INTER),
            end_dot: Some(DOT_K),
        }
    }
}

impl Role for Dv {
    const TRANSPOSED: bool = true;
    const STATE_KN: bool = true;
    #[cfg(target_feature = "sm_90a")]
    const ROW_DOTS: bool = combine_wg::row_dots(BwdKernel::DvWg);
    #[inline(always)]
    fn operands<G: GateKind>(p: &BwdParams) -> Operands {
        Operands {
            a: p.ptr.k,
            a_dim: p.dqk,
            state: p.ptr.dc_states,
            z: p.ptr.dh,
            out: p.ptr.dv,
            out_dim: p.dhv,
            t: p.ptr.scores_p,
            r_plane: rows::WK,
            r_mul: 1.0,
            e_plane: None,
            u: 0,
            c_out: 1.0,
            dot_input: 0,
            inter_dot: None,
            end_dot: None,
        }
    }
}

/// Row coefficient `plane` (`rows::*`) of row `row` (t0 + i0 + r: padded rows of the head).
///
/// # Safety
/// On parameters validated by the host; `row` < NC·L.
#[inline(always)]
pub(super) unsafe fn row_coef(p: &BwdParams, plane: u32, head: u64, row: u32) -> f32 {
    let padded = (p.num_chunks * p.chunk) as u64;
    let at = plane as u64 * p.bh as u64 * padded + head * padded + row as u64;
    unsafe { global::ld_nc_f32(p.ptr.row_coef + at * 4) }
}

/// Stores a block's part of a row dot: row `row` (padded rows of the head) of row-dot plane
/// `plane`, column slot `slot` (one per 128 output columns, `combine::col_tiles`).
///
/// # Safety
/// On parameters validated by the host; `row` < NC·L, `slot` < `col_tiles(DQK)`.
#[inline(always)]
pub(super) unsafe fn store_row_dot(
    p: &BwdParams,
    plane: u32,
    head: u64,
    row: u32,
    slot: u32,
    dot: f32,
) {
    let padded = (p.num_chunks * p.chunk) as u64;
    let col_tiles = col_tiles(p.dqk) as u64;
    let at = plane as u64 * p.bh as u64 * padded * col_tiles
        + (head * padded + row as u64) * col_tiles
        + slot as u64;
    unsafe { global::st_f32(p.ptr.row_dots + at * 4, dot) };
}

/// # Safety
/// Launched with `grid(p, out_dim)`, THREADS threads and `smem_bytes()` bytes of dynamic
/// shared memory after the rows, state and scores kernels, on parameters validated by the
/// host.
#[inline(always)]
pub unsafe fn bwd_combine<E: Elem, G: GateKind, R: Role>(p: &BwdParams) {
    let tid = thread::thread_idx();
    let (lane, warp) = (tid % 32, tid / 32);
    let (bx, by, bh) = thread::block_idx();
    let o = R::operands::<G>(p);
    let row_tiles = p.chunk / TILE;
    let (l, s, nc) = (p.chunk, p.s, p.num_chunks);
    // The block's chunk start t0 and its row tile's offset i0 in the chunk, from its index.
    let place = |by: u32| ((by / row_tiles) * l, (by % row_tiles) * TILE);
    let (t0, i0) = place(by);
    let (k, own) = (by / row_tiles, by % row_tiles);
    let (a_dim, out_dim) = (o.a_dim, o.out_dim);
    if t0 + i0 >= s {
        return; // a row tile past the end of a ragged last chunk
    }
    let len = l.min(s - t0);
    let c0 = bx * TILE_OUT;

    let stage_a = |st: u32| SmemTile {
        base: shared::base() + st * (a_bytes() + b_bytes()),
        stride: (KD + SMEM_ROW_PAD) * 2,
    };
    // The B stage as a KD × TILE_OUT (or TILE × TILE_OUT) tile, or as TILE_OUT × KD.
    let stage_b_kn = |st: u32| SmemTile {
        base: stage_a(st).base + a_bytes(),
        stride: (TILE_OUT + SMEM_ROW_PAD) * 2,
    };
    let stage_b_nk = |st: u32| SmemTile {
        base: stage_a(st).base + a_bytes(),
        stride: (KD + SMEM_ROW_PAD) * 2,
    };

    let head = bh as u64;
    let hk = head * nc as u64 + k as u64;
    let ga = o.a + head * (s as u64) * (a_dim as u64) * 2;
    let gz = o.z + head * (s as u64) * (out_dim as u64) * 2;
    let gm = o.state + hk * (a_dim as u64) * (out_dim as u64) * 2;
    // The chunk's packed score tiles (`scores::pair_index`), TILE × TILE each.
    let tile_bytes = (TILE * TILE * 2) as u64;
    let gt = o.t + hk * scores::pairs(l) as u64 * tile_bytes;

    // Items: the state term's KD slices, then the key tiles.
    let n_state = a_dim.div_ceil(KD).max(1);
    let valid_tiles = len.div_ceil(TILE);
    let (kt_first, n_keys) = if R::TRANSPOSED {
        (own, valid_tiles - own)
    } else {
        (0, own + 1)
    };
    let n_items = n_state + n_keys;
    let issue = |item: u32| unsafe {
        let st = item % STAGES;
        if item < n_state {
            let d = item * KD;
            stage::rows::<THREADS, { KD / 8 }>(
                stage_a(st),
                ga,
                (t0 + i0, t0 + len),
                (d, a_dim),
                TILE,
            );
            if R::STATE_KN {
                stage::rows::<THREADS, { TILE_OUT / 8 }>(
                    stage_b_kn(st),
                    gm,
                    (d, a_dim),
                    (c0, out_dim),
                    KD,
                );
            } else {
                stage::rows::<THREADS, { KD / 8 }>(
                    stage_b_nk(st),
                    gm,
                    (c0, out_dim),
                    (d, a_dim),
                    TILE_OUT,
                );
            }
        } else {
            let kt = kt_first + item - n_state;
            // T's row tile: own (dq) or the key tile's (transposed); column tile the other.
            let (tr, tc) = if R::TRANSPOSED { (kt, own) } else { (own, kt) };
            let tile = gt + scores::pair_index(tr, tc) as u64 * tile_bytes;
            stage::rows::<THREADS, { TILE / 8 }>(stage_a(st), tile, (0, TILE), (0, TILE), TILE);
            let keys = (t0 + kt * TILE, t0 + len);
            stage::rows::<THREADS, { TILE_OUT / 8 }>(stage_b_kn(st), gz, keys, (c0, out_dim), TILE);
        }
        cp_async::commit();
    };
    issue(0);

    let coef = |plane: u32, rr: u32| unsafe { row_coef(p, plane, head, t0 + i0 + rr) };

    // Writes this block's part of Σ_c x[row, c]·c_out·acc[row, c] for the warp's rows of half
    // `e` (row g for e = 0, g + 8 for e = 2) into row-dot plane `plane`.
    let row_dot = |acc: &[[f32; 4]; NB], e: usize, x: u64, plane: u32| unsafe {
        // Opaque: else the element addresses are shared with the final store's and kept live
        // across the walk (32 × 64-bit), and the driver's compiler spills dq and dk.
        // (And the block's place read again: the rows kept across the walk spilled on sm_120.)
        let lane = thread::opaque(lane);
        let (t0, i0) = place(thread::block_idx_here().1);
        let rr = warp * 16 + acc_pos(lane, e).0;
        let inside = i0 + rr < len;
        let row = head * s as u64 + (t0 + i0 + rr) as u64;
        let mut dot = 0f32;
        unroll!(16, nb => {
            let c = c0 + nb as u32 * 8 + acc_pos(lane, e).1;
            let at = (row * out_dim as u64 + c as u64) * 2;
            let (x0, x1) = E::unpack(global::ld_nc_f32_or_zero(inside && c < out_dim, x + at).to_bits());
            dot += o.c_out * (x0 * acc[nb][e] + x1 * acc[nb][e + 1]);
        });
        dot += shfl::xor_f32(dot, 1);
        dot += shfl::xor_f32(dot, 2);
        if inside && lane.is_multiple_of(4) {
            store_row_dot(p, plane, head, t0 + i0 + rr, bx, dot);
        }
    };

    // The rows' coefficients r (and e), read from memory before the walk: they land while the
    // state term runs instead of stalling every warp when it ends.
    let (r_rows, e_rows) = {
        let lane = thread::opaque(lane);
        let row = |half: usize| warp * 16 + acc_pos(lane, 2 * half).0;
        let r = [0, 1].map(|half| o.r_mul * coef(o.r_plane, row(half)));
        let e = [0, 1].map(|half| match o.e_plane {
            Some(pl) => o.r_mul * coef(pl, row(half)),
            None => 0.0,
        });
        (r, e)
    };
    let mut acc = [[0f32; 4]; NB];
    for item in 0..n_items {
        unsafe { stage::advance((item + 1 < n_items).then_some(item + 1), issue) };
        let st = item % STAGES;
        let sa = stage_a(st);
        // (The fragments' addresses from an opaque lane, redone per item: kept across the walk,
        // one per k-step and n-block pair, they made the portable module's dq and dk spill at
        // their register cap on sm_80 and sm_120.)
        let lane = thread::opaque(lane);
        if item < n_state {
            // (Past the head dim the staged slices are zero: no skip needed.)
            unroll!(4, ks => {
                let ks = ks as u32;
                let a = unsafe { sa.a(warp * 16, ks * 16, lane) };
                unroll!(8, pr => {
                    let b = if R::STATE_KN {
                        unsafe { stage_b_kn(st).b_kn(ks * 16, pr as u32 * 16, lane) }
                    } else {
                        unsafe { stage_b_nk(st).b_nk(pr as u32 * 16, ks * 16, lane) }
                    };
                    unsafe {
                        E::mma(&mut acc[2 * pr], a, b[0]);
                        E::mma(&mut acc[2 * pr + 1], a, b[1]);
                    }
                });
            });
            if item + 1 == n_state {
                // r ⊙ (A·M) + e ⊗ u (addresses from an opaque lane: not hoisted out of the walk).
                let lane = thread::opaque(lane);
                unroll!(2, half => {
                    let e = 2 * half;
                    let (r, ecoef) = (r_rows[half], e_rows[half]);
                    unroll!(16, nb => {
                        let c = c0 + nb as u32 * 8 + acc_pos(lane, e).1;
                        let u = if o.e_plane.is_some() {
                            unsafe { global::ld_v2_f32_or_zero(c < out_dim, o.u + (hk * out_dim as u64 + c as u64) * 4) }
                        } else {
                            [0.0; 2]
                        };
                        acc[nb][e] = r * acc[nb][e] + ecoef * u[0];
                        acc[nb][e + 1] = r * acc[nb][e + 1] + ecoef * u[1];
                    });
                    if let Some(plane) = o.inter_dot {
                        row_dot(&acc, e, o.dot_input, plane);
                    }
                });
            }
        } else {
            let sz = stage_b_kn(st);
            unroll!(4, ks => {
                let ks = ks as u32;
                let a = if R::TRANSPOSED {
                    unsafe { sa.a_trans(ks * 16, warp * 16, lane) }
                } else {
                    unsafe { sa.a(warp * 16, ks * 16, lane) }
                };
                unroll!(8, pr => {
                    let b = unsafe { sz.b_kn(ks * 16, pr as u32 * 16, lane) };
                    unsafe {
                        E::mma(&mut acc[2 * pr], a, b[0]);
                        E::mma(&mut acc[2 * pr + 1], a, b[1]);
                    }
                });
            });
        }
        unsafe { thread::sync_threads() };
    }

    // Store (staged where the first stage was: `stage::store_rows`, whole sectors per store),
    // and the row dot with the whole output.
    let staging = SmemTile {
        base: shared::base(),
        stride: (TILE_OUT + SMEM_ROW_PAD) * 2,
    };
    let lane = thread::opaque(lane);
    unroll!(2, half => {
        let e = 2 * half;
        let rr = warp * 16 + acc_pos(lane, e).0;
        unroll!(16, nb => {
            let v = E::pack(o.c_out * acc[nb][e], o.c_out * acc[nb][e + 1]);
            unsafe { shared::st_u32(staging.offset(rr, nb as u32 * 8 + acc_pos(lane, e).1), v) };
        });
        if let Some(plane) = o.end_dot {
            row_dot(&acc, e, o.dot_input, plane);
        }
    });
    unsafe {
        thread::sync_threads();
        let out = o.out + head * (s as u64) * (out_dim as u64) * 2;
        stage::store_rows::<THREADS, { TILE_OUT / 8 }>(
            staging,
            out,
            (t0 + i0, t0 + len),
            (c0, out_dim),
            TILE,
        );
    }
}
