//! What the two chunk-gradient kernels share, `bwd_chunk` (`mma.sync`) and `bwd_chunk_wg`
//! (`wgmma`): the chunk's row vectors staged beside the operands, the three passes (dq, dv,
//! dk) over the kernel's products ([`ChunkProducts`]), the gating of the score tiles a warp
//! holds in registers, the pair and column sums of the forget-gate gradient, and the rows'
//! scaling, row dots and stores (notation as in `bwd_chunk`). Warp w owns rows 16w .. 16w + 16
//! of every tile in both kernels: its `mma.sync` fragments, or its part of a warpgroup's
//! `wgmma` accumulator, which is the same layout ([`Frags`]).
use crate::arch::convert::Elem;
use crate::arch::{cp_async, global, math, shared, shfl, thread};
use crate::tile::acc_pos;
use tfla_params::bwd::{BwdParams, chunk::*, combine, rows, scores};

/// A warp's accumulator fragments, n-block (8 columns) nb, element e (`acc_pos`): nested
/// (`[[f32; 4]; N]`, one `mma.sync` result per n-block) or flat (`[f32; 4·N]`, a `wgmma`
/// accumulator).
pub trait Frags {
    fn at(&self, nb: usize, e: usize) -> f32;
    fn at_mut(&mut self, nb: usize, e: usize) -> &mut f32;
}

impl<const N: usize> Frags for [[f32; 4]; N] {
    #[inline(always)]
    fn at(&self, nb: usize, e: usize) -> f32 {
        self[nb][e]
    }
    #[inline(always)]
    fn at_mut(&mut self, nb: usize, e: usize) -> &mut f32 {
        &mut self[nb][e]
    }
}

impl<const N: usize> Frags for [f32; N] {
    #[inline(always)]
    fn at(&self, nb: usize, e: usize) -> f32 {
        self[4 * nb + e]
    }
    #[inline(always)]
    fn at_mut(&mut self, nb: usize, e: usize) -> &mut f32 {
        &mut self[4 * nb + e]
    }
}

/// A kernel's products on its staged operands (by [`slot`]), each over the calling warp's (or
/// warpgroup's) rows and finished when it returns: `mma.sync` per warp in `bwd_chunk`, `wgmma`
/// per warpgroup in `bwd_chunk_wg`. The passes ([`ChunkTerms::dq_inter`] and after) are
/// written once over them.
pub trait ChunkProducts {
    /// The rows × TILE_D columns of dq, dk or dv.
    type Acc: Frags;
    /// The rows × TILE columns of a score tile.
    type Tile: Frags;
    fn zero_acc(&self) -> Self::Acc;
    /// acc = the rows of operand `a` times operand `b`, b stored (n, k) where `nk`, else
    /// (k, n). (Every product sums over the head dim of `a`'s columns: [`slot::head_dim`].)
    fn product(&self, acc: &mut Self::Acc, a: u32, b: u32, nk: bool);
    /// dq's score tiles of key tile j0..: S = Q·Kᵀ and dS = dH·Vᵀ.
    fn score_pair(&self, j0: u32) -> (Self::Tile, Self::Tile);
    /// The rows of operand `a` times rows n0 .. n0 + TILE of `b`, transposed.
    fn scores(&self, a: u32, b: u32, n0: u32) -> Self::Tile;
    /// acc += T·Z: T a gated score tile, Z rows z0 .. z0 + TILE of operand `z`.
    fn mma_tile(&self, acc: &mut Self::Acc, t: &Self::Tile, z: u32, z0: u32);
    /// The shared address of element pair (r, c) of operand `x`, for the row dots.
    fn elem(&self, x: u32, r: u32, c: u32) -> u32;
}

/// n-blocks of a dq, dk or dv row tile and of a score tile.
const NB: usize = (TILE_D / 8) as usize;
const TB: usize = (TILE / 8) as usize;

/// One block's chunk and the calling warp's place in it: where the row vectors are staged,
/// where the pair sums, row dots and gradients go.
pub struct ChunkTerms<'a> {
    p: &'a BwdParams,
    lane: u32,
    warp: u32,
    pub t0: u32,
    /// Steps in the chunk (the last chunk may be ragged).
    pub len: u32,
    head: u64,
    /// The (head, chunk) index of the states.
    pub hk: u64,
    padded: u64,
    tiles: u64,
    s_r: u32,
    s_rho: u32,
    s_delta: u32,
    s_u: u32,
    s_wq: u32,
    s_wn: u32,
    s_wk: u32,
    s_cols: u32,
}

