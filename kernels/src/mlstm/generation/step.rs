//! The recurrent step (generation): one token per head, the states updated in place, h out.
//! Memory-bound: it reads and writes C̃ exactly once, everything else fused into that pass.
//!
//! Notation: BH heads, DQK × DHV state. Per head, with q̂ = q·scale, λ = logσ(f̃), ι the log
//! input gate (stabilized variant m' = max(λ + m, ι), else m ≡ 0):
//!   C̃' = e^{λ + m − m'} C̃ + e^{ι − m'} k vᵀ   (ñ' likewise with k)
//!   h  = C̃'ᵀ q̂ / (max(|ñ'ᵀ q̂|, e^{−m'}) + eps)   (sig: floor 1; no-norm: h = C̃'ᵀ q̂)
//!
//! Block (tile, head) owns the DQK × TILE_HV slab of C̃ at columns tile·TILE_HV…; thread
//! (g, cg) = (tid / COL_THREADS, tid % COL_THREADS) owns 8 columns of it (two quads of 4, laid
//! out by the state type: [`StepState::quads`]) in rows g + j·ROW_GROUPS. Per pass of
//! `S::ROWS · ROW_GROUPS` rows a thread issues its `S::ROWS` row loads (16-byte vectors: four
//! per thread, 64 bytes, in either state dtype) before it uses any; the first pass's loads go
//! out before the gate math and the normalizer reduction, which run while they are in flight.
//! Each loaded row is updated, stored back, and its product with q̂ added to the thread's 8
//! column sums; the sums are reduced over the row groups (shuffles inside a warp, then shared
//! memory across warps) into C̃'ᵀq̂ of the tile.
//!
//! Why this shape fills the card (H100: 132 SMs, 65536 registers each; ~3 TB/s). A step moves
//! little (B·NH = 64, DQK = 256, DHV = 512, f32: 67 MB, ~22 µs at copy speed) next to its fixed
//! costs (launch, the first loads' latency, the last stores), so the grid must run as one wave:
//! a second, partial wave repeats the ramp and drain with a few blocks per SM and little in
//! flight. At 64 heads the grid is 8 × 64 = 512 blocks; every entry needs at most 64 registers
//! (`tfla_params::step::MAX_REGISTERS`: 16 of loaded state, 2 rows of f32 or 4 of bf16 per
//! pass), so four blocks of 256 threads are resident per SM: 528 slots, one wave (97% of the
//! slots busy). With 4 rows of f32 (128 bytes per thread, 80 registers) three blocks fit: 396
//! slots, 1.3 waves, and the partial second wave cost about twice the one-wave ramp
//! (benches/LOG.md). Bytes in flight stay far above what the memory needs:
//! 4 × 256 × 64 bytes = 64 KiB per SM, against ~20 KB (3 TB/s × ~0.8 µs loaded latency / 132
//! SMs). Larger grids (B·NH = 256: 2048 blocks, 3.9 waves) are long enough that the last wave's
//! ramp is a small part of the time.
//!
//! ñ'ᵀq̂ needs all of ñ (DQK values), so every block of a head computes ñ' and the reduction
//! itself (two elements per thread); the block that arrives last at the head's counter
//! (`StepPointers::tiles_done`) writes ñ' and m', once every block of the head has read ñ and m.
//!
//! State pool (`StepPointers::slots`): head bh = b·NH + h reads q, k, v, ĩ, f̃ and writes h at
//! bh, but updates C̃, ñ, m at *state head* sh = slots[b]·NH + h of the pool, and counts its
//! tiles in `tiles_done[sh]` (without slots sh = bh). Race-free because the host rejects
//! out-of-range and duplicate slots before the launch: distinct heads of the launch then have
//! distinct state heads, so every state element and every counter is touched by the blocks of
//! exactly one head, as without slots, and the arrival protocol runs unchanged per state head.
//!
//! Arithmetic is f32. With bf16 states, C̃' is rounded to bf16 when stored; h uses its f32
//! values (the rounding reaches h one step later, through the stored state). ñ and m are f32
//! in every state dtype: ñ'ᵀq̂ can be a small difference of large terms and divides the whole
//! row of h, so a 16-bit ñ would cost percent-level errors in h (as a one-term 16-bit ñ did in
//! the forward, README) to save 1/DHV of the bytes.
use super::block::{self, Add};
use super::gates::GateKind;
use super::slots::step_state_head;
use crate::arch::convert::{Bf16, Elem, F16, F32};
use crate::arch::{atomic, global, math, shared, shfl, thread};
use tfla_params::step::*;

