//! Chunk outputs (forward, intra-chunk): h for TILE_Q rows of one chunk and TILE_HV value
//! columns. This is TFLA's second level of parallelism: the L rows of a chunk are spread over
//! L / TILE_Q blocks, each looping over the key tiles of its chunk up to the diagonal, so L can
//! be large while each block's work stays bounded.
//!
//! Notation as in `chunk_state`; i a row (query step) and j a column (key step) of chunk k,
//! b the inclusive cumulative log forget gate in the chunk, u_j = ι_j − b_j. Then (MATH.md)
//!   m_i = b_i + M_i,  M_i = max(m_k, max_{j≤i} u_j)          (exp; m ≡ 0 and M_i = −b_i for sig)
//!   num_i = e^{m_k − M_i} C̃_kᵀ q̂_i + Σ_{j≤i} e^{u_j − M_i} (q̂_i·k_j) v_j
//!   s_i   = e^{m_k − M_i} ñ_kᵀ q̂_i + Σ_{j≤i} e^{u_j − M_i} (q̂_i·k_j)
//!   h_i = num_i / (max(|s_i|, e^{−m_i}) + eps)                (sig: floor 1; no-norm: h = num)
//! The weight of (i, j) is 2^(R_i + C_j) with a row term R_i = −M_i·log2e (sig: b_i·log2e) and
//! a column term C_j = u_j·log2e, so the masked gate matrix costs one add and one `ex2` per
//! element. Every warp owns 16 rows; S = Q·Kᵀ and the gated P stay in registers (P feeds the
//! P·V `mma` as its A operand directly).
//!
//! Loads: one two-stage `cp.async` pipeline of "items", each a KD-wide slice of the head dim
//! DQK: first the TILE_C-row slices of C̃_k (stored 16-bit by chunk_state), then for each key
//! tile its slices of K (with the key tile's V on the first); every item brings the matching
//! slice of the Q tile along. The next item loads while the current one multiplies, and shared
//! memory stays independent of DQK: two blocks per SM at every head dim.
use super::gates::GateKind;
use super::out_tile::{OutTile, RowTerms};
use super::stage;
use crate::arch::convert::Elem;
use crate::arch::{cp_async, global, math, shared, thread};
use crate::tile::{SmemTile, acc_pos, acc_to_a, b_pos, split2};
use tfla_params::fwd::{FwdParams, SMEM_ROW_PAD, output::*};

const NB: usize = (TILE_HV / 8) as usize;
const NB_S: usize = (TILE_K / 8) as usize;
const _: () = assert!(
    TILE_C == KD,
    "a C̃_k slice and a K slice pair with the same Q slice"
);
const _: () = assert!(
    NB == 16 && NB_S == 8 && TILE_C == 64 && KD == 64,
    "the unroll! counts below assume 16 value n-blocks, 8 key n-blocks, 64-wide slices"
);