impl<'a> ChunkTerms<'a> {
    /// The block's chunk, its row vectors and column sums at shared address `vectors`.
    #[inline(always)]
    pub fn at(p: &'a BwdParams, vectors: u32) -> Self {
        let tid = thread::thread_idx();
        let (k, bh, _) = thread::block_idx();
        let t0 = k * p.chunk;
        let s_r = vectors;
        Self {
            p,
            lane: tid % 32,
            warp: tid / 32,
            t0,
            len: p.chunk.min(p.s - t0),
            head: bh as u64,
            hk: bh as u64 * p.num_chunks as u64 + k as u64,
            padded: (p.num_chunks * p.chunk) as u64,
            tiles: scores::tiles(p.chunk) as u64,
            s_r,
            s_rho: s_r + 4 * CHUNK,
            s_delta: s_r + 8 * CHUNK,
            s_u: s_r + 12 * CHUNK,
            s_wq: s_r + 16 * CHUNK,
            s_wn: s_r + 20 * CHUNK,
            s_wk: s_r + 24 * CHUNK,
            s_cols: s_r + VECTORS * 4 * CHUNK,
        }
    }

    /// Global address of this head's rows of a (BH, S, dim) 16-bit tensor.
    #[inline(always)]
    fn rows_of(&self, ptr: u64, dim: u32) -> u64 {
        ptr + self.head * (self.p.s as u64) * (dim as u64) * 2
    }

    /// Issues the chunk's three `cp.async` groups, in the order the passes need them: dH, C̃_k
    /// and the row vectors (dq's inter-chunk term, every gating); Q, K, V (the scores); dC̃_{k+1}
    /// (dk, dv). `operand(slot, global, rows, cols, n)` stages n rows of a row-major 16-bit
    /// tensor (`stage::rows` and its swizzled twin) into operand [`slot`] `slot`.
    ///
    /// # Safety
    /// Called by all THREADS threads of the block.
    #[inline(always)]
    pub unsafe fn stage(&self, normalizer: bool, operand: impl Fn(u32, u64, (u32, u32), (u32, u32), u32)) {
        let p = self.p;
        let (dqk, dhv) = (p.dqk, p.dhv);
        let state = self.hk * (dqk as u64) * (dhv as u64) * 2;
        let rows = (self.t0, p.s);
        unsafe {
            operand(slot::DH, self.rows_of(p.ptr.dh, dhv), rows, (0, dhv), CHUNK);
            operand(slot::C, p.ptr.c_states + state, (0, dqk), (0, dhv), TILE_D);
            self.stage_vectors(normalizer);
            cp_async::commit();
            operand(slot::Q, self.rows_of(p.ptr.q, dqk), rows, (0, dqk), CHUNK);
            operand(slot::K, self.rows_of(p.ptr.k, dqk), rows, (0, dqk), CHUNK);
            operand(slot::V, self.rows_of(p.ptr.v, dhv), rows, (0, dhv), CHUNK);
            cp_async::commit();
            operand(slot::DC, p.ptr.dc_states + state, (0, dqk), (0, dhv), TILE_D);
            cp_async::commit();
        }
    }

    /// Issues the `cp.async` copies of the chunk's row vectors R, ρ, δ, u, α ρ, α δ (with the
    /// `normalizer`) and w.
    ///
    /// # Safety
    /// Called by all THREADS threads of the block.
    #[inline(always)]
    unsafe fn stage_vectors(&self, normalizer: bool) {
        let p = self.p;
        let plane =
            |pl: u32| p.ptr.row_coef + (pl as u64 * p.bh as u64 + self.head) * self.padded * 4;
        // (The planes run to NC·L; what rows past S hold is masked by i < len.)
        let span = (self.t0, p.num_chunks * p.chunk);
        unsafe {
            use super::stage::f32_vec;
            f32_vec::<THREADS>(self.s_r, plane(rows::R_LOG2), span, CHUNK);
            f32_vec::<THREADS>(self.s_rho, plane(rows::RHO), span, CHUNK);
            f32_vec::<THREADS>(self.s_delta, plane(rows::DELTA), span, CHUNK);
            f32_vec::<THREADS>(self.s_u, p.ptr.gate_u + self.head * self.padded * 4, span, CHUNK);
            f32_vec::<THREADS>(self.s_wq, plane(rows::WQ), span, CHUNK);
            if normalizer {
                f32_vec::<THREADS>(self.s_wn, plane(rows::WN), span, CHUNK);
            }
            f32_vec::<THREADS>(self.s_wk, plane(rows::WK), span, CHUNK);
        }
    }

