//! The f32 forward path: the mLSTM recurrence step by step on the CUDA cores, for f32 inputs
//! (tensor-core products would round them to 16 bits). Slower than the chunkwise kernels, exact
//! to f32 rounding.
//!
//! Notation: BH heads, S steps, DQK × DHV state. Per step t (λ = logσ(f̃_t), ι the log input
//! gate; stabilized variant m_t = max(λ + m_{t−1}, ι), else m ≡ 0):
//!   C̃_t = e^{λ + m_{t−1} − m_t} C̃_{t−1} + e^{ι − m_t} k_t v_tᵀ   (ñ likewise with k_t)
//!   h_t = C̃_tᵀ q̂_t / (max(|ñ_tᵀ q̂_t|, e^{−m_t}) + eps)            (sig: floor 1; no-norm: h = C̃ᵀq̂)
//! One block owns TILE_HV columns of one head's state; the DQK × TILE_HV slab lives in shared
//! memory, thread (g, c) = (tid / TILE_HV, tid % TILE_HV) owns column c at rows g + j·ROW_GROUPS.
//! ñ is owned by thread d % THREADS. It writes what the chunkwise path writes: chunk states at
//! every multiple of L, final states, row statistics.
//!
//! Initial and final states live at the head's state head (`super::slots`), possibly the same
//! memory: thread (g, c) reads its C̃0 elements before the walk and writes the same elements
//! of C̃_final after it; ñ_0 and m_0, which every block needs but only block 0 writes at the
//! end, come from the chunk states at its first chunk (chunk_gates copied them there; this kernel does
//! not rewrite them).
use super::block::{self, Add};
use super::gates::GateKind;
use super::seqs::chunk_range;
use super::slots::state_head;
use crate::arch::{global, math, shared, thread};
use tfla_params::fwd::{FwdParams, recurrent::*};

