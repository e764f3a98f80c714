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
use super::gates::GateKind;
use super::stage;
use crate::arch::convert::Elem;
use crate::arch::{cp_async, global, math, shared, shfl, thread};
use crate::tile::{SmemTile, acc_pos, acc_to_a};
use tfla_params::bwd::{BwdParams, chunk::*, combine, rows, scores};
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
    let (k, bh, _) = thread::block_idx();
    let (l, s, nc, dqk, dhv) = (p.chunk, p.s, p.num_chunks, p.dqk, p.dhv);
    let t0 = k * l;
    let len = l.min(s - t0);
    let normalizer = G::NORMALIZED && p.exact != 0;

    // Shared memory: Q, K, V, dH, C̃_k, dC̃_{k+1}; the row vectors; the column sums.
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
    let s_r = shared::base() + TILES * tile_bytes();
    let s_rho = s_r + 4 * CHUNK;
    let s_delta = s_rho + 4 * CHUNK;
    let s_u = s_delta + 4 * CHUNK;
    // The rows' own coefficients α ρ, α δ (dq) and w (dk, dv).
    let s_wq = s_u + 4 * CHUNK;
    let s_wn = s_wq + 4 * CHUNK;
    let s_wk = s_wn + 4 * CHUNK;
    let s_cols = s_wk + 4 * CHUNK;
    let col_sums = |w: u32, jt: u32| s_cols + 4 * (w * 2 + jt) * TILE;

    let head = bh as u64;
    let hk = head * nc as u64 + k as u64;
    let rows_of = |ptr: u64, dim: u32| ptr + head * (s as u64) * (dim as u64) * 2;
    let padded = (nc * l) as u64;
    let plane = |pl: u32| p.ptr.row_coef + (pl as u64 * p.bh as u64 + head) * padded * 4;
    let state = hk * (dqk as u64) * (dhv as u64) * 2;
    unsafe {
        // 1: what dq's inter-chunk term and every gating needs.
        stage::rows::<THREADS, { TILE_D / 8 }>(
            sdh,
            rows_of(p.ptr.dh, dhv),
            (t0, s),
            (0, dhv),
            CHUNK,
        );
        stage::rows::<THREADS, { TILE_D / 8 }>(
            sc,
            p.ptr.c_states + state,
            (0, dqk),
            (0, dhv),
            TILE_D,
        );
        // (The planes run to NC·L; what rows past S hold is masked by i < len.)
        let span = (t0, nc * l);
        stage::f32_vec::<THREADS>(s_r, plane(rows::R_LOG2), span, CHUNK);
        stage::f32_vec::<THREADS>(s_rho, plane(rows::RHO), span, CHUNK);
        stage::f32_vec::<THREADS>(s_delta, plane(rows::DELTA), span, CHUNK);
        stage::f32_vec::<THREADS>(s_u, p.ptr.gate_u + head * padded * 4, span, CHUNK);
        stage::f32_vec::<THREADS>(s_wq, plane(rows::WQ), span, CHUNK);
        if normalizer {
            stage::f32_vec::<THREADS>(s_wn, plane(rows::WN), span, CHUNK);
        }
        stage::f32_vec::<THREADS>(s_wk, plane(rows::WK), span, CHUNK);
        cp_async::commit();
        // 2: the scores' other operands.
        stage::rows::<THREADS, { TILE_D / 8 }>(sq, rows_of(p.ptr.q, dqk), (t0, s), (0, dqk), CHUNK);
        stage::rows::<THREADS, { TILE_D / 8 }>(sk, rows_of(p.ptr.k, dqk), (t0, s), (0, dqk), CHUNK);
        stage::rows::<THREADS, { TILE_D / 8 }>(sv, rows_of(p.ptr.v, dhv), (t0, s), (0, dhv), CHUNK);
        cp_async::commit();
        // 3: the state gradient, for dk and dv.
        stage::rows::<THREADS, { TILE_D / 8 }>(
            sdc,
            p.ptr.dc_states + state,
            (0, dqk),
            (0, dhv),
            TILE_D,
        );
        cp_async::commit();
    }

    // The warp's rows (chunk-relative) of accumulator element e: query rows for dq, key rows
    // for dk and dv.
    let row = |e: usize| warp * 16 + acc_pos(lane, e).0;
    let active = warp * 16 < len;
    // Their per-row coefficients, staged.
    let coef = |base: u32| [0, 2].map(|e| unsafe { shared::ld_f32(base + 4 * row(e)) });

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
    // acc = r ⊙ acc + e ⊗ u, u the out_dim f32 at `u` where `with_u` (else 0).
    let scale_rows = #[inline(always)]
    |acc: &mut Acc,
                      r: [f32; 2],
                      e: [f32; 2],
                      (u, with_u): (u64, bool),
                      out_dim: u32| {
        let lane = thread::opaque(lane);
        unroll!(16, nb => {
            let c = nb as u32 * 8 + acc_pos(lane, 0).1;
            let u = unsafe { global::ld_v2_f32_or_zero(with_u && c < out_dim, u + c as u64 * 4) };
            unroll!(2, half => {
                let x = &mut acc[nb];
                x[2 * half] = r[half] * x[2 * half] + e[half] * u[0];
                x[2 * half + 1] = r[half] * x[2 * half + 1] + e[half] * u[1];
            });
        });
    };
    // Row-dot plane `pl` of the warp's rows: Σ_c x[row, c]·c_out·acc[row, c], x staged.
    let col_tiles = combine::col_tiles(dqk) as u64;
    let row_dot = #[inline(always)]
    |acc: &Acc, x: SmemTile, c_out: f32, pl: u32| {
        let lane = thread::opaque(lane);
        unroll!(2, half => {
            let e = 2 * half;
            let rr = warp * 16 + acc_pos(lane, e).0;
            let mut dot = 0f32;
            unroll!(16, nb => {
                let c = nb as u32 * 8 + acc_pos(lane, e).1;
                let (x0, x1) = E::unpack(unsafe { shared::ld_u32(x.offset(rr, c)) });
                dot += x0 * acc[nb][e] + x1 * acc[nb][e + 1];
            });
            dot += unsafe { shfl::xor_f32(dot, 1) };
            dot += unsafe { shfl::xor_f32(dot, 2) };
            dot *= c_out;
            if rr < len && lane.is_multiple_of(4) {
                let at = (pl as u64 * p.bh as u64 * padded + head * padded + (t0 + rr) as u64)
                    * col_tiles;
                unsafe { global::st_f32(p.ptr.row_dots + at * 4, dot) };
            }
        });
    };
    // Stores c_out·acc into the warp's rows of (BH, S, out_dim) `out`.
    let store = #[inline(always)]
    |acc: &Acc, c_out: f32, out: u64, out_dim: u32| {
        let lane = thread::opaque(lane);
        let base = out + head * (s as u64) * (out_dim as u64) * 2;
        unroll!(2, half => {
            let e = 2 * half;
            let rr = warp * 16 + acc_pos(lane, e).0;
            unroll!(16, nb => {
                let c = nb as u32 * 8 + acc_pos(lane, e).1;
                let v = E::pack(c_out * acc[nb][e], c_out * acc[nb][e + 1]);
                let at = base + ((t0 + rr) as u64 * out_dim as u64 + c as u64) * 2;
                unsafe { global::st_b32_if(rr < len && c < out_dim, at, v) };
            });
        });
    };
    let tiles = scores::tiles(l) as u64;
    let own_tile = warp / 4;

    // dq̂ = α ρ C̃_k dh + α δ ñ_k + Σ_{j ≤ i} dP_ij k_j (dq = scale·dq̂).
    unsafe {
        cp_async::wait::<2>();
        thread::sync_threads();
    }
    let mut acc = [[0f32; 4]; NB];
    if active {
        mma_ab(&mut acc, sdh, sc, dhv, true);
        let n_k = p.ptr.n_states + hk * dqk as u64 * 4;
        let wn = if normalizer { coef(s_wn) } else { [0.0; 2] };
        scale_rows(&mut acc, coef(s_wq), wn, (n_k, normalizer), dqk);
    }
    unsafe {
        cp_async::wait::<1>();
        thread::sync_threads();
    }
    if active {
        row_dot(&acc, sq, p.scale, combine::DOT_Q_INTER);
        let ld = |base: u32, e: usize| unsafe { shared::ld_f32(base + 4 * row(e)) };
        let (r_i, rho, delta) = (
            [ld(s_r, 0), ld(s_r, 2)],
            [ld(s_rho, 0), ld(s_rho, 2)],
            [ld(s_delta, 0), ld(s_delta, 2)],
        );
        // Key tiles up to the warp's rows (a loop, as the k-steps).
        for jt in 0..=own_tile {
            let j0 = jt * TILE;
            let (sacc, mut dp) = score_pair(j0);
            // dP = W ⊙ (dS ρ + δ), W_ij = 2^(R_i + C_j) for j ≤ i < len; G_ij = scale·S_ij·dP_ij
            // for j < i, summed per row over the tile and per column over the warp's rows.
            let mut row_sum = [0f32; 2];
            unroll!(8, nb => {
                unroll!(2, x => {
                    let j = j0 + nb as u32 * 8 + acc_pos(lane, 0).1 + x as u32;
                    let c_j = unsafe { shared::ld_f32(s_u + 4 * j) } * math::LOG2_E;
                    let mut col = 0f32;
                    unroll!(2, half => {
                        let e = 2 * half + x;
                        let i = row(e);
                        let w = math::exp2(r_i[half] + c_j);
                        let w = if j <= i && i < len { w } else { 0.0 };
                        let sc = sacc[nb][e] * p.scale;
                        let d = w * (dp[nb][e] * rho[half] + delta[half]);
                        dp[nb][e] = d;
                        let g = if j < i { sc * d } else { 0.0 };
                        row_sum[half] += g;
                        col += g;
                    });
                    col += unsafe { shfl::xor_f32(col, 4) };
                    col += unsafe { shfl::xor_f32(col, 8) };
                    col += unsafe { shfl::xor_f32(col, 16) };
                    if lane < 4 {
                        let cc = nb as u32 * 8 + lane * 2 + x as u32;
                        unsafe { shared::st_f32(col_sums(warp, jt) + 4 * cc, col) };
                    }
                });
            });
            unroll!(2, half => {
                let mut sum = row_sum[half];
                sum += unsafe { shfl::xor_f32(sum, 1) };
                sum += unsafe { shfl::xor_f32(sum, 2) };
                let i = row(2 * half);
                if lane.is_multiple_of(4) && i < len {
                    let at = (head * padded + (t0 + i) as u64) * tiles + jt as u64;
                    unsafe { global::st_f32(p.ptr.pair_sums + at * 4, sum) };
                }
            });
            mma_tile(&mut acc, &dp, sk, j0);
        }
        store(&acc, p.scale, p.ptr.dq, dqk);
    }
    unsafe {
        cp_async::wait::<0>();
        thread::sync_threads();
    }

    // Column sums of the pair gradients per (row tile, key tile ≤ it), over the row tile's warps.
    if tid < scores::pairs(CHUNK) * TILE {
        let pair = tid / TILE;
        let it = pair.div_ceil(2);
        let jt = pair - scores::pair_index(it, 0);
        let j = jt * TILE + tid % TILE;
        if it * TILE < len && j < len {
            let mut c = 0f32;
            for w in 4 * it..4 * it + 4 {
                if w * 16 < len {
                    c += unsafe { shared::ld_f32(col_sums(w, jt) + 4 * (tid % TILE)) };
                }
            }
            let at = (p.bh as u64 + head) * padded * tiles + (t0 + j) as u64 * tiles + it as u64;
            unsafe { global::st_f32(p.ptr.pair_sums + at * 4, c) };
        }
    }

    // Column terms of query column i of a transposed tile: R_i, ρ_i, δ_i.
    let col = |base: u32, i: u32| unsafe { shared::ld_f32(base + 4 * i) };
    if active {
        let c_j = [0, 2].map(|e| unsafe { shared::ld_f32(s_u + 4 * row(e)) } * math::LOG2_E);
        // W_ij for the element (key row j, query column i) of a transposed tile. Each pass
        // forms its own from an opaque lane: else the compiler keeps the first pass's weights
        // (and ρ_i) live for the second, and spills.
        let weight = #[inline(always)]
        |lane: u32, e: usize, i: u32| {
            let j = warp * 16 + acc_pos(lane, e).0;
            let w = math::exp2(col(s_r, i) + c_j[e / 2]);
            if j <= i && i < len { w } else { 0.0 }
        };

        // dv_j = w_j dC̃_{k+1}ᵀ k_j + Σ_{i ≥ j} P_ij dh_i.
        let mut acc = [[0f32; 4]; NB];
        mma_ab(&mut acc, sk, sdc, dqk, false);
        scale_rows(&mut acc, coef(s_wk), [0.0; 2], (0, false), dhv);
        for it in own_tile..len.div_ceil(TILE) {
            let i0 = it * TILE;
            let mut pt = score_tile(sk, sq, i0, dqk);
            let lane = thread::opaque(lane);
            unroll!(8, nb => {
                unroll!(4, e => {
                    let i = i0 + nb as u32 * 8 + acc_pos(lane, e).1;
                    pt[nb][e] = weight(lane, e, i) * (pt[nb][e] * p.scale) * col(s_rho, i);
                });
            });
            mma_tile(&mut acc, &pt, sdh, i0);
        }
        store(&acc, 1.0, p.ptr.dv, dhv);

        // dk_j = w_j (dC̃_{k+1} v_j + dñ_{k+1}) + scale · Σ_{i ≥ j} dP_ij q_i.
        let mut acc = [[0f32; 4]; NB];
        mma_ab(&mut acc, sv, sdc, dhv, true);
        let r = coef(s_wk).map(|w| (1.0 / p.scale) * w);
        let dn = p.ptr.dn_states + hk * dqk as u64 * 4;
        let e = if normalizer { r } else { [0.0; 2] };
        scale_rows(&mut acc, r, e, (dn, normalizer), dqk);
        row_dot(&acc, sk, p.scale, combine::DOT_K_INTER);
        for it in own_tile..len.div_ceil(TILE) {
            let i0 = it * TILE;
            let mut dpt = score_tile(sv, sdh, i0, dhv);
            let lane = thread::opaque(lane);
            unroll!(8, nb => {
                unroll!(4, e => {
                    let i = i0 + nb as u32 * 8 + acc_pos(lane, e).1;
                    dpt[nb][e] = weight(lane, e, i) * (dpt[nb][e] * col(s_rho, i) + col(s_delta, i));
                });
            });
            mma_tile(&mut acc, &dpt, sq, i0);
        }
        row_dot(&acc, sk, p.scale, combine::DOT_K);
        store(&acc, p.scale, p.ptr.dk, dqk);
    }
}