    /// dq̂'s inter-chunk term, α ρ C̃_k dh + α δ ñ_k, of the caller's rows (dH, C̃_k and the row
    /// vectors landed).
    #[inline(always)]
    pub fn dq_inter<O: ChunkProducts>(&self, ops: &O, normalizer: bool) -> O::Acc {
        let mut acc = ops.zero_acc();
        ops.product(&mut acc, slot::DH, slot::C, true);
        self.scale_dq(&mut acc, normalizer);
        acc
    }

    /// dq̂ += Σ_{j ≤ i} dP_ij k_j over key tiles 0 ..= `last` (those up to the caller's rows),
    /// with the row dots and the store of dq = scale·dq̂ (Q, K and V landed).
    #[inline(always)]
    pub fn dq_intra<E: Elem, O: ChunkProducts>(&self, ops: &O, mut acc: O::Acc, last: u32) {
        let p = self.p;
        self.row_dot::<E, _>(&acc, |r, c| ops.elem(slot::Q, r, c), p.scale, combine::DOT_Q_INTER);
        let rows = self.query_rows();
        // (A loop: the k-steps are one too.)
        for jt in 0..=last {
            let (sacc, mut dp) = ops.score_pair(jt * TILE);
            self.gate_dp(jt, rows, &sacc, &mut dp);
            ops.mma_tile(&mut acc, &dp, slot::K, jt * TILE);
        }
        self.store::<E, _>(&acc, p.scale, p.ptr.dq, p.dqk);
    }

    /// dv and dk of the caller's key rows over query tiles `first` .. (those from the caller's
    /// rows on; every operand landed):
    /// dv_j = w_j dC̃_{k+1}ᵀ k_j + Σ_{i ≥ j} P_ij dh_i,
    /// dk_j = w_j (dC̃_{k+1} v_j + dñ_{k+1}) + scale · Σ_{i ≥ j} dP_ij q_i.
    #[inline(always)]
    pub fn dv_dk<E: Elem, O: ChunkProducts>(&self, ops: &O, first: u32, normalizer: bool) {
        let p = self.p;
        let tiles = first..self.len.div_ceil(TILE);
        let c_j = self.key_rows();

        let mut acc = ops.zero_acc();
        ops.product(&mut acc, slot::K, slot::DC, false);
        self.scale_dv(&mut acc);
        for it in tiles.clone() {
            let mut pt = ops.scores(slot::K, slot::Q, it * TILE);
            self.gate_pt(c_j, it * TILE, &mut pt);
            ops.mma_tile(&mut acc, &pt, slot::DH, it * TILE);
        }
        self.store::<E, _>(&acc, 1.0, p.ptr.dv, p.dhv);

        let mut acc = ops.zero_acc();
        ops.product(&mut acc, slot::V, slot::DC, true);
        self.scale_dk(&mut acc, normalizer);
        let k = |r, c| ops.elem(slot::K, r, c);
        self.row_dot::<E, _>(&acc, k, p.scale, combine::DOT_K_INTER);
        for it in tiles {
            let mut dpt = ops.scores(slot::V, slot::DH, it * TILE);
            self.gate_dpt(c_j, it * TILE, &mut dpt);
            ops.mma_tile(&mut acc, &dpt, slot::Q, it * TILE);
        }
        self.row_dot::<E, _>(&acc, k, p.scale, combine::DOT_K);
        self.store::<E, _>(&acc, p.scale, p.ptr.dk, p.dqk);
    }

    /// The warp's row (chunk-relative) of accumulator element e: a query row for dq, a key
    /// row for dk and dv.
    #[inline(always)]
    pub fn row(&self, e: usize) -> u32 {
        self.warp * 16 + acc_pos(self.lane, e).0
    }

    /// A staged row vector at the warp's rows (elements 0 and 2).
    #[inline(always)]
    fn coef(&self, base: u32) -> [f32; 2] {
        [0, 2].map(|e| unsafe { shared::ld_f32(base + 4 * self.row(e)) })
    }