/// # Safety
/// Launched with `grid(p)`, THREADS threads and `smem_bytes(p.chunk, p.dqk)` bytes of dynamic
/// shared memory, after `chunk_state` wrote the chunk states, on parameters validated by the
/// host (shapes, alignment, chunk size).
#[inline(always)]
pub unsafe fn chunk_output<E: Elem, G: GateKind>(p: &FwdParams) {
    let tid = thread::thread_idx();
    let (lane, warp) = (tid % 32, tid / 32);
    let Some(tile) = OutTile::of_block(p, TILE_Q, TILE_HV) else {
        return;
    };
    let OutTile {
        i0,
        t0,
        len,
        v0,
        head,
        ..
    } = tile;
    let (l, s, dqk, dhv) = (p.chunk, p.s, p.dqk, p.dhv);

    // Shared memory layout: STAGES × (Q slice, B-operand slice), STAGES × V tile, gate vectors.
    let stage_q = |st: u32| SmemTile {
        base: shared::base() + st * q_bytes(),
        stride: (KD + SMEM_ROW_PAD) * 2,
    };
    let ring = shared::base() + STAGES * q_bytes();
    // Stage st of the B-operand ring, as a C̃ slice (TILE_C × TILE_HV) or a K slice (TILE_K × KD).
    let stage_c = |st: u32| SmemTile {
        base: ring + st * ring_bytes(),
        stride: (TILE_HV + SMEM_ROW_PAD) * 2,
    };
    let stage_k = |st: u32| SmemTile {
        base: ring + st * ring_bytes(),
        stride: (KD + SMEM_ROW_PAD) * 2,
    };
    let stage_v = |st: u32| SmemTile {
        base: ring + STAGES * ring_bytes() + st * v_bytes(),
        stride: (TILE_HV + SMEM_ROW_PAD) * 2,
    };
    // Gate vectors: the column terms (L f32), then the row terms.
    let scol = ring + STAGES * (ring_bytes() + v_bytes());
    let gt = RowTerms::at(scol + 4 * l, TILE_Q);
    let (srow_r, srow_scale) = (gt.row_r, gt.row_scale);
    let sn = gt.row_floor + 4 * TILE_Q; // ñ_k

    // Global bases of this head.
    let gq = p.ptr.q + head * (s as u64) * (dqk as u64) * 2;
    let gk = p.ptr.k + head * (s as u64) * (dqk as u64) * 2;
    let gv = p.ptr.v + head * (s as u64) * (dhv as u64) * 2;
    let gh = p.ptr.h + head * (s as u64) * (dhv as u64) * 2;
    let hk = tile.hk(p);

    // The item pipeline: items 0..n_c are C̃_k slices, then key tile kt, K slice ds is item
    // n_c + kt·n_d + ds.
    let gc = p.ptr.c_states + hk * (dqk as u64) * (dhv as u64) * 2;
    // (max(1): lets the compiler drop its division-by-zero check.)
    let (n_c, n_d) = (dqk.div_ceil(TILE_C).max(1), dqk.div_ceil(KD).max(1));
    let n_items = n_c + (i0 / TILE_K + 1) * n_d;
    let issue = |item: u32| unsafe {
        let st = item % STAGES;
        let dd = if item < n_c {
            item * TILE_C
        } else {
            ((item - n_c) % n_d) * KD
        };
        stage::rows::<THREADS, { KD / 8 }>(stage_q(st), gq, (t0 + i0, t0 + len), (dd, dqk), TILE_Q);
        if item < n_c {
            stage::rows::<THREADS, { TILE_HV / 8 }>(
                stage_c(st),
                gc,
                (item * TILE_C, dqk),
                (v0, dhv),
                TILE_C,
            );
        } else {
            let (kt, ds) = ((item - n_c) / n_d, (item - n_c) % n_d);
            let keys = (t0 + kt * TILE_K, t0 + len);
            stage::rows::<THREADS, { KD / 8 }>(stage_k(st), gk, keys, (ds * KD, dqk), TILE_K);
            if ds == 0 {
                stage::rows::<THREADS, { TILE_HV / 8 }>(
                    stage_v(kt % STAGES),
                    gv,
                    keys,
                    (v0, dhv),
                    TILE_K,
                );
            }
        }
        cp_async::commit();
    };
    issue(0);

    // The gate vectors of this tile (from chunk_gates), while item 0 loads.
    unsafe {
        let m_k = || tile.stored_m_k::<G>(p);
        tile.stage_gate_terms::<G, THREADS, TILE_Q>(p, scol, gt, m_k, tid)
    };
    if G::NORMALIZED {
        // ñ_k, zero-padded to whole slices like the staged Q and C̃_k slices.
        let mut d = tid;
        while d < n_c * TILE_C {
            let n = if d < dqk {
                unsafe { global::ld_nc_f32(p.ptr.n_states + (hk * dqk as u64 + d as u64) * 4) }
            } else {
                0.0
            };
            unsafe { shared::st_f32(sn + 4 * d, n) };
            d += THREADS;
        }
    }

    let mut acc = [[0f32; 4]; NB];
    let mut sacc = [[0f32; 4]; NB_S];
    let mut row_sum = [0f32; 2];
    // ñ_kᵀ q rides along as one more n-block of the inter-chunk product, a value column ñ_k
    // (all 8 columns equal): rows g and g+8 in elements 0 and 2.
    let mut snacc = [0f32; 4];
    for item in 0..n_items {
        unsafe { stage::advance((item + 1 < n_items).then_some(item + 1), issue) };
        let st = item % STAGES;
        let sq = stage_q(st);
        if item < n_c {
            // Inter-chunk term: acc += Q[:, dc..dc+TILE_C] · C̃_k[dc..dc+TILE_C, v0..].
            let (dc, sc) = (item * TILE_C, stage_c(st));
            // (No skip past DQK: the slices are zero there, in shared memory, ñ_k included.)
            unroll!(4, ks => {
                let ks = ks as u32;
                let a = unsafe { sq.a(warp * 16, ks * 16, lane) };
                unroll!(8, pair => {
                    let b = unsafe { sc.b_kn(ks * 16, pair as u32 * 16, lane) };
                    unsafe {
                        E::mma(&mut acc[2 * pair], a, b[0]);
                        E::mma(&mut acc[2 * pair + 1], a, b[1]);
                    }
                });
                if G::NORMALIZED {
                    // B fragment of the ñ_k column: b0 (k = 2t, 2t+1), b1 (k = 2t+8, 2t+9).
                    let d = sn + 4 * (dc + ks * 16 + b_pos(lane, 0).0);
                    let n = unsafe { [0, 1, 8, 9].map(|o| shared::ld_f32(d + 4 * o)) };
                    // ñ_k split into a 16-bit head and tail: |ñᵀq| can be far below
                    // ‖ñ‖‖q‖, and the whole row is divided by it, so it gets ~16 bits.
                    let (hi, lo) = split2::<E>([n[0], n[1]]);
                    let (hi2, lo2) = split2::<E>([n[2], n[3]]);
                    unsafe {
                        E::mma(&mut snacc, a, [hi, hi2]);
                        E::mma(&mut snacc, a, [lo, lo2]);
                    }
                }
            });
            if item + 1 == n_c {
                // Scale the inter-chunk term by e^{m_k − M_i} (sig: e^{b_i}) per row.
                unroll!(2, half => {
                    let e = 2 * half;
                    let scale = unsafe { shared::ld_f32(srow_scale + 4 * (warp * 16 + acc_pos(lane, e).0)) };
                    unroll!(16, nb => {
                        acc[nb][e] *= scale;
                        acc[nb][e + 1] *= scale;
                    });
                    snacc[e] *= scale;
                });
            }
        } else {
            // Intra-chunk term, key tile kt: S += Q[:, ds·KD..] · K[kt, ds·KD..]ᵀ.
            let (kt, ds) = ((item - n_c) / n_d, (item - n_c) % n_d);
            if ds == 0 {
                sacc = [[0f32; 4]; NB_S];
            }
            let sk = stage_k(st);
            unroll!(4, ks => {
                let ks = ks as u32;
                let a = unsafe { sq.a(warp * 16, ks * 16, lane) };
                unroll!(4, pair => {
                    let b = unsafe { sk.b_nk(pair as u32 * 16, ks * 16, lane) };
                    unsafe {
                        E::mma(&mut sacc[2 * pair], a, b[0]);
                        E::mma(&mut sacc[2 * pair + 1], a, b[1]);
                    }
                });
            });
            if ds + 1 == n_d {
                // P = S ⊙ 2^(R_i + C_j) (causal, ragged rows masked), then acc += P·V.
                let kb = kt * TILE_K;
                unroll!(8, nb => {
                    unroll!(4, e => {
                        let x = &mut sacc[nb][e];
                        let (r, c) = acc_pos(lane, e);
                        let rr = warp * 16 + r;
                        let (i, j) = (i0 + rr, kb + nb as u32 * 8 + c);
                        // Computed for masked elements too (then discarded): a branch-free body
                        // keeps the unrolled tile in registers.
                        let w = math::exp2(unsafe { shared::ld_f32(srow_r + 4 * rr) + shared::ld_f32(scol + 4 * j) });
                        let w = if j <= i && i < len { w } else { 0.0 };
                        *x *= w;
                        row_sum[e / 2] += *x;
                    });
                });
                let sv = stage_v(kt % STAGES);
                unroll!(4, ks => {
                    let a = acc_to_a::<E>(&sacc[2 * ks], &sacc[2 * ks + 1]);
                    unroll!(8, pair => {
                        let b = unsafe { sv.b_kn(ks as u32 * 16, pair as u32 * 16, lane) };
                        unsafe {
                            E::mma(&mut acc[2 * pair], a, b[0]);
                            E::mma(&mut acc[2 * pair + 1], a, b[1]);
                        }
                    });
                });
            }
        }
        unsafe { thread::sync_threads() };
    }

    // Normalize and store; ñ_kᵀq (in every lane of the quad) joins the row sums.
    unsafe {
        tile.store_h::<E, G, 4>(
            p,
            gt,
            (warp * 16, lane),
            gh,
            row_sum,
            |x, rs| snacc[2 * x] + rs,
            |nb, e| acc[nb][e],
        )
    };
}