/// How q, k, v are read and h is written, per input dtype.
pub trait StepInput {
    /// Bytes per element.
    const BYTES: u32;
    /// Elements 2d, 2d + 1 at `ptr` as f32, zeros unless `pred`.
    ///
    /// # Safety
    /// Where `pred` holds: `ptr` is aligned to two elements, both readable and read-only.
    unsafe fn ld_pair(pred: bool, ptr: u64) -> [f32; 2];
    /// Four consecutive elements as f32, zeros unless `pred`.
    ///
    /// # Safety
    /// Where `pred` holds: `ptr` is aligned to four elements, all readable and read-only.
    unsafe fn ld_quad(pred: bool, ptr: u64) -> [f32; 4];
    /// Stores four consecutive elements (rounded to nearest even) when `pred` holds.
    ///
    /// # Safety
    /// Where `pred` holds: `ptr` is aligned to four elements, all writable by this thread only.
    unsafe fn st_quad(pred: bool, ptr: u64, x: [f32; 4]);
}

impl StepInput for F32 {
    const BYTES: u32 = 4;
    #[inline(always)]
    unsafe fn ld_pair(pred: bool, ptr: u64) -> [f32; 2] {
        unsafe { global::ld_nc_v2_b32_or_zero(pred, ptr) }.map(f32::from_bits)
    }
    #[inline(always)]
    unsafe fn ld_quad(pred: bool, ptr: u64) -> [f32; 4] {
        unsafe { global::ld_nc_v4_b32_or_zero(pred, ptr) }.map(f32::from_bits)
    }
    #[inline(always)]
    unsafe fn st_quad(pred: bool, ptr: u64, x: [f32; 4]) {
        unsafe { global::st_v4_b32_if(pred, ptr, x.map(f32::to_bits)) }
    }
}

macro_rules! input_16bit {
    ($($t:ty),*) => {$(
        impl StepInput for $t {
            const BYTES: u32 = 2;
            #[inline(always)]
            unsafe fn ld_pair(pred: bool, ptr: u64) -> [f32; 2] {
                // Zero bits are 0.0 in both 16-bit formats.
                let (a, b) = <$t>::unpack(unsafe { global::ld_nc_b32_or_zero(pred, ptr) });
                [a, b]
            }
            #[inline(always)]
            unsafe fn ld_quad(pred: bool, ptr: u64) -> [f32; 4] {
                let [x, y] = unsafe { global::ld_nc_v2_b32_or_zero(pred, ptr) };
                let ((a, b), (c, d)) = (<$t>::unpack(x), <$t>::unpack(y));
                [a, b, c, d]
            }
            #[inline(always)]
            unsafe fn st_quad(pred: bool, ptr: u64, x: [f32; 4]) {
                let v = [<$t>::pack(x[0], x[1]), <$t>::pack(x[2], x[3])];
                unsafe { global::st_v2_b32_if(pred, ptr, v) }
            }
        }
    )*};
}
input_16bit!(Bf16, F16);

/// How C̃ is stored, per state dtype: which columns a thread owns and how they move.
pub trait StepState {
    /// Bytes per element.
    const BYTES: u32;
    /// Rows a thread loads per pass ([`tfla_params::step::rows`]).
    const ROWS: u32;
    /// Tile columns where the two quads of column group `cg` start.
    fn quads(cg: u32) -> [u32; 2];
    /// The 8 values of column group `cg` in the row whose tile starts at `row`; quad i is read
    /// where `pred[i]` holds, zeros elsewhere.
    ///
    /// # Safety
    /// Where a predicate holds, its quad is readable; `row` is 16-byte aligned.
    unsafe fn ld_cols(pred: [bool; 2], row: u64, cg: u32) -> [f32; 8];
    /// Stores the 8 values (rounded to the state dtype) where the predicates hold.
    ///
    /// # Safety
    /// As [`StepState::ld_cols`], the quads writable by this thread only.
    unsafe fn st_cols(pred: [bool; 2], row: u64, cg: u32, x: [f32; 8]);
}