    /// dq's inter-chunk term, scaled: acc = α ρ ⊙ acc + α δ ⊗ ñ_k (the latter with the
    /// `normalizer`).
    #[inline(always)]
    pub fn scale_dq<A: Frags>(&self, acc: &mut A, normalizer: bool) {
        let n_k = self.p.ptr.n_states + self.hk * self.p.dqk as u64 * 4;
        let wn = if normalizer {
            self.coef(self.s_wn)
        } else {
            [0.0; 2]
        };
        self.scale_rows(acc, self.coef(self.s_wq), wn, (n_k, normalizer), self.p.dqk);
    }

    /// dv's inter-chunk term, scaled: acc = w ⊙ acc.
    #[inline(always)]
    pub fn scale_dv<A: Frags>(&self, acc: &mut A) {
        self.scale_rows(acc, self.coef(self.s_wk), [0.0; 2], (0, false), self.p.dhv);
    }

    /// dk's inter-chunk term, scaled: acc = (w / scale) ⊙ (acc + dñ_{k+1}) (dñ with the
    /// `normalizer`).
    #[inline(always)]
    pub fn scale_dk<A: Frags>(&self, acc: &mut A, normalizer: bool) {
        let r = self.coef(self.s_wk).map(|w| (1.0 / self.p.scale) * w);
        let dn = self.p.ptr.dn_states + self.hk * self.p.dqk as u64 * 4;
        let e = if normalizer { r } else { [0.0; 2] };
        self.scale_rows(acc, r, e, (dn, normalizer), self.p.dqk);
    }

    /// acc = r ⊙ acc + e ⊗ u, u the out_dim f32 at `u` where `with_u` (else 0).
    #[inline(always)]
    fn scale_rows<A: Frags>(
        &self,
        acc: &mut A,
        r: [f32; 2],
        e: [f32; 2],
        (u, with_u): (u64, bool),
        out_dim: u32,
    ) {
        let lane = thread::opaque(self.lane);
        unroll!(16, nb => {
            let c = nb as u32 * 8 + acc_pos(lane, 0).1;
            let u = unsafe { global::ld_v2_f32_or_zero(with_u && c < out_dim, u + c as u64 * 4) };
            unroll!(2, half => {
                let x = acc.at_mut(nb, 2 * half);
                *x = r[half] * *x + e[half] * u[0];
                let x = acc.at_mut(nb, 2 * half + 1);
                *x = r[half] * *x + e[half] * u[1];
            });
        });
    }

    /// Row-dot plane `pl` of the warp's rows: Σ_c x[row, c]·c_out·acc[row, c], x staged (the
    /// shared address of its element pair (r, c) from `x`).
    #[inline(always)]
    pub fn row_dot<E: Elem, A: Frags>(
        &self,
        acc: &A,
        x: impl Fn(u32, u32) -> u32,
        c_out: f32,
        pl: u32,
    ) {
        let p = self.p;
        let col_tiles = combine::col_tiles(p.dqk) as u64;
        let lane = thread::opaque(self.lane);
        unroll!(2, half => {
            let e = 2 * half;
            let rr = self.warp * 16 + acc_pos(lane, e).0;
            let mut dot = 0f32;
            unroll!(16, nb => {
                let c = nb as u32 * 8 + acc_pos(lane, e).1;
                let (x0, x1) = E::unpack(unsafe { shared::ld_u32(x(rr, c)) });
                dot += x0 * acc.at(nb, e) + x1 * acc.at(nb, e + 1);
            });
            dot += unsafe { shfl::xor_f32(dot, 1) };
            dot += unsafe { shfl::xor_f32(dot, 2) };
            dot *= c_out;
            if rr < self.len && lane.is_multiple_of(4) {
                let at = (pl as u64 * p.bh as u64 * self.padded
                    + self.head * self.padded
                    + (self.t0 + rr) as u64)
                    * col_tiles;
                unsafe { global::st_f32(p.ptr.row_dots + at * 4, dot) };
            }
        });
    }

