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
use super::gates::GateKind;
use crate::arch::convert::Elem;
use crate::arch::{global, math, shfl, thread};
use tfla_params::bwd::{BwdParams, rows::*};

/// # Safety
/// Launched with `grid(p)` and THREADS threads after the forward pass wrote h, its chunk
/// states, gate vectors and row readouts, on parameters validated by the host.
#[inline(always)]
pub unsafe fn bwd_rows<E: Elem, G: GateKind>(p: &BwdParams) {
    let tid = thread::thread_idx();
    let (lane, warp) = (tid % 32, tid / 32);
    let (bx, bh, _) = thread::block_idx();
    let (l, s, nc, dhv) = (p.chunk, p.s, p.num_chunks, p.dhv);
    let head = bh as u64;
    let padded = (nc * l) as u64;
    let plane = p.bh as u64 * padded * 4; // bytes between planes
    let exact = p.exact != 0;

    // Each warp takes ROWS / WARPS rows, all loads of them issued before the sums.
    const PER_WARP: usize = (ROWS / WARPS) as usize;
    const _: () = assert!(
        PER_WARP == 4,
        "the unroll! counts below assume 4 rows per warp"
    );
    let row_of = |x: usize| bx * ROWS + warp + WARPS * x as u32;
    // dh·h per row: 8 elements per lane per 16-byte load, 256 per warp and pass.
    let mut hd = [0f32; PER_WARP];
    if G::NORMALIZED {
        let mut c0 = 0;
        while c0 < dhv {
            let c = c0 + 8 * lane;
            let mut dv = [[0u32; 4]; PER_WARP];
            let mut hv = [[0u32; 4]; PER_WARP];
            unroll!(4, x => {
                let r = row_of(x);
                let ok = r < s && c < dhv;
                let at = ((head * s as u64 + r as u64) * dhv as u64 + c as u64) * 2;
                dv[x] = unsafe { global::ld_nc_v4_b32_or_zero(ok, p.ptr.dh + at) };
                hv[x] = unsafe { global::ld_nc_v4_b32_or_zero(ok, p.ptr.h + at) };
            });
            unroll!(4, x => {
                unroll!(4, e => {
                    let (d0, d1) = E::unpack(dv[x][e]);
                    let (h0, h1) = E::unpack(hv[x][e]);
                    hd[x] += d0 * h0 + d1 * h1;
                });
            });
            c0 += 256;
        }
        unroll!(4, x => {
            unroll!(5, b => {
                hd[x] += unsafe { shfl::xor_f32(hd[x], 16 >> b) };
            });
        });
    }

    unroll!(4, x => {
        let r = row_of(x);
        // Padded row r is step r (chunks are contiguous; only the last one is padded).
        let valid = r < s;
        let hd = hd[x];
        let mut out = [0f32; PLANES as usize];
        if valid {
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
                let sn = unsafe { global::ld_nc_f32(p.ptr.norm_rows + (head * s as u64 + r as u64) * 4) };
                let den = sn.abs().max(floor) + p.eps;
                let rho = 1.0 / den;
                let live = exact && sn.abs() >= floor;
                let delta = if live { -sn.signum() * hd * rho } else { 0.0 };
                let dm = if exact && G::STABILIZED { -hd * p.eps * rho } else { 0.0 };
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
        if lane < PLANES && r < nc * l {
            // Lane x writes plane x (a select chain keeps `out` in registers).
            let mut v = 0f32;
            for (i, &o) in out.iter().enumerate() {
                if lane == i as u32 {
                    v = o;
                }
            }
            let at = p.ptr.row_coef + lane as u64 * plane + (head * padded + r as u64) * 4;
            unsafe { global::st_f32(at, v) };
        }
    });
}
