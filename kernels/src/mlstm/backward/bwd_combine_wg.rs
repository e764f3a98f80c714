//! Input gradients on `wgmma` (sm_90a builds; `tfla_params::bwd::combine_wg`): the sums of
//! `bwd_combine` (same roles, operands and notation; see there) for a block of TILE = 128 rows
//! of one chunk and TILE_OUT = 256 output columns. Each of the two warpgroups owns 64 rows, one
//! score tile, as an m64n256 accumulator (128 f32 per thread), so every operand staged serves
//! 256 output columns, twice the `mma.sync` kernel's, and every row of A, T and Z is read by
//! half as many blocks.
//!
//! Operands, all read by the tensor cores from shared memory in the 128-byte swizzle: the state
//! term's KD-wide slices of A (K-major) and M (K-major where M is stored out × a, as C̃_k for
//! dq and dC̃ for dk; MN-major where it is stored a × out, dC̃ for dv); then per key tile the
//! warpgroups' score tiles (K-major T for dq; for dk and dv Tᵀ, the stored tile read MN-major
//! through the descriptor's transpose) and the key tile's rows of Z (MN-major). Loads and
//! products run as in `chunk_output_wg`: one ring of items, each item's `wgmma`s waited for
//! one item later, so the tensor pipe does not drain at the barriers between items. dq and dk
//! stage the rows of their row dots' input (q, k) with the first item and form the dots from
//! shared memory.
//!
//! Causal shape: for dq warpgroup 0 needs the key tiles up to its own only and waits at the
//! barriers while warpgroup 1 multiplies the last one; for dk and dv warpgroup 1's tiles start
//! one later.
use super::bwd_combine::{Operands, Role, row_coef, store_row_dot};
use super::gates::GateKind;
use super::stage;
use crate::arch::convert::Elem;
use crate::arch::wgmma::{self, Hold, Wgmma, k_major, mn_major};
use crate::arch::{cp_async, global, shared, shfl, thread};
use crate::tile::{SmemTile, acc_pos};
use tfla_params::bwd::combine::col_tiles;
use tfla_params::bwd::combine_wg::{
    self, ALIGN, KD, THREADS, TILE, TILE_OUT, WARPGROUPS, a_bytes, b_bytes,
};
use tfla_params::bwd::{BwdParams, scores};
use tfla_params::fwd::SMEM_ROW_PAD;

/// n-blocks (8 columns) of the accumulator.
const NB: usize = (TILE_OUT / 8) as usize;
/// Bytes of one 64-row panel in the swizzle: between a tile's 64-column panels (the LBO of the
/// MN-major descriptors), and between the two warpgroups' halves of an A stage.
const PANEL: u32 = stage::sw128_panel(KD);
const _: () = assert!(
    NB == 32 && KD == 64 && WARPGROUPS == 2,
    "the unroll! counts below assume 32 n-blocks and 64-wide slices and key tiles"
);