    /// Stores c_out·acc into the warp's rows of (BH, S, out_dim) `out`. A lane holds two
    /// columns (4 bytes) of each 8-column block, so the warp's store of one block fills half
    /// of each row's 32-byte sector; instead lanes 2m and 2m + 1 swap a pair of neighbouring
    /// blocks' values and store 8 bytes each, the even lane in the first block, the odd lane
    /// in the second, which fills the sector (head dims are multiples of 16, so a pair of
    /// blocks lies wholly inside or outside `out_dim`).
    #[inline(always)]
    pub fn store<E: Elem, A: Frags>(&self, acc: &A, c_out: f32, out: u64, out_dim: u32) {
        let lane = thread::opaque(self.lane);
        let odd = lane % 2 == 1;
        let base = out + self.head * (self.p.s as u64) * (out_dim as u64) * 2;
        unroll!(2, half => {
            let e = 2 * half;
            let (rr, c_lane) = acc_pos(lane, e);
            let rr = self.warp * 16 + rr;
            unroll!(8, pair => {
                let pack = |nb: usize| E::pack(c_out * acc.at(nb, e), c_out * acc.at(nb, e + 1));
                let (first, second) = (pack(2 * pair), pack(2 * pair + 1));
                let theirs = unsafe { shfl::xor_u32(if odd { first } else { second }, 1) };
                let (nb, v) = if odd {
                    (2 * pair as u32 + 1, [theirs, second])
                } else {
                    (2 * pair as u32, [first, theirs])
                };
                let c = nb * 8 + (c_lane & !3);
                let at = base + ((self.t0 + rr) as u64 * out_dim as u64 + c as u64) * 2;
                unsafe { global::st_v2_b32_if(rr < self.len && c < out_dim, at, v) };
            });
        });
    }

    /// The terms of dq's gating at the warp's query rows: R_i, ρ_i, δ_i.
    #[inline(always)]
    pub fn query_rows(&self) -> [[f32; 2]; 3] {
        [self.s_r, self.s_rho, self.s_delta].map(|b| self.coef(b))
    }

    /// dq's score tiles of key tile jt into dP: dp = W ⊙ (dS ρ + δ), W_ij = 2^(R_i + C_j) for
    /// j ≤ i < len, given S in `sacc` and dS in `dp`; the pair gradients G_ij = scale·S_ij·dP_ij
    /// (j < i) summed per row over the tile (stored) and per column over the warp's rows
    /// (staged for [`ChunkTerms::column_sums`]). `rows` from [`ChunkTerms::query_rows`].
    #[inline(always)]
    pub fn gate_dp<T: Frags>(&self, jt: u32, rows: [[f32; 2]; 3], sacc: &T, dp: &mut T) {
        let (p, lane) = (self.p, self.lane);
        let [r_i, rho, delta] = rows;
        let j0 = jt * TILE;
        let mut row_sum = [0f32; 2];
        unroll!(8, nb => {
            unroll!(2, x => {
                let j = j0 + nb as u32 * 8 + acc_pos(lane, 0).1 + x as u32;
                let c_j = unsafe { shared::ld_f32(self.s_u + 4 * j) } * math::LOG2_E;
                let mut col = 0f32;
                unroll!(2, half => {
                    let e = 2 * half + x;
                    let i = self.row(e);
                    let w = math::exp2(r_i[half] + c_j);
                    let w = if j <= i && i < self.len { w } else { 0.0 };
                    let sc = sacc.at(nb, e) * p.scale;
                    let d = w * (dp.at(nb, e) * rho[half] + delta[half]);
                    *dp.at_mut(nb, e) = d;
                    let g = if j < i { sc * d } else { 0.0 };
                    row_sum[half] += g;
                    col += g;
                });
                col += unsafe { shfl::xor_f32(col, 4) };
                col += unsafe { shfl::xor_f32(col, 8) };
                col += unsafe { shfl::xor_f32(col, 16) };
                if lane < 4 {
                    let cc = nb as u32 * 8 + lane * 2 + x as u32;
                    unsafe { shared::st_f32(self.col_sums(self.warp, jt) + 4 * cc, col) };
                }
            });
        });
        unroll!(2, half => {
            let mut sum = row_sum[half];
            sum += unsafe { shfl::xor_f32(sum, 1) };
            sum += unsafe { shfl::xor_f32(sum, 2) };
            let i = self.row(2 * half);
            if lane.is_multiple_of(4) && i < self.len {
                let at = (self.head * self.padded + (self.t0 + i) as u64) * self.tiles + jt as u64;
                unsafe { global::st_f32(p.ptr.pair_sums + at * 4, sum) };
            }
        });
    }

    /// Where warp w's partial column sums of key tile jt are staged.
    #[inline(always)]
    fn col_sums(&self, w: u32, jt: u32) -> u32 {
        self.s_cols + 4 * (w * 2 + jt) * TILE
    }