/// f32 states.
pub struct StateF32;
/// bf16 states (C̃; ñ and m stay f32).
pub struct StateBf16;

// The f32 quads of a column group lie half a tile apart.
const _: () = assert!(4 * COL_THREADS == TILE_HV / 2 && COLS == 8);

impl StepState for StateF32 {
    const BYTES: u32 = state_bytes(StateDtype::F32);
    const ROWS: u32 = rows(StateDtype::F32);
    /// Quads half a tile apart, so the column threads of one row read 128 contiguous bytes per
    /// instruction (adjacent 32-byte pairs would leave half of each sector to a second one).
    #[inline(always)]
    fn quads(cg: u32) -> [u32; 2] {
        [4 * cg, TILE_HV / 2 + 4 * cg]
    }
    #[inline(always)]
    unsafe fn ld_cols(pred: [bool; 2], row: u64, cg: u32) -> [f32; 8] {
        let [q0, q1] = Self::quads(cg);
        let a = unsafe { global::ld_v4_b32_or_zero(pred[0], row + 4 * q0 as u64) };
        let b = unsafe { global::ld_v4_b32_or_zero(pred[1], row + 4 * q1 as u64) };
        [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]].map(f32::from_bits)
    }
    #[inline(always)]
    unsafe fn st_cols(pred: [bool; 2], row: u64, cg: u32, x: [f32; 8]) {
        let [q0, q1] = Self::quads(cg);
        let x = x.map(f32::to_bits);
        unsafe {
            global::st_v4_b32_if(pred[0], row + 4 * q0 as u64, [x[0], x[1], x[2], x[3]]);
            global::st_v4_b32_if(pred[1], row + 4 * q1 as u64, [x[4], x[5], x[6], x[7]]);
        }
    }
}

impl StepState for StateBf16 {
    const BYTES: u32 = state_bytes(StateDtype::Bf16);
    const ROWS: u32 = rows(StateDtype::Bf16);
    /// Both quads in one 16-byte vector. A tile's valid columns are a multiple of 16, so the
    /// two predicates are equal.
    #[inline(always)]
    fn quads(cg: u32) -> [u32; 2] {
        [8 * cg, 8 * cg + 4]
    }
    #[inline(always)]
    unsafe fn ld_cols(pred: [bool; 2], row: u64, cg: u32) -> [f32; 8] {
        let x = unsafe { global::ld_v4_b32_or_zero(pred[0], row + 16 * cg as u64) };
        let mut r = [0f32; 8];
        for (pair, &w) in r.chunks_exact_mut(2).zip(&x) {
            (pair[0], pair[1]) = Bf16::unpack(w);
        }
        r
    }
    #[inline(always)]
    unsafe fn st_cols(pred: [bool; 2], row: u64, cg: u32, x: [f32; 8]) {
        let v = [
            Bf16::pack(x[0], x[1]),
            Bf16::pack(x[2], x[3]),
            Bf16::pack(x[4], x[5]),
            Bf16::pack(x[6], x[7]),
        ];
        unsafe { global::st_v4_b32_if(pred[0], row + 16 * cg as u64, v) }
    }
}

// `unroll!` counts below: the rows per pass (at most; the state's own count guards each row)
// and the warps of the column-sum reduction.
const _: () = assert!(MAX_ROWS == 4 && WARPS == 8 && WARP_LANES / COL_THREADS == 4);
const WARP_LANES: u32 = tfla_params::WARP;