/// # Safety
/// Launched with `grid(p, out_dim)`, THREADS threads and `smem_bytes()` bytes of dynamic
/// shared memory after the rows, state and scores kernels, on parameters validated by the
/// host (a shape that `applies`).
#[inline(always)]
pub unsafe fn bwd_combine_wg<E: Elem + Wgmma, G: GateKind, R: Role>(p: &BwdParams) {
    let tid = thread::thread_idx();
    let (lane, warp) = (tid % 32, tid / 32);
    let wg = warp / 4;
    let (bx, by, bh) = thread::block_idx();
    let o: Operands = R::operands::<G>(p);
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

    // Shared memory: `stages` × (A stage, B stage), swizzled, 1024-byte aligned; the block's
    // columns of u (TILE_OUT f32); for the row dots the rows of their input (padded rows).
    let stages = combine_wg::stages(R::ROW_DOTS);
    let base = (shared::base() + ALIGN - 1) & !(ALIGN - 1);
    let stage_a = |st: u32| base + st * (a_bytes() + b_bytes());
    let stage_b = |st: u32| stage_a(st) + a_bytes();
    let su = stage_a(stages);
    let sx = SmemTile {
        base: su + TILE_OUT * 4,
        stride: (TILE_OUT + SMEM_ROW_PAD) * 2,
    };

    let head = bh as u64;
    let hk = head * nc as u64 + k as u64;
    let ga = o.a + head * (s as u64) * (a_dim as u64) * 2;
    let gz = o.z + head * (s as u64) * (out_dim as u64) * 2;
    let gm = o.state + hk * (a_dim as u64) * (out_dim as u64) * 2;
    // The chunk's packed score tiles (`scores::pair_index`), KD × KD each.
    let tile_bytes = (KD * KD * 2) as u64;
    let gt = o.t + hk * scores::pairs(l) as u64 * tile_bytes;

    // Score tiles (KD rows each) of the chunk; warpgroup w's own is 2·own + w. It multiplies
    // key tile kt if it has rows and kt is on its side of the diagonal.
    let valid_tiles = len.div_ceil(KD);
    let tile_of = |w: u32| WARPGROUPS * own + w;
    let needs = |w: u32, kt: u32| {
        tile_of(w) < valid_tiles
            && if R::TRANSPOSED {
                kt >= tile_of(w)
            } else {
                kt <= tile_of(w)
            }
    };
    let wg_live = tile_of(wg) < valid_tiles;

    // Items: the state term's KD slices, then the key tiles from kt_first.
    let n_state = a_dim.div_ceil(KD).max(1);
    let (kt_first, kt_end) = if R::TRANSPOSED {
        (tile_of(0), valid_tiles)
    } else {
        (0, (tile_of(WARPGROUPS - 1) + 1).min(valid_tiles))
    };
    let n_items = n_state + (kt_end - kt_first);
    let issue = |item: u32| unsafe {
        let st = item % stages;
        if R::ROW_DOTS && item == 0 {
            let gx = o.dot_input + head * (s as u64) * (out_dim as u64) * 2;
            let rows_x = (t0 + i0, t0 + len);
            stage::rows::<THREADS, { TILE_OUT / 8 }>(sx, gx, rows_x, (c0, out_dim), TILE);
        }
        if item < n_state {
            let d = item * KD;
            let rows_a = (t0 + i0, t0 + len);
            stage::rows_sw128::<THREADS, { KD / 8 }>(stage_a(st), ga, rows_a, (d, a_dim), TILE);
            if R::STATE_KN {
                let (rows_m, cols) = ((d, a_dim), (c0, out_dim));
                stage::rows_sw128::<THREADS, { TILE_OUT / 8 }>(stage_b(st), gm, rows_m, cols, KD);
            } else {
                let (rows_m, cols) = ((c0, out_dim), (d, a_dim));
                stage::rows_sw128::<THREADS, { KD / 8 }>(stage_b(st), gm, rows_m, cols, TILE_OUT);
            }
        } else {
            let kt = kt_first + item - n_state;
            for w in 0..WARPGROUPS {
                if needs(w, kt) {
                    // T's row tile: the warpgroup's (dq) or the key tile's (transposed).
                    let (tr, tc) = if R::TRANSPOSED {
                        (kt, tile_of(w))
                    } else {
                        (tile_of(w), kt)
                    };
                    let tile = gt + scores::pair_index(tr, tc) as u64 * tile_bytes;
                    let to = stage_a(st) + PANEL * w;
                    stage::rows_sw128::<THREADS, { KD / 8 }>(to, tile, (0, KD), (0, KD), KD);
                }
            }
            let keys = (t0 + kt * KD, t0 + len);
            stage::rows_sw128::<THREADS, { TILE_OUT / 8 }>(
                stage_b(st),
                gz,
                keys,
                (c0, out_dim),
                KD,
            );
        }
        cp_async::commit();
    };
    // Past the last item an empty group: the waits count stages − 2 groups behind.
    let issue_or_empty = |item: u32| unsafe { stage::issue_or_empty(item, n_items, &issue) };
    // Prime the ring with stages − 1 items.
    for item in 0..stages - 1 {
        issue_or_empty(item);
    }

    let coef = |plane: u32, rr: u32| unsafe { row_coef(p, plane, head, t0 + i0 + rr) };
    // Writes this block's parts of Σ_c x[row, c]·c_out·acc[row, c] for the warp's rows of half
    // `e` (row g for e = 0, g + 8 for e = 2) into row-dot plane `plane`: one part per 128
    // columns, `combine`'s slots. x from its staged rows (zeros past the rows and columns).
    let row_dot = |acc: &[f32; 4 * NB], e: usize, plane: u32| unsafe {
        // (Opaque, and the block's place read again, as in `bwd_combine`: the element
        // addresses are not to be kept across the walk.)
        let lane = thread::opaque(lane);
        let (t0, i0) = place(thread::block_idx_here().1);
        let rr = warp * 16 + acc_pos(lane, e).0;
        let inside = i0 + rr < len;
        let mut dots = [0f32; 2];
        unroll!(32, nb => {
            let c = nb as u32 * 8 + acc_pos(lane, e).1;
            let (x0, x1) = E::unpack(shared::ld_f32(sx.offset(rr, c)).to_bits());
            dots[nb / 16] += o.c_out * (x0 * acc[4 * nb + e] + x1 * acc[4 * nb + e + 1]);
        });
        let col_tiles = col_tiles(p.dqk);
        for (half, mut dot) in dots.into_iter().enumerate() {
            dot += shfl::xor_f32(dot, 1);
            dot += shfl::xor_f32(dot, 2);
            let slot = 2 * bx + half as u32;
            if inside && lane.is_multiple_of(4) && slot < col_tiles {
                store_row_dot(p, plane, head, t0 + i0 + rr, slot, dot);
            }
        }
    };

    // u into shared memory (seen after the first item's barrier): read from there, its
    // loads are not all hoisted ahead of the rank-one term beside the accumulators.
    if o.e_plane.is_some() {
        let c = c0 + tid;
        let x = unsafe {
            global::ld_nc_f32_or_zero(c < out_dim, o.u + (hk * out_dim as u64 + c as u64) * 4)
        };
        unsafe { shared::st_f32(su + 4 * tid, x) };
    }
    // The rows' coefficients r, read from memory before the walk: they land while the state
    // term runs. (e is read after it: kept across it beside the accumulators, the normalizing
    // variants' dq and dk spill.)
    let coef_rows = |plane: u32| {
        let lane = thread::opaque(lane);
        [0, 1].map(|half| o.r_mul * coef(plane, warp * 16 + acc_pos(lane, 2 * half).0))
    };
    let r_rows = coef_rows(o.r_plane);

    // (From a constant: a repeat expression this long becomes a store loop that keeps the
    // array out of registers.)
    const ZERO: [f32; 4 * NB] = [0.0; 4 * NB];
    let mut acc = ZERO;
    // Two barriers per item, as in `chunk_output_wg` (`stage::landed_for_wgmma`,
    // `release_for_wgmma`): the stage the previous item read takes item + stages − 1.
    let landed = || unsafe {
        if R::ROW_DOTS {
            stage::landed_for_wgmma::<{ combine_wg::stages(true) - 2 }>();
        } else {
            stage::landed_for_wgmma::<{ combine_wg::stages(false) - 2 }>();
        }
    };
    let release = |item: u32, issued: bool| unsafe {
        stage::release_for_wgmma(issued, || issue_or_empty(item + stages - 1))
    };
    // State term: acc += A[:, d..d+KD] · M[d..d+KD, c0..] (the slices are zero past the dims).
    // (Two loops: ptxas serializes `wgmma`s whose accumulators other instructions write inside
    // the loop that carries them in flight.)
    for item in 0..n_state {
        landed();
        let st = item % stages;
        let (sa, sm) = (stage_a(st) + PANEL * wg, stage_b(st));
        if wg_live {
            unsafe {
                wgmma::fence();
                unroll!(4, ks => {
                    let ks = ks as u32;
                    if R::STATE_KN {
                        E::ss_n256_mn(&mut acc, k_major(sa, ks), mn_major(sm, ks, PANEL), true);
                    } else {
                        E::ss_n256_k(&mut acc, k_major(sa, ks), k_major(sm, ks), true);
                    }
                });
                wgmma::commit();
            }
        }
        release(item, wg_live);
    }
    unsafe { wgmma::wait_all() };
    acc.hold();
    // r ⊙ (A·M) + e ⊗ u (addresses from an opaque lane: not hoisted out of the walk), and the
    // row dots of this inter-chunk part.
    {
        let e_rows = o.e_plane.map_or([0.0; 2], coef_rows);
        let lane = thread::opaque(lane);
        unroll!(2, half => {
            let e = 2 * half;
            let (r, ecoef) = (r_rows[half], e_rows[half]);
            unroll!(32, nb => {
                let c = nb as u32 * 8 + acc_pos(lane, e).1;
                let u = if o.e_plane.is_some() {
                    unsafe { [shared::ld_f32(su + 4 * c), shared::ld_f32(su + 4 * c + 4)] }
                } else {
                    [0.0; 2]
                };
                acc[4 * nb + e] = r * acc[4 * nb + e] + ecoef * u[0];
                acc[4 * nb + e + 1] = r * acc[4 * nb + e + 1] + ecoef * u[1];
            });
            if let Some(plane) = o.inter_dot {
                row_dot(&acc, e, plane);
            }
        });
    }
    // Key term: acc += T[rows, kt] · Z[kt, c0..] per key tile (Tᵀ for dk, dv).
    for item in n_state..n_items {
        landed();
        let st = item % stages;
        let kt = kt_first + item - n_state;
        let live = needs(wg, kt);
        if live {
            let (sa, sz) = (stage_a(st) + PANEL * wg, stage_b(st));
            unsafe {
                wgmma::fence();
                unroll!(4, ks => {
                    let ks = ks as u32;
                    if R::TRANSPOSED {
                        E::ss_n256_t_mn(&mut acc, mn_major(sa, ks, PANEL), mn_major(sz, ks, PANEL), true);
                    } else {
                        E::ss_n256_mn(&mut acc, k_major(sa, ks), mn_major(sz, ks, PANEL), true);
                    }
                });
                wgmma::commit();
            }
        }
        release(item, live);
    }
    unsafe { wgmma::wait_all() };
    acc.hold();

    // Store (staged where the ring was, once every warpgroup is done reading it:
    // `stage::store_rows`, whole sectors per store), and the row dot with the whole output.
    let staging = SmemTile {
        base,
        stride: (TILE_OUT + SMEM_ROW_PAD) * 2,
    };
    unsafe { thread::sync_threads() };
    let lane = thread::opaque(lane);
    unroll!(2, half => {
        let e = 2 * half;
        let rr = warp * 16 + acc_pos(lane, e).0;
        unroll!(32, nb => {
            let v = E::pack(o.c_out * acc[4 * nb + e], o.c_out * acc[4 * nb + e + 1]);
            unsafe { shared::st_u32(staging.offset(rr, nb as u32 * 8 + acc_pos(lane, e).1), v) };
        });
        if let Some(plane) = o.end_dot {
            row_dot(&acc, e, plane);
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
