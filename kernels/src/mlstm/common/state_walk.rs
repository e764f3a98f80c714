//! The chunk walk both chunk-state shapes share (`chunk_state`, `chunk_state_wide`; notation
//! there): which pipeline items the walk stages, the chunk's gate scalars, where the state
//! before chunk k goes, and the max-state step. The shapes differ only in how their register
//! tiles multiply and store.
use super::gates::GateKind;
use super::seqs::chunk_range;
use crate::arch::convert::Elem;
use crate::arch::{cp_async, global, math, shared, thread};
use crate::tile::{RegTile, SmemTile, a_pos, leads_quad, split2};
use tfla_params::fwd::{FwdParams, SMEM_ROW_PAD, StateTiles};

/// What a chunk-state block walks: its tile of the state (rows from `d0`, columns from `v0`;
/// grid x enumerates the tiles, DHV fastest), its head `bh` and sequence `seq` (grid y, z),
/// and the chunks [k_lo, k_hi] of that sequence (all of them unless the batch is packed).
pub struct Walk {
    pub bx: u32,
    pub bh: u32,
    pub seq: u32,
    pub d0: u32,
    pub v0: u32,
    pub k_lo: u32,
    pub k_hi: u32,
}

/// This block's walk, for state tiles of `tile_qk` × `tile_hv`.
///
/// # Safety
/// Launched on the grid of a [`StateTiles`] of that tile, on parameters validated by the host.
#[inline(always)]
pub unsafe fn walk(p: &FwdParams, (tile_qk, tile_hv): (u32, u32)) -> Walk {
    let (bx, bh, seq) = thread::block_idx();
    let tiles_hv = p.dhv.div_ceil(tile_hv);
    let (d0, v0) = ((bx / tiles_hv) * tile_qk, (bx % tiles_hv) * tile_hv);
    let (k_lo, k_hi) = unsafe { chunk_range(p.ptr.seq_chunks, p.num_chunks, seq) };
    Walk {
        bx,
        bh,
        seq,
        d0,
        v0,
        k_lo,
        k_hi,
    }
}

/// The shared memory of a chunk-state block as [`StateTiles`] lays it out: `stages` × (K
/// sub-tile, V sub-tile, u of the sub-tile), then the staging tile of C̃_k.
#[derive(Clone, Copy)]
pub struct StateSmem(pub StateTiles);

impl StateSmem {
    #[inline(always)]
    pub fn k(&self, st: u32) -> SmemTile {
        SmemTile {
            base: shared::base() + st * self.0.stage_bytes(),
            stride: (self.0.qk + SMEM_ROW_PAD) * 2,
        }
    }
    #[inline(always)]
    pub fn v(&self, st: u32) -> SmemTile {
        SmemTile {
            base: self.k(st).base + self.0.k_bytes(),
            stride: (self.0.hv + SMEM_ROW_PAD) * 2,
        }
    }
    #[inline(always)]
    pub fn u(&self, st: u32) -> u32 {
        self.v(st).base + self.0.v_bytes()
    }
    #[inline(always)]
    pub fn staging(&self) -> SmemTile {
        SmemTile {
            base: shared::base() + self.0.stages * self.0.stage_bytes(),
            stride: (self.0.hv + SMEM_ROW_PAD) * 2,
        }
    }
}

/// Pipeline items [first, end) of chunks [k_lo, k_hi), `sub_l` steps each: chunk boundaries
/// are multiples of `sub_l`, so item `it` covers steps it·sub_l.. of chunk it·sub_l / L, and
/// the next chunk's first item loads during this chunk's last one.
#[inline(always)]
pub fn items(p: &FwdParams, (k_lo, k_hi): (u32, u32), sub_l: u32) -> (u32, u32) {
    let l = p.chunk;
    (
        k_lo * (l / sub_l),
        (k_hi * (l / sub_l)).min(p.s.div_ceil(sub_l)),
    )
}

/// Chunk k's gate scalars: g, and (stabilized) the max of u over the chunk.
///
/// # Safety
/// `head < p.bh`, `k < p.num_chunks`, chunk_gates has run.
#[inline(always)]
pub unsafe fn gate_scalars<G: GateKind>(p: &FwdParams, head: u64, k: u32) -> (f32, f32) {
    let (l, nc, s) = (p.chunk, p.num_chunks, p.s);
    let last = head * (nc * l) as u64 + (l.min(s - k * l) + k * l - 1) as u64;
    let g = unsafe { global::ld_nc_f32(p.ptr.gate_g + (head * nc as u64 + k as u64) * 4) };
    let umax = if G::STABILIZED {
        unsafe { global::ld_nc_f32(p.ptr.gate_cm + last * 4) }
    } else {
        0.0
    };
    (g, umax)
}

