//! What the two chunk-output kernels (`chunk_output` on `mma.sync`, `chunk_output_wg` on
//! `wgmma`) share around their multiplies: the gate terms of a tile, staged in shared memory
//! before the item loop, and the epilogue that normalizes h and stores it (notation as in
//! `chunk_output`).
use super::gates::GateKind;
use crate::arch::convert::Elem;
use crate::arch::{global, math, shared, shfl, thread};
use crate::tile::{acc_pos, leads_quad};
use tfla_params::fwd::FwdParams;

/// Where an output tile lies: rows i0.. of chunk k (whose first step is t0 and which has `len`
/// steps), value columns v0.., head `head`; `nkeys` its rows' key steps (up to its last row).
#[derive(Clone, Copy)]
pub struct OutTile {
    pub k: u32,
    pub i0: u32,
    pub t0: u32,
    pub len: u32,
    pub nkeys: u32,
    pub v0: u32,
    pub head: u64,
}

/// Shared-memory addresses of a tile's f32 row gate terms, tile_q each: the row term R_i, the
/// inter-chunk scale e^{m_k − M_i} (sig: e^{b_i}) and the normalizer floor e^{−m_i} (1 for
/// sig). (The column terms C_j = u_j·log2e live where each kernel has them: staged by
/// `stage_gate_terms`, or read from the staged u.)
#[derive(Clone, Copy)]
pub struct RowTerms {
    pub row_r: u32,
    pub row_scale: u32,
    pub row_floor: u32,
}

impl RowTerms {
    /// The vectors laid out from `base` for `tile_q` rows.
    #[inline(always)]
    pub fn at(base: u32, tile_q: u32) -> Self {
        RowTerms {
            row_r: base,
            row_scale: base + 4 * tile_q,
            row_floor: base + 8 * tile_q,
        }
    }
}

impl OutTile {
    /// This block's tile of `tile_q` rows × `tile_hv` value columns (grid: DHV tiles,
    /// NC · L / tile_q row tiles, BH), or None for a row tile past the end of a ragged last
    /// chunk (the whole block leaves).
    #[inline(always)]
    pub fn of_block(p: &FwdParams, tile_q: u32, tile_hv: u32) -> Option<Self> {
        let (bx, by, bh) = thread::block_idx();
        let row_tiles = p.chunk / tile_q;
        let (k, i0) = (by / row_tiles, (by % row_tiles) * tile_q);
        let v0 = bx * tile_hv;
        let t0 = k * p.chunk;
        if t0 + i0 >= p.s {
            return None;
        }
        let len = p.chunk.min(p.s - t0);
        Some(OutTile {
            k,
            i0,
            t0,
            len,
            nkeys: (i0 + tile_q).min(len),
            v0,
            head: bh as u64,
        })
    }

    /// Chunk k of the (BH, NC·L) gate vectors: the index of its first step.
    #[inline(always)]
    pub fn gate_row(&self, p: &FwdParams) -> u64 {
        self.head * ((p.num_chunks * p.chunk) as u64) + self.t0 as u64
    }

    /// The (head, chunk) index of the chunk states.
    #[inline(always)]
    pub fn hk(&self, p: &FwdParams) -> u64 {
        self.head * p.num_chunks as u64 + self.k as u64
    }

    /// The max state m_k before the tile's chunk, as the state kernel stored it (0 without the
    /// stabilizer).
    ///
    /// # Safety
    /// The state kernel has run (an earlier launch: read through the non-coherent path).
    #[inline(always)]
    pub unsafe fn stored_m_k<G: GateKind>(&self, p: &FwdParams) -> f32 {
        if G::STABILIZED {
            unsafe { global::ld_nc_f32(p.ptr.m_states + self.hk(p) * 4) }
        } else {
            0.0
        }
    }

    /// Fills `col` (C_j = u_j·log2e for the tile's key steps, f32) and `g` from the gate vectors
    /// of chunk_gates and the chunk's max state `m_k()` (thread `tid` of THREADS; TILE_Q rows): per row R_i
    /// (times log2e), the scale and the floor (rows past `len`: 0, 0, 1). Writes the rows' m_i
    /// where asked (first DHV tile only). A barrier follows before they are read. (`m_k` is
    /// called after the column terms are issued, so a load of it overlaps theirs.)
    ///
    /// # Safety
    /// chunk_gates has run; `g` lies in the launch's shared memory.
    #[inline(always)]
    pub unsafe fn stage_gate_terms<G: GateKind, const THREADS: u32, const TILE_Q: u32>(
        &self,
        p: &FwdParams,
        col: u32,
        g: RowTerms,
        m_k: impl FnOnce() -> f32,
        tid: u32,
    ) {
        let (gate_row, i0) = (self.gate_row(p), self.i0);
        let mut j = tid;
        while j < self.nkeys {
            let u = unsafe { global::ld_nc_f32(p.ptr.gate_u + (gate_row + j as u64) * 4) };
            unsafe { shared::st_f32(col + 4 * j, u * math::LOG2_E) };
            j += THREADS;
        }
        let m_k = m_k();
        if tid < TILE_Q {
            let i = gate_row + (i0 + tid) as u64;
            unsafe {
                self.put_row_terms::<G>(
                    p,
                    g,
                    tid,
                    || global::ld_nc_f32(p.ptr.gate_b + i * 4),
                    || global::ld_nc_f32(p.ptr.gate_cm + i * 4),
                    m_k,
                )
            };
        }
    }

