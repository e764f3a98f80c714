//! Backward, per-row coefficients: for every step, the scalars the other backward kernels
//! weight rows and columns with (`tfla_params::bwd::rows` lists them), so they need neither
//! h nor the max-state arithmetic.
//!
//! Notation as in `chunk_output`: in chunk k, M_i = max(m_k, cm_i) and m_i = b_i + M_i
//! (mLSTMexp; m ≡ 0 for mLSTMsig). Then α_i = e^{m_k − M_i} (sig: e^{b_i}), the state after
//! the chunk has m_{k+1} = g + max(m_k, cm_last) and step j's weight in it is
//! w_j = e^{g + u_j − m_{k+1}} (sig: e^{g + u_j}). The forward's h_i = num_i/den_i gives
//! dh_i·h_i, from which Exact mode's ds_i = −sign(s_i)(dh_i·h_i)/den_i (where the floor is
//! not taken) and, for mLSTMexp, the direct gradient of m_i through eps,
//! −(dh_i·h_i)·eps/den_i (h = num/(max(|s|,1) + eps·e^m) in unstabilized terms).
//!
//! For f32 inputs the reverse walk (`bwd_recurrent_f32`) accumulates dq, dk, dĩ, df̃ and the
//! state dots with atomics; this kernel, the first of the pass, also zeroes them.
use super::gates::GateKind;
use crate::arch::convert::{Bf16, Elem, F16, F32};
use crate::arch::{global, math, shfl, thread};
use tfla_params::bwd::{BwdParams, rows::*, state};

/// How this kernel reads h and dh, per input dtype.
pub trait RowInput {
    /// Elements per 16-byte load.
    const PER_LOAD: u32;
    /// Whether the backward accumulates its outputs with atomics (the f32 path).
    const ZEROES_ACCUMULATORS: bool;
    /// Σ a_e·b_e over the elements of two 16-byte loads.
    fn dot(a: [u32; 4], b: [u32; 4]) -> f32;
}

macro_rules! row_input_16bit {
    ($($t:ty),*) => {$(
        impl RowInput for $t {
            const PER_LOAD: u32 = 8;
            const ZEROES_ACCUMULATORS: bool = false;
            #[inline(always)]
            fn dot(a: [u32; 4], b: [u32; 4]) -> f32 {
                let mut x = 0f32;
                unroll!(4, e => {
                    let ((a0, a1), (b0, b1)) = (<$t>::unpack(a[e]), <$t>::unpack(b[e]));
                    x += a0 * b0 + a1 * b1;
                });
                x
            }
        }
    )*};
}
row_input_16bit!(Bf16, F16);

impl RowInput for F32 {
    const PER_LOAD: u32 = 4;
    const ZEROES_ACCUMULATORS: bool = true;
    #[inline(always)]
    fn dot(a: [u32; 4], b: [u32; 4]) -> f32 {
        let mut x = 0f32;
        unroll!(4, e => {
            x += f32::from_bits(a[e]) * f32::from_bits(b[e]);
        });
        x
    }
}