/// ñ_0 and m_0 of the walk's first chunk `k_lo`, as chunk_gates stored them there (ñ0, m0 or
/// zeros): not from n0, m0, which another block of this head may overwrite with the final
/// states. ñ of rows `row(0)`, `row(1)` goes to elements 0 and 2 of the normalizer accumulator (one more
/// n-block whose 8 columns all hold ñ of the warp's rows g and g + 8), only `with_n`.
///
/// # Safety
/// `head < p.bh`, `k_lo < p.num_chunks`, chunk_gates has run.
#[inline(always)]
pub unsafe fn initial_n_m<G: GateKind>(
    p: &FwdParams,
    head: u64,
    k_lo: u32,
    row: impl Fn(usize) -> u32,
    with_n: bool,
) -> ([f32; 4], f32) {
    let h0 = head * p.num_chunks as u64 + k_lo as u64;
    let mut nacc = [0f32; 4];
    if with_n {
        unroll!(2, half => {
            let r = row(half);
            let ptr = p.ptr.n_states + (h0 * p.dqk as u64 + r as u64) * 4;
            let x = unsafe { global::ld_nc_f32_or_zero(r < p.dqk, ptr) };
            nacc[2 * half] = x;
            nacc[2 * half + 1] = x;
        });
    }
    let mut m = 0f32;
    if G::STABILIZED {
        m = unsafe { global::ld_nc_f32(p.ptr.m_states + h0 * 4) };
    }
    (nacc, m)
}

/// Starts a walk's pipeline two items ahead: items `item_lo` and `item_lo + 1` in flight, or an
/// empty group in place of the second where the walk has one item (the k-loop's waits count
/// groups).
///
/// # Safety
/// `issue` stages an item and commits its group.
#[inline(always)]
pub unsafe fn prime_two(issue: impl Fn(u32), item_lo: u32, n_items: u32) {
    issue(item_lo);
    if item_lo + 1 < n_items {
        issue(item_lo + 1);
    } else {
        unsafe { cp_async::commit() };
    }
}

/// Where the state before chunk k goes, (C̃, ñ, m) base addresses: the chunk states (C̃_k in
/// the input dtype) for k < k_hi, the final states (C̃ f32) of state head `sh` for k = k_hi.
#[inline(always)]
pub fn outputs(p: &FwdParams, head: u64, sh: u64, k: u32, k_hi: u32) -> (u64, u64, u64) {
    let (dqk, dhv) = (p.dqk, p.dhv);
    if k < k_hi {
        let hk = head * p.num_chunks as u64 + k as u64;
        (
            p.ptr.c_states + hk * (dqk as u64) * (dhv as u64) * 2,
            p.ptr.n_states + hk * dqk as u64 * 4,
            p.ptr.m_states + hk * 4,
        )
    } else {
        (
            p.ptr.c_final + sh * (dqk as u64) * (dhv as u64) * 4,
            p.ptr.n_final + sh * dqk as u64 * 4,
            p.ptr.m_final + sh * 4,
        )
    }
}

/// One chunk's max-state step from m_k and the chunk's (g, max u): (m_{k+1}, the decay
/// e^{g + m_k − m_{k+1}} of the state, and log w0 = g − m_{k+1}: step j's weight is
/// e^{log w0 + u_j}). Without the stabilizer m ≡ 0.
#[inline(always)]
pub fn max_step<G: GateKind>((g, umax): (f32, f32), m: f32) -> (f32, f32, f32) {
    let m_next = if G::STABILIZED {
        (g + m).max(g + umax)
    } else {
        0.0
    };
    (m_next, math::exp(g + m - m_next), g - m_next)
}