    /// Column sums of the pair gradients per (row tile, key tile ≤ it), over the row tile's
    /// warps, stored: by threads `tid` < pairs·TILE, after a barrier that follows every warp's
    /// [`ChunkTerms::gate_dp`].
    #[inline(always)]
    pub fn column_sums(&self, tid: u32) {
        let p = self.p;
        if tid < scores::pairs(CHUNK) * TILE {
            let pair = tid / TILE;
            let it = pair.div_ceil(2);
            let jt = pair - scores::pair_index(it, 0);
            let j = jt * TILE + tid % TILE;
            if it * TILE < self.len && j < self.len {
                let mut c = 0f32;
                for w in 4 * it..4 * it + 4 {
                    if w * 16 < self.len {
                        c += unsafe { shared::ld_f32(self.col_sums(w, jt) + 4 * (tid % TILE)) };
                    }
                }
                let at = (p.bh as u64 + self.head) * self.padded * self.tiles
                    + (self.t0 + j) as u64 * self.tiles
                    + it as u64;
                unsafe { global::st_f32(p.ptr.pair_sums + at * 4, c) };
            }
        }
    }

    /// The column terms C_j of the warp's key rows, for the transposed tiles' weights.
    #[inline(always)]
    pub fn key_rows(&self) -> [f32; 2] {
        self.coef(self.s_u).map(|u| u * math::LOG2_E)
    }

    /// W_ij of element e (key row j, query column i) of a transposed tile, from the lane
    /// `lane`. (Each pass forms its own from an opaque lane: else the compiler keeps the first
    /// pass's weights, and ρ_i, live for the second, and spills.)
    #[inline(always)]
    fn weight(&self, lane: u32, c_j: [f32; 2], e: usize, i: u32) -> f32 {
        let j = self.warp * 16 + acc_pos(lane, e).0;
        let w = math::exp2(self.col(self.s_r, i) + c_j[e / 2]);
        if j <= i && i < self.len { w } else { 0.0 }
    }

    /// dv's transposed score tile of query tile i0..: Pᵀ = W ⊙ (scale·Sᵀ) ρ_i, given Sᵀ.
    #[inline(always)]
    pub fn gate_pt<T: Frags>(&self, c_j: [f32; 2], i0: u32, pt: &mut T) {
        let scale = self.p.scale;
        self.gate_transposed(c_j, i0, pt, |w, x, i| {
            w * (x * scale) * self.col(self.s_rho, i)
        });
    }

    /// dk's transposed score-gradient tile of query tile i0..: dPᵀ = W ⊙ (dSᵀ ρ_i + δ_i), given
    /// dSᵀ.
    #[inline(always)]
    pub fn gate_dpt<T: Frags>(&self, c_j: [f32; 2], i0: u32, dpt: &mut T) {
        self.gate_transposed(c_j, i0, dpt, |w, x, i| {
            w * (x * self.col(self.s_rho, i) + self.col(self.s_delta, i))
        });
    }

    /// t ← f(W, t, i) over a transposed tile of query tile i0.. (element e of n-block nb at
    /// query column i), W from [`ChunkTerms::weight`].
    #[inline(always)]
    fn gate_transposed<T: Frags>(
        &self,
        c_j: [f32; 2],
        i0: u32,
        t: &mut T,
        f: impl Fn(f32, f32, u32) -> f32,
    ) {
        let lane = thread::opaque(self.lane);
        unroll!(8, nb => {
            unroll!(4, e => {
                let i = i0 + nb as u32 * 8 + acc_pos(lane, e).1;
                let x = t.at_mut(nb, e);
                *x = f(self.weight(lane, c_j, e, i), *x, i);
            });
        });
    }

    /// Staged row vector `base` at query row i.
    #[inline(always)]
    fn col(&self, base: u32, i: u32) -> f32 {
        unsafe { shared::ld_f32(base + 4 * i) }
    }
}

const _: () = assert!(
    VECTORS == 7 && terms_bytes() == VECTORS * 4 * CHUNK + WARPS * 2 * TILE * 4,
    "`ChunkTerms::at` lays out seven row vectors, then the column sums, in `terms_bytes()`"
);
const _: () = assert!(
    NB == 16 && TB == 8,
    "the unroll! counts above assume 16 output n-blocks and 8 score n-blocks"
);