/// # Safety
/// Launched with `grid(p)` and THREADS threads after the forward pass wrote h, its chunk
/// states, gate vectors and row readouts, on parameters validated by the host.
#[inline(always)]
pub unsafe fn bwd_rows<E: RowInput, G: GateKind>(p: &BwdParams) {
    let tid = thread::thread_idx();
    let (lane, warp) = (tid % 32, tid / 32);
    let (bx, bh, _) = thread::block_idx();
    let (l, s, nc, dhv) = (p.chunk, p.s, p.num_chunks, p.dhv);
    let head = bh as u64;
    let padded = (nc * l) as u64;
    let plane = p.bh as u64 * padded * 4; // bytes between planes
    let exact = p.exact != 0;
    // Warp w owns rows 32w .. 32w + 32 of the block; thread (w, lane) row 32w + lane.
    let first = bx * ROWS + 32 * warp;
    let r = first + lane;

    // dh·h of the warp's rows: the whole warp reads each row (one 16-byte load per lane and
    // pass), GROUP rows' loads in flight at a time; the lane whose row it is keeps the sum.
    const GROUP: usize = 4;
    const _: () = assert!(ROWS == 32 * WARPS && 32 % GROUP as u32 == 0);
    let elem_bytes = (16 / E::PER_LOAD) as u64;
    let mut hd = 0f32;
    if G::NORMALIZED {
        for g in 0..32 / GROUP as u32 {
            let mut sum = [0f32; GROUP];
            let mut c0 = 0;
            while c0 < dhv {
                let c = c0 + E::PER_LOAD * lane;
                let mut dv = [[0u32; 4]; GROUP];
                let mut hv = [[0u32; 4]; GROUP];
                // Unpredicated loads (out-of-range lanes read element 0 and drop it): ptxas
                // issues all 2·GROUP of them before the first use, where predicated loads
                // were each followed by their own sum (two loads in flight per warp).
                let mut ok = [false; GROUP];
                unroll!(4, x => {
                    let row = first + GROUP as u32 * g + x as u32;
                    ok[x] = row < s && c < dhv;
                    let at = if ok[x] {
                        ((head * s as u64 + row as u64) * dhv as u64 + c as u64) * elem_bytes
                    } else {
                        0
                    };
                    dv[x] = unsafe { global::ld_nc_v4(p.ptr.dh + at) };
                    hv[x] = unsafe { global::ld_nc_v4(p.ptr.h + at) };
                });
                unroll!(4, x => {
                    if ok[x] {
                        sum[x] += E::dot(dv[x], hv[x]);
                    }
                });
                c0 += 32 * E::PER_LOAD;
            }
            unroll!(4, x => {
                unroll!(5, b => {
                    sum[x] += unsafe { shfl::xor_f32(sum[x], 16 >> b) };
                });
                if lane == GROUP as u32 * g + x as u32 {
                    hd = sum[x];
                }
            });
        }
    }

    // The row's scalars, one row per thread (the gate vectors are read coalesced).
    let mut out = [0f32; PLANES as usize];
    if r < s {
        // Padded row r is step r (chunks are contiguous; only the last one is padded).
        let k = r / l;
        let gate = |ptr: u64, idx: u32| unsafe {
            global::ld_nc_f32(ptr + (head * padded + idx as u64) * 4)
        };
        let (b, u) = (gate(p.ptr.gate_b, r), gate(p.ptr.gate_u, r));
        let g = unsafe { global::ld_nc_f32(p.ptr.gate_g + (head * nc as u64 + k as u64) * 4) };
        let (alpha, r_log, w, floor) = if G::STABILIZED {
            let m_k =
                unsafe { global::ld_nc_f32(p.ptr.m_states + (head * nc as u64 + k as u64) * 4) };
            let big_m = m_k.max(gate(p.ptr.gate_cm, r));
            let last = k * l + (l.min(s - k * l) - 1);
            let m_next = (g + m_k).max(g + gate(p.ptr.gate_cm, last));
            (
                math::exp(m_k - big_m),
                -big_m,
                math::exp(g + u - m_next),
                math::exp(-(b + big_m)),
            )
        } else {
            (math::exp(b), b, math::exp(g + u), 1.0)
        };
        let (rho, delta, dm) = if G::NORMALIZED {
            let sn =
                unsafe { global::ld_nc_f32(p.ptr.norm_rows + (head * s as u64 + r as u64) * 4) };
            let den = sn.abs().max(floor) + p.eps;
            let rho = 1.0 / den;
            let live = exact && sn.abs() >= floor;
            let delta = if live { -sn.signum() * hd * rho } else { 0.0 };
            let dm = if exact && G::STABILIZED {
                -hd * p.eps * rho
            } else {
                0.0
            };
            (rho, delta, dm)
        } else {
            (1.0, 0.0, 0.0)
        };
        out[RHO as usize] = rho;
        out[DELTA as usize] = delta;
        out[WQ as usize] = alpha * rho;
        out[WN as usize] = alpha * delta;
        out[WK as usize] = w;
        out[R_LOG2 as usize] = r_log * math::LOG2_E;
        out[DM as usize] = dm;
    }
    if r < nc * l {
        let at = p.ptr.row_coef + (head * padded + r as u64) * 4;
        for (x, &o) in out.iter().enumerate() {
            unsafe { global::st_f32(at + x as u64 * plane, o) };
        }
    }
    if E::ZEROES_ACCUMULATORS {
        unsafe { zero_accumulators(p, bx, head) };
    }
}

/// Zeroes this block's rows of dq, dk (f32, 16-byte stores), dĩ and df̃, and with the first
/// row block the head's state dots.
///
/// # Safety
/// f32 gradients; called by every thread of the block.
#[inline(always)]
unsafe fn zero_accumulators(p: &BwdParams, bx: u32, head: u64) {
    let tid = thread::thread_idx();
    let (s, dqk) = (p.s, p.dqk);
    let quads = dqk / 4; // DQK is a multiple of 16
    let mut x = tid;
    while x < ROWS * quads {
        let r = bx * ROWS + x / quads;
        let at = ((head * s as u64 + r as u64) * dqk as u64 + 4 * (x % quads) as u64) * 4;
        unsafe {
            global::st_v4_b32_if(r < s, p.ptr.dq + at, [0; 4]);
            global::st_v4_b32_if(r < s, p.ptr.dk + at, [0; 4]);
        }
        x += THREADS;
    }
    if tid < ROWS {
        let r = bx * ROWS + tid;
        let at = (head * s as u64 + r as u64) * 4;
        unsafe {
            global::st_b32_if(r < s, p.ptr.di + at, 0);
            global::st_b32_if(r < s, p.ptr.df + at, 0);
        }
    }
    if bx == 0 {
        let len = state::dots_per_head(p.num_chunks, p.seqs) * state::MAX_TILES;
        let base = p.ptr.state_dots + head * len as u64 * 4;
        let mut x = tid;
        while x < len {
            unsafe { global::st_f32(base + x as u64 * 4, 0.0) };
            x += THREADS;
        }
    }
}