    /// Row `row` of the tile's gate terms in `g` (see `stage_gate_terms`), from the row's
    /// b_i and cm_i (`b()`, and `cm()` only with the stabilizer; neither past `len`) and the
    /// chunk's max state `m_k`. Writes the row's m_i where asked (first DHV tile only).
    ///
    /// # Safety
    /// `g` lies in the launch's shared memory; `b` and `cm` read what chunk_gates wrote.
    #[inline(always)]
    pub unsafe fn put_row_terms<G: GateKind>(
        &self,
        p: &FwdParams,
        g: RowTerms,
        row: u32,
        b: impl FnOnce() -> f32,
        cm: impl FnOnce() -> f32,
        m_k: f32,
    ) {
        let (len, i) = (self.len, self.i0 + row);
        let (r, scale, floor, m_row) = if i >= len {
            (0.0, 0.0, 1.0, 0.0)
        } else {
            let b = b();
            if G::STABILIZED {
                let cm = cm();
                let big_m = m_k.max(cm);
                (
                    -big_m,
                    math::exp(m_k - big_m),
                    math::exp(-(b + big_m)),
                    b + big_m,
                )
            } else {
                (b, math::exp(b), 1.0, 0.0)
            }
        };
        unsafe {
            shared::st_f32(g.row_r + 4 * row, r * math::LOG2_E);
            shared::st_f32(g.row_scale + 4 * row, scale);
            shared::st_f32(g.row_floor + 4 * row, floor);
            if p.ptr.m_rows != 0 && self.v0 == 0 && i < len {
                global::st_f32(
                    p.ptr.m_rows + (self.head * p.s as u64 + (self.t0 + i) as u64) * 4,
                    m_row,
                );
            }
        }
    }

    /// Normalizes and stores the h rows of one warp: `wrow` its first row in the tile, rows
    /// wrow + g and + 8 (g = lane / 4); `acc(nb, e)` element e of its accumulator's n-block nb
    /// (GROUPS × 4 n-blocks), `row_sum` this lane's part of the rows' sums, `s_of(x, sum)` s_i
    /// of row half x from the sum over the quad. Writes s_i where asked (first DHV tile only).
    ///
    /// # Safety
    /// Warp-collective (shuffles); the gate terms are staged; `gh` is the head's h.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn store_h<E: Elem, G: GateKind, const GROUPS: usize>(
        &self,
        p: &FwdParams,
        g: RowTerms,
        (wrow, lane): (u32, u32),
        gh: u64,
        mut row_sum: [f32; 2],
        s_of: impl Fn(usize, f32) -> f32,
        acc: impl Fn(usize, usize) -> f32,
    ) {
        let (i0, t0, len, v0, dhv) = (self.i0, self.t0, self.len, self.v0, p.dhv);
        unroll!(2, x => {
            let rs = &mut row_sum[x];
            *rs += unsafe { shfl::xor_f32(*rs, 1) };
            *rs += unsafe { shfl::xor_f32(*rs, 2) };
            let rr = wrow + acc_pos(lane, 2 * x).0;
            let i = i0 + rr;
            let norm = p.scale * s_of(x, *rs); // s_i
            let den = if G::NORMALIZED {
                let floor = unsafe { shared::ld_f32(g.row_floor + 4 * rr) };
                norm.abs().max(floor) + p.eps
            } else {
                1.0
            };
            let factor = p.scale / den;
            let row = gh + ((t0 + i) as u64) * (dhv as u64) * 2;
            // The 4 lanes of a row hold columns 2t, 2t+1 of every n-block; a 4 × 4 transpose
            // within the quad (two butterfly shuffle stages) gives lane t all 8 columns of
            // n-block 4·grp + t, stored as one 16-byte vector: each store covers 64 contiguous
            // bytes per row (whole sectors) instead of 16. (Staging through shared memory would
            // do the same, but changed ptxas's schedule of `chunk_output`'s main loop:
            // `stage::store_rows`.)
            let (hi1, hi2) = (lane & 1 != 0, lane & 2 != 0);
            unroll!(8, grp => {
                if grp < GROUPS {
                    let mut v = [0u32; 4];
                    unroll!(4, j => {
                        let nb = 4 * grp + j;
                        v[j] = E::pack(acc(nb, 2 * x) * factor, acc(nb, 2 * x + 1) * factor);
                    });
                    // v[j] holds M[lane][j] (M[s][j]: lane s's pair of n-block j); afterwards
                    // v[q] holds M[q][lane].
                    unroll!(2, p => {
                        let send = if hi2 { v[p] } else { v[p + 2] };
                        let got = unsafe { shfl::xor_f32(f32::from_bits(send), 2) }.to_bits();
                        if hi2 { v[p] = got } else { v[p + 2] = got }
                    });
                    unroll!(2, p => {
                        let p = 2 * p;
                        let send = if hi1 { v[p] } else { v[p + 1] };
                        let got = unsafe { shfl::xor_f32(f32::from_bits(send), 1) }.to_bits();
                        if hi1 { v[p] = got } else { v[p + 1] = got }
                    });
                    let c = v0 + (4 * grp as u32 + lane % 4) * 8;
                    unsafe { global::st_v4_b32_if(i < len && c < dhv, row + c as u64 * 2, v) };
                }
            });
            if i < len && p.ptr.norm_rows != 0 && v0 == 0 && leads_quad(lane) {
                // Without the normalizer s_i is reported as 0 (no ñ is formed).
                let norm = if G::NORMALIZED { norm } else { 0.0 };
                let at = p.ptr.norm_rows + (self.head * p.s as u64 + (t0 + i) as u64) * 4;
                unsafe { global::st_f32(at, norm) };
            }
        });
    }
}