/// # Safety
/// Launched with `grid(p)`, THREADS threads and `smem_bytes(p.dqk)` bytes of dynamic shared
/// memory, on parameters validated by the host (q, k, v, h, c_states in f32).
#[inline(always)]
pub unsafe fn recurrent_f32<G: GateKind>(p: &FwdParams) {
    let tid = thread::thread_idx();
    let (bx, bh, seq) = thread::block_idx();
    // (max(1): lets the compiler drop its division-by-zero check.)
    let (s, dqk, dhv, l, nc) = (p.s, p.dqk, p.dhv, p.chunk.max(1), p.num_chunks);
    let (g, c) = (tid / TILE_HV, tid % TILE_HV);
    let col = bx * TILE_HV + c;
    let col_ok = col < dhv;
    let head = bh as u64;

    // Shared memory: C slab [d][c], k_t, q_t, ñ, numerators [g][c], warp sums.
    let sc = shared::base();
    let sk = sc + 4 * dqk * TILE_HV;
    let sq = sk + 4 * dqk;
    let sn = sq + 4 * dqk;
    let snum = sn + 4 * dqk;
    let sred = snum + 4 * ROW_GROUPS * TILE_HV;

    let slab = |d: u32| sc + 4 * (d * TILE_HV + c);
    let state_at = |base: u64, d: u32| base + ((d * dhv + col) as u64) * 4;

    // Initial state: C̃0 with coherent loads (with a state pool, C̃_final below overwrites
    // them); ñ_0 and m_0 from the chunk states at the sequence's first chunk (module docs). Without the
    // normalizer ñ stays 0 (and so is the final ñ).
    // This block's steps: all of them, or one sequence's chunks (`super::seqs`).
    let (k_lo, k_hi) = unsafe { chunk_range(p.ptr.seq_chunks, nc, seq) };
    let (t_lo, t_hi) = (k_lo * l, (k_hi * l).min(s));
    let sh = unsafe { state_head(p, bh, seq) };
    let h0 = head * nc as u64; // chunk 0 of the head
    let hs = h0 + k_lo as u64; // the sequence's first chunk
    unsafe {
        let c0 = p.ptr.c0 + sh * (dqk as u64) * (dhv as u64) * 4;
        let mut d = g;
        while d < dqk {
            let x = if p.ptr.c0 != 0 && col_ok {
                global::ld_f32(state_at(c0, d))
            } else {
                0.0
            };
            shared::st_f32(slab(d), x);
            d += ROW_GROUPS;
        }
        let mut d = tid;
        while d < dqk {
            let x = global::ld_nc_f32_or_zero(
                G::NORMALIZED,
                p.ptr.n_states + (hs * dqk as u64 + d as u64) * 4,
            );
            shared::st_f32(sn + 4 * d, x);
            d += THREADS;
        }
    }
    let mut m = if G::STABILIZED {
        unsafe { global::ld_nc_f32(p.ptr.m_states + hs * 4) }
    } else {
        0.0
    };

    let (gq, gk) = (
        p.ptr.q + head * (s as u64) * (dqk as u64) * 4,
        p.ptr.k + head * (s as u64) * (dqk as u64) * 4,
    );
    let gv = p.ptr.v + head * (s as u64) * (dhv as u64) * 4;
    let gh = p.ptr.h + head * (s as u64) * (dhv as u64) * 4;
    // `with_m`: also m, and ñ where `with_n` (block 0 owns them). Not at chunk 0, which
    // chunk_gates wrote and every block reads; the final ñ also without the normalizer (zeros).
    let store_state = |c_out: u64, n_out: u64, m_out: u64, m: f32, with_m, with_n| unsafe {
        // Each thread stores what it owns: no barrier needed.
        let mut d = g;
        while d < dqk {
            global::st_b32_if(
                col_ok,
                state_at(c_out, d),
                shared::ld_f32(slab(d)).to_bits(),
            );
            d += ROW_GROUPS;
        }
        if with_m && bx == 0 {
            let mut d = tid;
            while with_n && d < dqk {
                global::st_f32(n_out + d as u64 * 4, shared::ld_f32(sn + 4 * d));
                d += THREADS;
            }
            if tid == 0 {
                global::st_f32(m_out, m);
            }
        }
    };

    for t in t_lo..t_hi {
        if t % l == 0 {
            let hk = h0 + (t / l) as u64;
            store_state(
                p.ptr.c_states + hk * (dqk as u64) * (dhv as u64) * 4,
                p.ptr.n_states + hk * dqk as u64 * 4,
                p.ptr.m_states + hk * 4,
                m,
                t > t_lo,
                G::NORMALIZED,
            );
        }
        let row = head * s as u64 + t as u64;
        unsafe {
            let mut d = tid;
            while d < dqk {
                shared::st_f32(
                    sk + 4 * d,
                    global::ld_nc_f32(gk + ((t * dqk + d) as u64) * 4),
                );
                shared::st_f32(
                    sq + 4 * d,
                    global::ld_nc_f32(gq + ((t * dqk + d) as u64) * 4),
                );
                d += THREADS;
            }
            thread::sync_threads();
        }
        // Gates (every thread, identically).
        let lambda = math::log_sigmoid(unsafe { global::ld_nc_f32(p.ptr.f + row * 4) });
        let iota = G::log_input(unsafe { global::ld_nc_f32(p.ptr.i + row * 4) });
        let m_new = if G::STABILIZED {
            (lambda + m).max(iota)
        } else {
            0.0
        };
        // m − m_new first, exact where the two are close (Sterbenz): the decays then telescope
        // to e^{Σλ + m_0 − m_t} in the stored m's. λ + m first would round λ away where
        // |λ| ≪ |m| (forget gates near 1), a drift of an ulp of m per step.
        let (decay, gain) = (math::exp(lambda + (m - m_new)), math::exp(iota - m_new));
        m = m_new;
        let v = unsafe { global::ld_nc_f32_or_zero(col_ok, gv + ((t * dhv + col) as u64) * 4) };

        // C̃ column update and its numerator part; ñ update and its part of ñᵀq.
        let mut num = 0f32;
        let mut d = g;
        while d < dqk {
            let x =
                unsafe { decay * shared::ld_f32(slab(d)) + gain * shared::ld_f32(sk + 4 * d) * v };
            unsafe { shared::st_f32(slab(d), x) };
            num += x * unsafe { shared::ld_f32(sq + 4 * d) };
            d += ROW_GROUPS;
        }
        let mut nq = 0f32;
        if G::NORMALIZED {
            let mut d = tid;
            while d < dqk {
                let x = unsafe {
                    decay * shared::ld_f32(sn + 4 * d) + gain * shared::ld_f32(sk + 4 * d)
                };
                unsafe { shared::st_f32(sn + 4 * d, x) };
                nq += x * unsafe { shared::ld_f32(sq + 4 * d) };
                d += THREADS;
            }
        }
        unsafe { shared::st_f32(snum + 4 * (g * TILE_HV + c), num) };
        let nq = if G::NORMALIZED {
            unsafe { block::reduce::<Add, THREADS>(nq, sred) }
        } else {
            0.0
        };
        if !G::NORMALIZED {
            unsafe { thread::sync_threads() };
        }
        if tid < TILE_HV {
            let mut num = 0f32;
            for gg in 0..ROW_GROUPS {
                num += unsafe { shared::ld_f32(snum + 4 * (gg * TILE_HV + c)) };
            }
            let den = if G::NORMALIZED {
                let floor = if G::STABILIZED { math::exp(-m) } else { 1.0 };
                (p.scale * nq).abs().max(floor) + p.eps
            } else {
                1.0
            };
            unsafe {
                global::st_b32_if(
                    col_ok,
                    gh + ((t * dhv + col) as u64) * 4,
                    (p.scale * num / den).to_bits(),
                )
            };
            if bx == 0 && tid == 0 {
                if p.ptr.m_rows != 0 {
                    unsafe { global::st_f32(p.ptr.m_rows + row * 4, m) };
                }
                if p.ptr.norm_rows != 0 {
                    // nq is 0 without the normalizer (no ñ is formed).
                    unsafe { global::st_f32(p.ptr.norm_rows + row * 4, p.scale * nq) };
                }
            }
        }
    }
    if p.ptr.c_final != 0 {
        store_state(
            p.ptr.c_final + sh * (dqk as u64) * (dhv as u64) * 4,
            p.ptr.n_final + sh * dqk as u64 * 4,
            p.ptr.m_final + sh * 4,
            m,
            true,
            true,
        );
    }
}
