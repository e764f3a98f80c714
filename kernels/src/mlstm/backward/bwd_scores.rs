//! Backward, gated score matrices (intra-chunk): for one TILE × TILE tile (rows i, columns
//! j, j-tile ≤ i-tile) of one chunk,
//!   P_ij  = W_ij (q̂_i·k_j) ρ_i,   dP_ij = W_ij ((dh_i·v_j) ρ_i + δ_i),
//! W_ij = 2^(R_i + C_j) for j ≤ i (R_i from the rows kernel, C_j = u_j·log2e), else 0.
//! dP is the gradient of the gated scores (dnum'_i·v'_j with the normalizer column), P the
//! gated scores with the row's 1/den folded in, so that dv = Pᵀ dH needs no row scaling.
//! Materializing them costs 2·L² elements per chunk (a quarter of a 512-wide Q at L = 128) and
//! lets the three gradient products (`bwd_combine`) be plain tiled matmuls over the chunk.
//!
//! The forget-gate gradient needs the pair gradients G_ij = W_ij (q̂_i·k_j)(dnum'_i·v'_j) =
//! scale·S_ij·dP_ij (j < i) summed over rows and over columns; they are summed here in f32
//! from the unrounded tiles (see `bwd_gates` for why not from dq and dk).
//!
//! S = Q_i K_jᵀ and dS = dH_i V_jᵀ stream KD-wide slices of both operands through a two-stage
//! `cp.async` ring; every warp owns 16 rows of both in registers.
use super::stage;
use crate::arch::convert::Elem;
use crate::arch::{cp_async, global, math, shared, shfl, thread};
use crate::tile::{SmemTile, acc_pos, leads_quad};
use tfla_params::bwd::{BwdParams, rows, scores::*};
use tfla_params::fwd::SMEM_ROW_PAD;

const NB: usize = (TILE / 8) as usize;
const _: () = assert!(
    NB == 8 && KD == 64,
    "the unroll! counts below assume 8 n-blocks and 64-wide slices"
);