/// # Safety
/// Launched with `grid(p)`, THREADS threads and `smem_bytes(p.dqk)` bytes of dynamic shared
/// memory, on parameters validated by the host: q, k, v, h in the dtype of `I`, C̃ in the
/// dtype of `S`, ñ and m f32, `tiles_done` zero; `slots` 0 or B slots, in range and distinct.
#[inline(always)]
pub unsafe fn step<I: StepInput, S: StepState, G: GateKind>(p: &StepParams) {
    let tid = thread::thread_idx();
    let (tile, bh, _) = thread::block_idx();
    let (dqk, dhv) = (p.dqk, p.dhv);
    // The batch head (q, k, v, ĩ, f̃, h) and the state head (C̃, ñ, m, tiles_done): the same
    // without slots; with them, distinct per head of the launch (module docs).
    let head = bh as u64;
    // SAFETY: slots as this function's contract; bh < p.bh (the grid).
    let sh = unsafe { step_state_head(p, bh) };
    let col0 = tile * TILE_HV;
    let valid_cols = (dhv - col0).min(TILE_HV);
    let (g, cg) = (tid / COL_THREADS, tid % COL_THREADS);
    let quads = S::quads(cg);
    let quad_ok = [quads[0] < valid_cols, quads[1] < valid_cols];

    // Shared memory: partial column sums [warp][column], k, q̂, reduction scratch, flag.
    let snum = shared::base();
    let sk = snum + 4 * WARPS * TILE_HV;
    let sq = sk + 4 * dqk;
    let sred = sq + 4 * dqk;
    let sflag = sred + 4 * WARPS;

    // C̃ of this head (DQK, DHV): address of row d at the tile's first column.
    let (s_bytes, i_bytes) = (S::BYTES as u64, I::BYTES as u64);
    let gc = p.ptr.c + sh * (dqk * dhv) as u64 * s_bytes;
    let row_at = |d: u32| gc + (d * dhv + col0) as u64 * s_bytes;
    let load_pass = |base: u32| {
        let mut c = [[0f32; COLS as usize]; MAX_ROWS as usize];
        unroll!(4, j => {
            if (j as u32) < S::ROWS {
                let d = base + g + j as u32 * ROW_GROUPS;
                let ok = d < dqk;
                // SAFETY: in bounds where predicated on (row < DQK, quad < DHV).
                c[j] = unsafe { S::ld_cols([ok && quad_ok[0], ok && quad_ok[1]], row_at(d), cg) };
            }
        });
        c
    };
    let mut c = load_pass(0);

    // Every other load of the block next, all independent of each other: the gates (every
    // thread, identically), k, q and ñ (elements 2·tid, 2·tid + 1; THREADS · 2 ≥ DQK) and the
    // thread's 8 values of v.
    let d2 = 2 * tid;
    let pair_ok = d2 < dqk;
    let vec_at = |base: u64, bytes: u64| base + (head * dqk as u64 + d2 as u64) * bytes;
    let gn = p.ptr.n + (sh * dqk as u64 + d2 as u64) * 4;
    let gv = p.ptr.v + (head * dhv as u64 + col0 as u64) * i_bytes;
    let (f_pre, i_pre, m_old, k2, q2, n2, v0, v1) = unsafe {
        (
            global::ld_nc_f32(p.ptr.f + head * 4),
            global::ld_nc_f32(p.ptr.i + head * 4),
            if G::STABILIZED {
                global::ld_f32(p.ptr.m + sh * 4)
            } else {
                0.0
            },
            I::ld_pair(pair_ok, vec_at(p.ptr.k, i_bytes)),
            I::ld_pair(pair_ok, vec_at(p.ptr.q, i_bytes)),
            // Coherent: the last block of the head overwrites ñ. Without the normalizer ñ is
            // neither read nor written.
            global::ld_v2_f32_or_zero(G::NORMALIZED && pair_ok, gn),
            I::ld_quad(quad_ok[0], gv + quads[0] as u64 * i_bytes),
            I::ld_quad(quad_ok[1], gv + quads[1] as u64 * i_bytes),
        )
    };
    let (lambda, iota) = (math::log_sigmoid(f_pre), G::log_input(i_pre));
    let m_new = if G::STABILIZED {
        (lambda + m_old).max(iota)
    } else {
        0.0
    };
    // m_old − m_new first (see `recurrent_f32`): no drift of an ulp of m per step.
    let (decay, gain) = (math::exp(lambda + (m_old - m_new)), math::exp(iota - m_new));
    let q2 = q2.map(|x| x * p.scale);
    let n_new = [decay * n2[0] + gain * k2[0], decay * n2[1] + gain * k2[1]];
    // C̃' = decay·C̃ + k (gain·v)ᵀ.
    let wv = [v0[0], v0[1], v0[2], v0[3], v1[0], v1[1], v1[2], v1[3]].map(|x| gain * x);
    if pair_ok {
        unsafe {
            shared::st_v2(sk + 4 * d2, k2.map(f32::to_bits));
            shared::st_v2(sq + 4 * d2, q2.map(f32::to_bits));
        }
    }
    // ñ'ᵀq̂ over all of DQK; the reduction's barriers also publish k and q̂.
    let nq = if G::NORMALIZED {
        unsafe { block::reduce::<Add, THREADS>(n_new[0] * q2[0] + n_new[1] * q2[1], sred) }
    } else {
        unsafe { thread::sync_threads() };
        0.0
    };
    // Every thread of the block has read ñ and m (before the barrier above): count this tile
    // in. The last one of the head writes ñ' and m' at the end.
    if tid == 0 {
        let tiles = dhv.div_ceil(TILE_HV);
        let old = unsafe { atomic::add_acq_rel_gpu_u32(p.ptr.tiles_done + sh * 4, 1) };
        unsafe { shared::st_u32(sflag, (old + 1 == tiles) as u32) };
    }

    // The pass over the slab: update, store, column sums with q̂.
    let mut num = [0f32; COLS as usize];
    let mut base = 0;
    loop {
        unroll!(4, j => {
            if (j as u32) < S::ROWS {
                let d = base + g + j as u32 * ROW_GROUPS;
                let ok = d < dqk;
                // Rows past DQK read a valid row and drop it: their C̃ is zero and k, q̂ are
                // zeroed.
                let (kd, qd) = unsafe {
                    let at = 4 * d.min(dqk - 1);
                    (shared::ld_f32(sk + at), shared::ld_f32(sq + at))
                };
                let (kd, qd) = if ok { (kd, qd) } else { (0.0, 0.0) };
                let mut y = [0f32; COLS as usize];
                for e in 0..COLS as usize {
                    y[e] = decay * c[j][e] + kd * wv[e];
                    num[e] += y[e] * qd;
                }
                unsafe { S::st_cols([ok && quad_ok[0], ok && quad_ok[1]], row_at(d), cg, y) };
            }
        });
        base += S::ROWS * ROW_GROUPS;
        if base >= dqk {
            break;
        }
        c = load_pass(base);
    }

    // Column sums over the row groups: the four of a warp (lanes 8 apart) by shuffles, then
    // the warps through shared memory.
    unroll!(8, e => {
        unsafe {
            num[e] += shfl::xor_f32(num[e], COL_THREADS);
            num[e] += shfl::xor_f32(num[e], 2 * COL_THREADS);
        }
    });
    let (lane, warp) = (tid % WARP_LANES, tid / WARP_LANES);
    if lane < COL_THREADS {
        let at = |q: u32| snum + 4 * (warp * TILE_HV + q);
        let bits = num.map(f32::to_bits);
        unsafe {
            shared::st_v4(at(quads[0]), [bits[0], bits[1], bits[2], bits[3]]);
            shared::st_v4(at(quads[1]), [bits[4], bits[5], bits[6], bits[7]]);
        }
    }
    unsafe { thread::sync_threads() };

    // h of the tile: thread t < TILE_HV / 4 writes columns 4t … 4t + 3.
    if tid < TILE_HV / 4 {
        let col = 4 * tid;
        let mut s = [0f32; 4];
        unroll!(8, w => {
            let x = unsafe { shared::ld_v4(snum + 4 * (w as u32 * TILE_HV + col)) };
            for e in 0..4 {
                s[e] += f32::from_bits(x[e]);
            }
        });
        let den = if G::NORMALIZED {
            let floor = if G::STABILIZED {
                math::exp(-m_new)
            } else {
                1.0
            };
            nq.abs().max(floor) + p.eps
        } else {
            1.0
        };
        let gh = p.ptr.h + (head * dhv as u64 + (col0 + col) as u64) * i_bytes;
        unsafe { I::st_quad(col < valid_cols, gh, s.map(|x| x / den)) };
    }

    // The last tile of the head to arrive: every other tile has read ñ and m.
    if unsafe { shared::ld_u32(sflag) } != 0 {
        if G::NORMALIZED {
            unsafe { global::st_v2_f32_if(pair_ok, gn, n_new) };
        }
        if tid == 0 {
            unsafe {
                global::st_f32(p.ptr.m + sh * 4, m_new);
                global::st_b32(p.ptr.tiles_done + sh * 4, 0);
            }
        }
    }
}