/// Stores ñ and m of the state before chunk k, beside its C̃ (`outputs`): ñ_0 and m_0 stay as
/// chunk_gates wrote them; without the normalizer the final ñ is 0. ñ is written by the lanes
/// t = 0 of the first DHV tile's blocks (`first_hv`), rows `rows` holding `nacc` elements 0 and
/// 2; m by one thread of the head (`m_writer`).
///
/// # Safety
/// `n_out`, `m_out` from `outputs` for chunk k.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn store_n_m<G: GateKind>(
    p: &FwdParams,
    (k, k_lo, k_hi): (u32, u32, u32),
    (n_out, m_out): (u64, u64),
    (rows, nacc): ([u32; 2], &[f32; 4]),
    m: f32,
    with_n: bool,
    (first_hv, lane): (bool, u32),
    m_writer: bool,
) {
    if k > k_lo && first_hv && leads_quad(lane) && (with_n || k == k_hi) {
        unroll!(2, half => {
            let r = rows[half];
            let n = if G::NORMALIZED { nacc[2 * half] } else { 0.0 };
            unsafe { global::st_b32_if(r < p.dqk, n_out + r as u64 * 4, n.to_bits()) };
        });
    }
    if k > k_lo && m_writer {
        unsafe { global::st_f32(m_out, m) };
    }
}

/// The weights e^{log_w0 + u_j} of the steps in `lane`'s A fragment of K̃ᵀ's 16-step slice `ks`
/// (a0, a1 hold steps jj, jj + 1; a2, a3 hold jj + 8, jj + 9), from the sub-tile's u_j at `su`
/// in shared memory. Steps past a ragged end have zero K rows, so need no mask.
///
/// # Safety
/// `su` holds the sub-tile's SUB_L values of u.
#[inline(always)]
pub unsafe fn key_weights(su: u32, ks: u32, lane: u32, log_w0: f32) -> [f32; 4] {
    let jj = ks * 16 + a_pos(lane, 0).1;
    [jj, jj + 1, jj + 8, jj + 9].map(|j| math::exp(log_w0 + unsafe { shared::ld_f32(su + 4 * j) }))
}

/// The A fragment `a` with each element times its step's weight (`key_weights`), as a 16-bit
/// head and the rounding error of that product as a second 16-bit term (for ñ, which ends up
/// dividing a whole row of h).
#[inline(always)]
pub fn weighted_split<E: Elem>(a: [u32; 4], w: [f32; 4]) -> ([u32; 4], [u32; 4]) {
    let (mut hi, mut lo) = ([0u32; 4], [0u32; 4]);
    unroll!(4, r => {
        let (x0, x1) = E::unpack(a[r]);
        let wi = (r / 2) * 2;
        (hi[r], lo[r]) = split2::<E>([x0 * w[wi], x1 * w[wi + 1]]);
    });
    (hi, lo)
}

/// Adds 16 steps of K̃ᵀV (slice `ks` of a staged sub-tile: K at `sk`, V at `sv`, u at `su`) to a
/// warp's 16 × 8·NB tile of the state, rows 16·warp.., K̃ weighted by e^{log_w0 + u_j}
/// ([`key_weights`], [`weighted_split`]); `with_n`, K̃ᵀ1 (head and tail) to ñ of its rows. The
/// k-step of the narrow chunk-state walk and of `chunk_fused`.
///
/// # Safety
/// Warp-collective; the sub-tile has landed and every thread sees it.
#[inline(always)]
pub unsafe fn add_slice<E: Elem, const NB: usize>(
    (acc, nacc): (&mut RegTile<1, NB>, &mut [f32; 4]),
    (sk, sv, su): (SmemTile, SmemTile, u32),
    ks: u32,
    (lane, warp): (u32, u32),
    log_w0: f32,
    with_n: bool,
) {
    let ones = [E::pack(1.0, 1.0); 2];
    let a = unsafe { sk.a_trans(ks * 16, warp * 16, lane) };
    let w = unsafe { key_weights(su, ks, lane, log_w0) };
    let (a, a_lo) = weighted_split::<E>(a, w);
    unroll!(16, pair => {
        if 2 * pair < NB {
            let b = unsafe { sv.b_kn(ks * 16, pair as u32 * 16, lane) };
            unsafe {
                E::mma(&mut acc.0[0][2 * pair], a, b[0]);
                E::mma(&mut acc.0[0][2 * pair + 1], a, b[1]);
            }
        }
    });
    if with_n {
        unsafe {
            E::mma(nacc, a, ones);
            E::mma(nacc, a_lo, ones);
        }
    }
}