/// # Safety
/// Launched with `grid(p)`, THREADS threads and `smem_bytes()` bytes of dynamic shared memory
/// after the rows kernel, on parameters validated by the host.
#[inline(always)]
pub unsafe fn bwd_scores<E: Elem>(p: &BwdParams) {
    let tid = thread::thread_idx();
    let (lane, warp) = (tid % 32, tid / 32);
    let (pair, k, bh) = thread::block_idx();
    // Pair index → (row tile, column tile ≤ row tile), row-major over the lower triangle.
    let mut it = 0;
    while pair_index(it + 1, 0) <= pair {
        it += 1;
    }
    let jt = pair - pair_index(it, 0);
    let (l, s, dqk, dhv, nc) = (p.chunk, p.s, p.dqk, p.dhv, p.num_chunks);
    let t0 = k * l;
    let (i0, j0) = (it * TILE, jt * TILE);
    if t0 + i0 >= s {
        return; // rows past a ragged end: no reader looks at them
    }
    let len = l.min(s - t0);

    let slice = |st: u32, x: u32| SmemTile {
        base: shared::base() + (2 * st + x) * slice_bytes(),
        stride: (KD + SMEM_ROW_PAD) * 2,
    };
    let srow_r = shared::base() + STAGES * 2 * slice_bytes();
    let srow_rho = srow_r + 4 * TILE;
    let srow_delta = srow_rho + 4 * TILE;
    let scol = srow_delta + 4 * TILE;
    let swarp_cols = scol + 4 * TILE;

    let head = bh as u64;
    let gq = p.ptr.q + head * (s as u64) * (dqk as u64) * 2;
    let gk = p.ptr.k + head * (s as u64) * (dqk as u64) * 2;
    let gdh = p.ptr.dh + head * (s as u64) * (dhv as u64) * 2;
    let gv = p.ptr.v + head * (s as u64) * (dhv as u64) * 2;

    // Items: DQK slices of (Q_i, K_j), then DHV slices of (dH_i, V_j).
    let (n_q, n_v) = (dqk.div_ceil(KD).max(1), dhv.div_ceil(KD).max(1));
    let n_items = n_q + n_v;
    let (rows_i, rows_j) = ((t0 + i0, t0 + len), (t0 + j0, t0 + len));
    let issue = |item: u32| unsafe {
        let st = item % STAGES;
        let (a, b, d, dim) = if item < n_q {
            (gq, gk, item * KD, dqk)
        } else {
            (gdh, gv, (item - n_q) * KD, dhv)
        };
        stage::rows::<THREADS, { KD / 8 }>(slice(st, 0), a, rows_i, (d, dim), TILE);
        stage::rows::<THREADS, { KD / 8 }>(slice(st, 1), b, rows_j, (d, dim), TILE);
        cp_async::commit();
    };
    issue(0);

    // Row and column coefficients of the tile (zero past the end: the rows kernel pads).
    let padded = (nc * l) as u64;
    let row0 = head * padded + (t0 + i0) as u64;
    let coef = |plane: u32, r: u32| unsafe {
        global::ld_nc_f32(
            p.ptr.row_coef + (plane as u64 * p.bh as u64 * padded + row0 + r as u64) * 4,
        )
    };
    if tid < TILE {
        let u = unsafe {
            global::ld_nc_f32(p.ptr.gate_u + (head * padded + (t0 + j0 + tid) as u64) * 4)
        };
        unsafe {
            shared::st_f32(srow_r + 4 * tid, coef(rows::R_LOG2, tid));
            shared::st_f32(srow_rho + 4 * tid, coef(rows::RHO, tid));
            shared::st_f32(srow_delta + 4 * tid, coef(rows::DELTA, tid));
            shared::st_f32(scol + 4 * tid, u * math::LOG2_E);
        }
    }

    let mut sacc = [[0f32; 4]; NB];
    let mut dacc = [[0f32; 4]; NB];
    for item in 0..n_items {
        unsafe { stage::advance((item + 1 < n_items).then_some(item + 1), issue) };
        let st = item % STAGES;
        let (sa, sb) = (slice(st, 0), slice(st, 1));
        // acc += A·Bᵀ over this slice (each call site names its own accumulator, so both stay
        // in registers). Past the head dim the staged slices are zero: no skip needed.
        let mma_slice = |acc: &mut [[f32; 4]; NB]| {
            unroll!(4, ks => {
                let ks = ks as u32;
                let a = unsafe { sa.a(warp * 16, ks * 16, lane) };
                unroll!(4, pr => {
                    let b = unsafe { sb.b_nk(pr as u32 * 16, ks * 16, lane) };
                    unsafe {
                        E::mma(&mut acc[2 * pr], a, b[0]);
                        E::mma(&mut acc[2 * pr + 1], a, b[1]);
                    }
                });
            });
        };
        if item < n_q {
            mma_slice(&mut sacc);
        } else {
            mma_slice(&mut dacc);
        }
        unsafe { thread::sync_threads() };
    }

    // The two tiles are staged where the ring was and leave in whole-sector stores
    // (`stage::store_rows`).
    let staged_p = SmemTile {
        base: shared::base(),
        stride: (TILE + SMEM_ROW_PAD) * 2,
    };
    let staged_dp = SmemTile {
        base: shared::base() + TILE * (TILE + SMEM_ROW_PAD) * 2,
        ..staged_p
    };
    // Gate, scale and store both tiles; sum the pair gradients G_ij = scale·S_ij·dP_ij (j < i)
    // over the tile's rows and columns for the forget-gate gradient.
    let hk = head * nc as u64 + k as u64;
    // This pair's tile of the packed score matrices (`scores::pair_index`).
    let base = (hk * pairs(l) as u64 + pair as u64) * (TILE * TILE) as u64;
    let tiles = tiles(l);
    let mut col_sum = [[0f32; 2]; NB];
    unroll!(2, half => {
        let e = 2 * half;
        let rr = warp * 16 + acc_pos(lane, e).0;
        let i = i0 + rr;
        let (r, rho, delta) = unsafe {
            (shared::ld_f32(srow_r + 4 * rr), shared::ld_f32(srow_rho + 4 * rr), shared::ld_f32(srow_delta + 4 * rr))
        };
        let mut row_sum = 0f32;
        unroll!(8, nb => {
            let cc = nb as u32 * 8 + acc_pos(lane, e).1;
            let mut pv = [0f32; 2];
            let mut dpv = [0f32; 2];
            unroll!(2, x => {
                let j = j0 + cc + x as u32;
                let w = math::exp2(r + unsafe { shared::ld_f32(scol + 4 * (cc + x as u32)) });
                let w = if j <= i && i < len { w } else { 0.0 };
                let sc = sacc[nb][e + x] * p.scale;
                pv[x] = w * sc * rho;
                dpv[x] = w * (dacc[nb][e + x] * rho + delta);
                let g = if j < i { sc * dpv[x] } else { 0.0 };
                row_sum += g;
                col_sum[nb][x] += g;
            });
            unsafe {
                shared::st_u32(staged_p.offset(rr, cc), E::pack(pv[0], pv[1]));
                shared::st_u32(staged_dp.offset(rr, cc), E::pack(dpv[0], dpv[1]));
            }
        });
        row_sum += unsafe { shfl::xor_f32(row_sum, 1) };
        row_sum += unsafe { shfl::xor_f32(row_sum, 2) };
        if leads_quad(lane) && i < len {
            let at = (head * padded + (t0 + i) as u64) * tiles as u64 + jt as u64;
            unsafe { global::st_f32(p.ptr.pair_sums + at * 4, row_sum) };
        }
    });
    // Column sums: over the 8 row groups of the warp, then over the warps through shared memory.
    unroll!(8, nb => {
        unroll!(2, x => {
            let c = &mut col_sum[nb][x];
            *c += unsafe { shfl::xor_f32(*c, 4) };
            *c += unsafe { shfl::xor_f32(*c, 8) };
            *c += unsafe { shfl::xor_f32(*c, 16) };
            if lane < 4 {
                let cc = nb as u32 * 8 + lane * 2 + x as u32;
                unsafe { shared::st_f32(swarp_cols + 4 * (warp * TILE + cc), *c) };
            }
        });
    });
    unsafe {
        thread::sync_threads();
        let (sp, sdp) = (p.ptr.scores_p + base * 2, p.ptr.scores_dp + base * 2);
        stage::store_rows::<THREADS, { TILE / 8 }>(staged_p, sp, (0, TILE), (0, TILE), TILE);
        stage::store_rows::<THREADS, { TILE / 8 }>(staged_dp, sdp, (0, TILE), (0, TILE), TILE);
    }
    if tid < TILE && j0 + tid < len {
        let mut c = 0f32;
        for w in 0..WARPS {
            c += unsafe { shared::ld_f32(swarp_cols + 4 * (w * TILE + tid)) };
        }
        let plane = p.bh as u64 * padded * tiles as u64;
        let at = plane + (head * padded + (t0 + j0 + tid) as u64) * tiles as u64 + it as u64;
        unsafe { global::st_f32(p.ptr.pair_sums + at * 4, c) };
    }
}
