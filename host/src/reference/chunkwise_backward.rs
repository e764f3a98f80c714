//! The gradient computed the way the chunkwise backward kernels will: a reverse walk over the
//! chunk states, then per chunk the intra-chunk terms. It is the float64 mirror of those
//! kernels (each intermediate they write, such as the state gradients at chunk boundaries, is
//! here to compare against), and it is checked against the step-by-step [`backward`].
//!
//! Notation as in `chunkwise`: chunk k (steps kL … kL + L' − 1, local i, j), b the inclusive
//! cumulative log forget gate in the chunk, g = b_{L'−1}, state before the chunk
//! (C̃_k, ñ_k, m_k). The normalizer rides along as one more value column (MATH.md): the
//! augmented state C'_k = [C̃_k | ñ_k] (DQK × (DHV + 1)), values v'_j = [v_j, 1] and output
//! gradients dnum'_i = [dh_i / den_i, ds_i] with ds_i = −sign(s_i)(dh_i·h_i)/den_i where
//! |s_i| ≥ e^{−m_i} (Exact mode, normalized variants), else 0. With m held constant:
//! - state path C'_{k+1} = γ C'_k + Σ_j w_j k_j v'_jᵀ, γ = e^{g + m_k − m_{k+1}},
//!   w_j = e^{g − b_j + ι_j − m_{k+1}}:  dk_j += w_j dC'_{k+1} v'_j, dv'_j += w_j dC'_{k+1}ᵀ k_j;
//! - outputs num'_i = α_i C'_kᵀ q̂_i + Σ_{j≤i} W_ij (q̂_i·k_j) v'_j, α_i = e^{b_i + m_k − m_i},
//!   W_ij = e^{b_i − b_j + ι_j − m_i}: dq̂_i += α_i C'_k dnum'_i + Σ_j W_ij (dnum'_i·v'_j) k_j,
//!   dk_j += Σ_{i≥j} W_ij (dnum'_i·v'_j) q̂_i, dv'_j += Σ_{i≥j} W_ij (q̂_i·k_j) dnum'_i;
//! - dC'_k = γ dC'_{k+1} + Σ_i α_i q̂_i dnum'_iᵀ, seeded at k = NC by the final-state gradient;
//! - gates: dι_j = k_j·dk_j; dm0 = ⟨dC'_0, C'_0⟩ (mLSTMexp, Exact mode); dλ per chunk, for
//!   a step τ of chunk k, with G_ij = W_ij (q̂_i·k_j)(dnum'_i·v'_j) (j < i), its row and
//!   column sums R_i = Σ_{j<i} G_ij, Cs_j = Σ_{i>j} G_ij, Qinter_i = α_i q̂_i·(C'_k dnum'_i),
//!   Kinter_j = w_j k_j·(dC'_{k+1} v'_j) and A_k = γ ⟨dC'_{k+1}, C'_k⟩:
//!   dλ_τ = A_k + Σ_{j<τ} Kinter_j + Σ_{i≥τ} Qinter_i + Σ_{s<τ}(Cs_s − R_s),
//!   as λ_τ scales γ, the w_j with j < τ, the α_i with i ≥ τ and the W_ij with j < τ ≤ i
//!   (Σ_{s<τ}(Cs_s − R_s) = Σ_{j<τ≤i} G_ij); later chunks enter only through dC'_{k+1}.
//!   It equals the identity dλ_t = Σ_{i≥t}(q̂_i·dq̂_i − k_i·dk_i) + ⟨dC'_NC, C'_NC⟩ of MATH.md,
//!   which is ill-conditioned: where forget gates are near 0 its O(1) terms cancel to a tiny
//!   dλ (in the kernels, the diagonal terms rounded differently in q̂·dq̂ and k·dk left errors
//!   of 1000%), while here every term carries a gate weight that includes λ_τ. (Pairs
//!   j < i < τ still enter Cs_j and R_i with opposite signs: after a reset inside a chunk of
//!   open gates, dλ is still a difference there.)
//!
//! Then the path through the max state (mLSTMexp, Exact mode only), with m_t the row's m_i
//! (equal to the recurrent m_t). Unstabilized, h_t = num_t / (max(|s_t|, 1) + eps·e^{m_t})
//! and C̃_S = C_S e^{−m_S}, ñ_S = n_S e^{−m_S}, so with all else fixed m_t receives
//! dmd_t = −(dh_t·h_t)·eps/den_t (both regimes of the max) and m_S (= m_{S−1}) also
//! dm_S − ⟨dC'_NC, C'_NC⟩, dm_S the upstream gradient. Through m_t = max(a_t, ι_t),
//! a_t = λ_t + m_{t−1} (m_{−1} = m0), with c_t = [a_t ≥ ι_t] (the tie rule of [`backward`]):
//! - reverse scan G_{S−1} = dmd_{S−1} + dm_S − ⟨dC'_NC, C'_NC⟩, G_t = dmd_t + c_{t+1} G_{t+1};
//! - dλ_t += c_t G_t, dι_t += (1 − c_t) G_t, dm0 += c_0 G_0.
//!
//! Holding m constant is exact for mLSTMsig, and with the path through m added it is exact
//! for mLSTMexp too: the result equals [`backward`] to rounding in both modes, for every
//! variant, eps and final-state gradient (dc, dn, dm). In DetachedNormalizer mode neither ds
//! nor the path through m is followed, as there.

use super::backward::{GradMode, RefGradOutputs, RefGrads};
use super::chunkwise::{chunk_ranges, cumulative_log_forget, head_chunk_states};
use super::gates::{denominator, is_stabilized, sigmoid};
use super::head::{HeadInputs, head_slice, head_slice_mut};
use super::state::{State, dot};
use super::{RefInputs, RefParams};
use crate::Variant;

/// The gradient and the per-boundary state gradients of the chunkwise backward.
#[derive(Clone, Debug, PartialEq)]
pub struct ChunkGrads {
    /// The input gradients.
    pub grads: RefGrads,
    /// `NC = ⌈S / L⌉`.
    pub num_chunks: usize,
    /// dL/dC̃_k at every boundary k = 0…NC (k = 0: the initial state, k = NC: the upstream
    /// final-state gradient), (B, NH, NC + 1, DQK, DHV).
    pub dc_states: Vec<f64>,
    /// dL/dñ_k likewise, (B, NH, NC + 1, DQK).
    pub dn_states: Vec<f64>,
}

/// The gradient by the chunkwise decomposition with chunk size `chunk`, equal to
/// [`super::backward`] in both modes (module doc). In DetachedNormalizer mode the upstream dn
/// and dm are ignored, as there.
///
/// # Panics
/// If a tensor of `inp` or `g` does not match `inp.shape`, a head dimension is 0 or `chunk`
/// is 0.
pub fn chunkwise_backward(
    inp: &RefInputs,
    p: &RefParams,
    g: &RefGradOutputs,
    mode: GradMode,
    chunk: usize,
) -> ChunkGrads {
    inp.validate();
    g.validate(&inp.shape);
    assert!(chunk > 0, "reference: chunk size must be positive");
    let shape = inp.shape;
    let (s, dqk, dhv, nc) = (shape.s, shape.dqk, shape.dhv, shape.num_chunks(chunk));
    let mut out = ChunkGrads {
        grads: RefGrads::zeros(&shape),
        num_chunks: nc,
        dc_states: vec![0.0; shape.heads() * (nc + 1) * dqk * dhv],
        dn_states: vec![0.0; shape.heads() * (nc + 1) * dqk],
    };
    for bh in 0..shape.heads() {
        let head = HeadInputs::new(inp, p.variant, bh);
        let seed = Augmented::from_parts(
            g.dc.as_ref()
                .map_or(&[][..], |x| head_slice(x, bh, dqk * dhv)),
            match (&g.dn, mode) {
                (Some(x), GradMode::Exact) => head_slice(x, bh, dqk),
                _ => &[],
            },
            dqk,
            dhv,
        );
        let dm_final = match (&g.dm, mode) {
            (Some(x), GradMode::Exact) => x[bh],
            _ => 0.0,
        };
        let dh = head_slice(&g.dh, bh, s * dhv);
        let hg = backward_head(&head, p, mode, chunk, dh, seed, dm_final);
        let gr = &mut out.grads;
        head_slice_mut(&mut gr.dq, bh, s * dqk).copy_from_slice(&hg.dq);
        head_slice_mut(&mut gr.dk, bh, s * dqk).copy_from_slice(&hg.dk);
        head_slice_mut(&mut gr.dv, bh, s * dhv).copy_from_slice(&hg.dv);
        head_slice_mut(&mut gr.di, bh, s).copy_from_slice(&hg.di);
        head_slice_mut(&mut gr.df, bh, s).copy_from_slice(&hg.df);
        let d0 = &hg.boundaries[0];
        head_slice_mut(&mut gr.dc0, bh, dqk * dhv).copy_from_slice(&d0.c_part());
        head_slice_mut(&mut gr.dn0, bh, dqk).copy_from_slice(&d0.n_part());
        gr.dm0[bh] = hg.dm0;
        let dcs = head_slice_mut(&mut out.dc_states, bh, (nc + 1) * dqk * dhv);
        for (o, d) in dcs.chunks_exact_mut(dqk * dhv).zip(&hg.boundaries) {
            o.copy_from_slice(&d.c_part());
        }
        let dns = head_slice_mut(&mut out.dn_states, bh, (nc + 1) * dqk);
        for (o, d) in dns.chunks_exact_mut(dqk).zip(&hg.boundaries) {
            o.copy_from_slice(&d.n_part());
        }
    }
    out
}

/// A (DQK × (DHV + 1)) matrix [C | n], row-major.
#[derive(Clone, Debug)]
struct Augmented {
    data: Vec<f64>,
    dhv: usize,
}

impl Augmented {
    /// [c | n] from c (DQK × DHV) and n (DQK); an empty slice stands for zeros.
    fn from_parts(c: &[f64], n: &[f64], dqk: usize, dhv: usize) -> Self {
        let mut data = vec![0.0; dqk * (dhv + 1)];
        for (a, row) in data.chunks_exact_mut(dhv + 1).enumerate() {
            if !c.is_empty() {
                row[..dhv].copy_from_slice(&c[a * dhv..(a + 1) * dhv]);
            }
            if !n.is_empty() {
                row[dhv] = n[a];
            }
        }
        Self { data, dhv }
    }

    fn from_state(st: &State, dqk: usize) -> Self {
        Self::from_parts(&st.c, &st.n, dqk, st.c.len() / dqk)
    }

    fn rows(&self) -> std::slice::ChunksExact<'_, f64> {
        self.data.chunks_exact(self.dhv + 1)
    }

    fn c_part(&self) -> Vec<f64> {
        self.rows().flat_map(|r| r[..self.dhv].to_vec()).collect()
    }

    fn n_part(&self) -> Vec<f64> {
        self.rows().map(|r| r[self.dhv]).collect()
    }

    /// self += w x yᵀ for x (DQK), y (DHV + 1).
    fn add_outer(&mut self, w: f64, x: &[f64], y: &[f64]) {
        let width = self.dhv + 1;
        for (row, &xa) in self.data.chunks_exact_mut(width).zip(x) {
            row.iter_mut().zip(y).for_each(|(o, &yb)| *o += w * xa * yb);
        }
    }

    /// out += w · self · y for y (DHV + 1), out (DQK).
    fn apply_add(&self, w: f64, y: &[f64], out: &mut [f64]) {
        for (o, row) in out.iter_mut().zip(self.rows()) {
            *o += w * dot(row, y);
        }
    }

    /// out += w · selfᵀ · x for x (DQK), out (DHV + 1).
    fn apply_t_add(&self, w: f64, x: &[f64], out: &mut [f64]) {
        for (row, &xa) in self.rows().zip(x) {
            out.iter_mut().zip(row).for_each(|(o, &r)| *o += w * xa * r);
        }
    }
}

/// One head's gradients: dq, dk (S, DQK), dv (S, DHV), di, df (S), the state gradients at the
/// NC + 1 boundaries, dm0.
struct HeadGrads {
    dq: Vec<f64>,
    dk: Vec<f64>,
    dv: Vec<f64>,
    di: Vec<f64>,
    df: Vec<f64>,
    boundaries: Vec<Augmented>,
    dm0: f64,
}

/// One head: `dh` (S, DHV), `seed` = dC'_NC from the upstream dc (and dn in Exact mode),
/// `dm_final` the upstream dm_S (0 unless Exact mode).
fn backward_head(
    head: &HeadInputs<'_>,
    p: &RefParams,
    mode: GradMode,
    chunk: usize,
    dh: &[f64],
    seed: Augmented,
    dm_final: f64,
) -> HeadGrads {
    let (s, dqk, dhv) = (head.shape.s, head.shape.dqk, head.shape.dhv);
    let w1 = dhv + 1;
    let stabilized = is_stabilized(p.variant);
    // The path through the max state m (module doc).
    let max_state = stabilized && mode == GradMode::Exact;
    // m_t (the row's m_i) and dmd_t = −(dh_t·h_t)·eps/den_t, (S) each.
    let (mut m_row, mut dm_direct) = (vec![0.0; s], vec![0.0; s]);
    let states = head_chunk_states(head, p.variant, chunk);
    let ranges: Vec<_> = chunk_ranges(s, chunk).collect();
    let vaug = |t: usize| -> Vec<f64> { head.value(t).iter().copied().chain([1.0]).collect() };
    let (mut dqhat, mut dk, mut dvaug) =
        (vec![0.0; s * dqk], vec![0.0; s * dqk], vec![0.0; s * w1]);
    let mut boundaries = vec![seed.clone(); states.len()];
    let mut dc = seed;
    let mut qhat = vec![0.0; dqk];
    // dλ without the path through m, by the per-chunk decomposition (module doc), (S).
    let mut dlambda = vec![0.0; s];
    // dq̂_i or dk_j of one step from one path, (DQK).
    let mut part = vec![0.0; dqk];

    for (kidx, range) in ranges.iter().enumerate().rev() {
        let (before, after) = (&states[kidx], &states[kidx + 1]);
        let b = cumulative_log_forget(&head.gates, range.clone());
        let gsum = b[b.len() - 1];
        let iota = &head.gates.iota[range.clone()];
        let c_before = Augmented::from_state(before, dqk);
        let gamma = (gsum + before.m - after.m).exp();
        let len = range.len();
        // The chunk's parts of dλ: A_k, Kinter_j, Qinter_i and the row and column sums R_i,
        // Cs_j of G_ij (module doc).
        let a_k = gamma * dot(&dc.data, &c_before.data);
        let (mut k_inter, mut q_inter) = (vec![0.0; len], vec![0.0; len]);
        let (mut row_sum, mut col_sum) = (vec![0.0; len], vec![0.0; len]);

        // State path: the chunk's keys and values fed C'_{k+1}.
        for (j, t) in range.clone().enumerate() {
            let w = (gsum - b[j] + iota[j] - after.m).exp();
            part.fill(0.0);
            dc.apply_add(w, &vaug(t), &mut part);
            k_inter[j] = dot(head.key(t), &part);
            dk[t * dqk..(t + 1) * dqk]
                .iter_mut()
                .zip(&part)
                .for_each(|(o, &x)| *o += x);
            dc.apply_t_add(w, head.key(t), &mut dvaug[t * w1..(t + 1) * w1]);
        }
        let mut dc_out = Augmented::from_parts(&[], &[], dqk, dhv);

        // Output path, row by row.
        for (i, t) in range.clone().enumerate() {
            head.qhat(t, p.scale, &mut qhat);
            let logs: Vec<f64> = (0..=i).map(|j| b[i] - b[j] + iota[j]).collect();
            let m_i = if stabilized {
                logs.iter().fold(b[i] + before.m, |m, &x| m.max(x))
            } else {
                0.0
            };
            let alpha = (b[i] + before.m - m_i).exp();
            let weights: Vec<f64> = logs.iter().map(|&x| (x - m_i).exp()).collect();
            // Forward: num' (DHV + 1), its last entry s_i.
            let mut num = vec![0.0; w1];
            c_before.apply_t_add(alpha, &qhat, &mut num);
            for (j, &w) in weights.iter().enumerate() {
                let tj = range.start + j;
                let a = w * dot(&qhat, head.key(tj));
                num.iter_mut().zip(vaug(tj)).for_each(|(o, x)| *o += a * x);
            }
            let s_i = num[dhv];
            let den = denominator(p, s_i, m_i);
            let dh_i = &dh[t * dhv..(t + 1) * dhv];
            let h_dot: f64 = dh_i.iter().zip(&num[..dhv]).map(|(a, x)| a * x / den).sum();
            let ds =
                if mode == GradMode::Exact && p.variant.normalizes() && s_i.abs() >= (-m_i).exp() {
                    -s_i.signum() * h_dot / den
                } else {
                    0.0
                };
            let dnum: Vec<f64> = dh_i.iter().map(|x| x / den).chain([ds]).collect();
            m_row[t] = m_i;
            if max_state {
                dm_direct[t] = -h_dot * p.eps / den;
            }

            // Backward.
            part.fill(0.0);
            c_before.apply_add(alpha, &dnum, &mut part);
            q_inter[i] = dot(&qhat, &part);
            dqhat[t * dqk..(t + 1) * dqk]
                .iter_mut()
                .zip(&part)
                .for_each(|(o, &x)| *o += x);
            dc_out.add_outer(alpha, &qhat, &dnum);
            for (j, &w) in weights.iter().enumerate() {
                let tj = range.start + j;
                let (k_j, v_j) = (head.key(tj), vaug(tj));
                let dv_dot = w * dot(&dnum, &v_j);
                for a in 0..dqk {
                    dqhat[t * dqk + a] += dv_dot * k_j[a];
                    dk[tj * dqk + a] += dv_dot * qhat[a];
                }
                let qk = w * dot(&qhat, k_j);
                if j < i {
                    // G_ij = W_ij (q̂_i·k_j)(dnum'_i·v'_j).
                    let g_ij = qk * dot(&dnum, &v_j);
                    row_sum[i] += g_ij;
                    col_sum[j] += g_ij;
                }
                dvaug[tj * w1..(tj + 1) * w1]
                    .iter_mut()
                    .zip(&dnum)
                    .for_each(|(o, &x)| *o += qk * x);
            }
        }
        // dλ_τ = A_k + Σ_{j<τ} Kinter_j + Σ_{i≥τ} Qinter_i + Σ_{s<τ}(Cs_s − R_s).
        let dl = &mut dlambda[range.clone()];
        let mut suffix = 0.0;
        for (o, &x) in dl.iter_mut().zip(&q_inter).rev() {
            suffix += x;
            *o = suffix;
        }
        let mut prefix = a_k;
        for (tau, o) in dl.iter_mut().enumerate() {
            *o += prefix;
            prefix += k_inter[tau] + (col_sum[tau] - row_sum[tau]);
        }
        dc.data
            .iter_mut()
            .zip(&dc_out.data)
            .for_each(|(d, &o)| *d = gamma * *d + o);
        boundaries[kidx] = dc.clone();
    }

    // q̂ = q·scale, so dq = scale·dq̂.
    let dq: Vec<f64> = dqhat.iter().map(|x| x * p.scale).collect();
    let dv: Vec<f64> = dvaug
        .chunks_exact(w1)
        .flat_map(|r| r[..dhv].to_vec())
        .collect();
    let final_state = Augmented::from_state(&states[states.len() - 1], dqk);
    let final_term = dot(&boundaries[boundaries.len() - 1].data, &final_state.data);
    // c_{t+1}·G_{t+1}, the gradient reaching m_t from later steps; at t = S − 1 the final
    // state's: dm_S − ⟨dC'_NC, C'_NC⟩.
    let mut dm_later = if max_state {
        dm_final - final_term
    } else {
        0.0
    };
    let (mut di, mut df) = (vec![0.0; s], vec![0.0; s]);
    for t in (0..s).rev() {
        let mut diota = dot(head.key(t), &dk[t * dqk..(t + 1) * dqk]);
        let mut dlambda_t = dlambda[t];
        if max_state {
            let big_g = dm_direct[t] + dm_later;
            let (lambda, iota) = (head.gates.lambda[t], head.gates.iota[t]);
            let m_prev = if t == 0 { head.init.m } else { m_row[t - 1] };
            // c_t = [a_t ≥ ι_t]: m_t follows a_t = λ_t + m_{t−1}, else ι_t.
            if lambda + m_prev >= iota {
                dlambda_t += big_g;
                dm_later = big_g;
            } else {
                diota += big_g;
                dm_later = 0.0;
            }
        }
        di[t] = match p.variant {
            Variant::Exp => diota,
            Variant::Sig { .. } => diota * sigmoid(-head.i[t]),
        };
        df[t] = dlambda_t * sigmoid(-head.f[t]);
    }
    // dm_later is now c_0·G_0 (for S = 0, the final state's term: m_S = m0).
    let dm0 = if max_state {
        dot(
            &boundaries[0].data,
            &Augmented::from_state(&states[0], dqk).data,
        ) + dm_later
    } else {
        0.0
    };
    HeadGrads {
        dq,
        dk,
        dv,
        di,
        df,
        boundaries,
        dm0,
    }
}

#[cfg(test)]
mod tests {
    use super::super::backward::backward;
    use super::super::test_util::{VARIANTS, seeded_rng, shape};
    use super::*;
    use rand::Rng;

    fn normals(n: usize, rng: &mut impl Rng) -> Vec<f64> {
        (0..n).map(|_| rng.gen_range(-1.5..1.5)).collect()
    }

    /// Asserts every input gradient of `got` within `tol` of `want` and returns the largest
    /// error: max|got − want| over a tensor, relative to the larger of `want` and `sizes` (the
    /// same tensor of a gradient whose size bounds the terms that cancel in `want`, or `want`
    /// itself). The gate gradients dĩ, df̃, dm0 are measured against the largest of them all: each
    /// is a sum of terms up to that size (k·dk, the parts of dλ, ⟨dC', C'⟩, the path through m)
    /// which may cancel to almost nothing, e.g. dm0 where a reset cuts m_S off m0; rounding in
    /// them is ~1e-16 of that size.
    fn compare(what: &str, got: &ChunkGrads, want: &RefGrads, sizes: &RefGrads, tol: f64) -> f64 {
        let g = &got.grads;
        let size = |x: &[f64]| x.iter().fold(0.0, |m: f64, v| m.max(v.abs()));
        let error = |name: &str, a: &[f64], b: &[f64], scale: f64| {
            assert_eq!(a.len(), b.len(), "{what} {name}: lengths differ");
            let diff = size(&a.iter().zip(b).map(|(x, y)| x - y).collect::<Vec<_>>());
            let err = if diff == 0.0 { 0.0 } else { diff / scale };
            assert!(
                err <= tol,
                "{what} {name}: relative error {err:e} > {tol:e}"
            );
            err
        };
        let gate_size = [
            &want.di, &want.df, &want.dm0, &sizes.di, &sizes.df, &sizes.dm0,
        ]
        .into_iter()
        .fold(0.0, |m: f64, x| m.max(size(x)));
        let mut worst: f64 = 0.0;
        for (name, a, b) in [
            ("di", &g.di, &want.di),
            ("df", &g.df, &want.df),
            ("dm0", &g.dm0, &want.dm0),
        ] {
            worst = worst.max(error(name, a, b, gate_size));
        }
        for (name, a, b, other) in [
            ("dq", &g.dq, &want.dq, &sizes.dq),
            ("dk", &g.dk, &want.dk, &sizes.dk),
            ("dv", &g.dv, &want.dv, &sizes.dv),
            ("dc0", &g.dc0, &want.dc0, &sizes.dc0),
            ("dn0", &g.dn0, &want.dn0, &sizes.dn0),
        ] {
            worst = worst.max(error(name, a, b, size(b).max(size(other))));
        }
        worst
    }

    /// Upstream gradients: dh always; the final-state gradients when asked.
    fn upstream(inp: &RefInputs, with_final: bool, rng: &mut impl Rng) -> RefGradOutputs {
        let sh = inp.shape;
        RefGradOutputs {
            dh: normals(sh.heads() * sh.s * sh.dhv, rng),
            dc: with_final.then(|| normals(sh.heads() * sh.dqk * sh.dhv, rng)),
            dn: with_final.then(|| normals(sh.heads() * sh.dqk, rng)),
            dm: with_final.then(|| normals(sh.heads(), rng)),
        }
    }

    /// DetachedNormalizer: m and the denominator frozen in both, so they agree to rounding for
    /// every variant, chunk size and with final-state gradients.
    #[test]
    fn detached_matches_the_stepwise_backward() {
        let mut rng = seeded_rng("detached_matches_the_stepwise_backward");
        for variant in VARIANTS {
            for (sh, init) in [
                (shape(1, 2, 13, 4, 3), true),
                (shape(2, 1, 9, 5, 6), false),
                (shape(1, 1, 1, 3, 2), true),
            ] {
                let inp = RefInputs::random(sh, init, &mut rng);
                let p = RefParams::new(variant, sh.dqk);
                let g = upstream(&inp, true, &mut rng);
                let want = backward(&inp, &p, &g, GradMode::DetachedNormalizer);
                for chunk in [1, 4, 13, 20] {
                    let got = chunkwise_backward(&inp, &p, &g, GradMode::DetachedNormalizer, chunk);
                    compare(
                        &format!("{variant:?} {sh:?} L={chunk}"),
                        &got,
                        &want,
                        &want,
                        1e-9,
                    );
                }
            }
        }
    }

    /// Exact mode, mLSTMsig (no max state): the chunkwise form is the exact gradient, final-state
    /// gradients included.
    #[test]
    fn exact_matches_the_stepwise_backward_for_sig() {
        let mut rng = seeded_rng("exact_matches_the_stepwise_backward_for_sig");
        for variant in [
            Variant::Sig { normalize: true },
            Variant::Sig { normalize: false },
        ] {
            let sh = shape(1, 2, 11, 4, 3);
            let inp = RefInputs::random(sh, true, &mut rng);
            let p = RefParams::new(variant, sh.dqk);
            let g = upstream(&inp, true, &mut rng);
            let want = backward(&inp, &p, &g, GradMode::Exact);
            for chunk in [3, 11] {
                let got = chunkwise_backward(&inp, &p, &g, GradMode::Exact, chunk);
                compare(&format!("{variant:?} L={chunk}"), &got, &want, &want, 1e-9);
            }
        }
    }

    /// Exact mode, mLSTMexp: with the path through m the chunkwise form is the exact gradient,
    /// equal to the stepwise one for the default eps and eps = 0, with and without final-state
    /// gradients (dc, dn, dm), for chunk sizes dividing S and not, L > S, L = 1, S = 1 and S = 0
    /// (then dm0 = dm_S).
    #[test]
    fn exact_matches_the_stepwise_backward_for_exp() {
        let mut rng = seeded_rng("exact_matches_the_stepwise_backward_for_exp");
        let mut worst: f64 = 0.0;
        for (sh, init) in [
            (shape(1, 2, 13, 4, 3), true),
            (shape(2, 1, 9, 5, 6), false),
            (shape(1, 1, 1, 3, 2), true),
            (shape(2, 2, 24, 4, 4), true),
            (shape(1, 1, 0, 3, 2), true),
        ] {
            for eps in [1e-6, 0.0] {
                for with_final in [true, false] {
                    let inp = RefInputs::random(sh, init, &mut rng);
                    let p = RefParams {
                        eps,
                        ..RefParams::new(Variant::Exp, sh.dqk)
                    };
                    let g = upstream(&inp, with_final, &mut rng);
                    let want = backward(&inp, &p, &g, GradMode::Exact);
                    let sizes = backward(&inp, &p, &g, GradMode::DetachedNormalizer);
                    for chunk in [1, 4, 5, 13, 20] {
                        let got = chunkwise_backward(&inp, &p, &g, GradMode::Exact, chunk);
                        let what = format!("{sh:?} eps={eps:e} final={with_final} L={chunk}");
                        worst = worst.max(compare(&what, &got, &want, &sizes, 1e-9));
                    }
                }
            }
        }
        println!("exact exp chunkwise vs stepwise: max relative error {worst:e}");
    }

    /// As [`exact_matches_the_stepwise_backward_for_exp`] with a tiny query scale, so that the
    /// floor e^{−m_t} wins the normalizer max (the other regime of dmd_t), and with
    /// a large eps, so that the path through m is a large part of the gate gradients.
    #[test]
    fn exact_matches_the_stepwise_backward_for_exp_with_floor_or_large_eps() {
        let mut rng =
            seeded_rng("exact_matches_the_stepwise_backward_for_exp_with_floor_or_large_eps");
        let mut worst: f64 = 0.0;
        for (sh, init) in [(shape(1, 2, 13, 4, 3), true), (shape(2, 1, 9, 5, 6), false)] {
            let base = RefParams::new(Variant::Exp, sh.dqk);
            for p in [
                RefParams {
                    scale: 1e-5,
                    ..base
                },
                RefParams { eps: 0.5, ..base },
            ] {
                let inp = RefInputs::random(sh, init, &mut rng);
                let g = upstream(&inp, true, &mut rng);
                let want = backward(&inp, &p, &g, GradMode::Exact);
                let sizes = backward(&inp, &p, &g, GradMode::DetachedNormalizer);
                for chunk in [1, 4, 5, 13, 20] {
                    let got = chunkwise_backward(&inp, &p, &g, GradMode::Exact, chunk);
                    let what = format!("{sh:?} scale={:e} eps={:e} L={chunk}", p.scale, p.eps);
                    worst = worst.max(compare(&what, &got, &want, &sizes, 1e-9));
                }
            }
        }
        println!(
            "exact exp chunkwise vs stepwise (floor, large eps): max relative error {worst:e}"
        );
    }

    /// Forget gates near 0 (f̃ ~ U[−13, −11], σ(f̃) ~ 6e-6): the true dλ is tiny and the
    /// per-chunk form has no cancelling terms, so it matches in both modes for every variant,
    /// with and without final-state gradients, and df̃ also to 1e-11 of its own size (the larger
    /// of the exact and detached df̃; observed: up to 8e-13, where the identity over the whole
    /// sequence gave a median 1e-11, up to 3e-7).
    #[test]
    fn matches_the_stepwise_backward_with_forget_gates_near_zero() {
        let mut rng = seeded_rng("matches_the_stepwise_backward_with_forget_gates_near_zero");
        let (mut worst, mut worst_df): (f64, f64) = (0.0, 0.0);
        for variant in VARIANTS {
            for mode in [GradMode::Exact, GradMode::DetachedNormalizer] {
                for (sh, init) in [
                    (shape(1, 2, 13, 4, 3), true),
                    (shape(2, 1, 24, 5, 6), false),
                    (shape(1, 1, 1, 3, 2), true),
                ] {
                    for with_final in [true, false] {
                        let mut inp = RefInputs::random(sh, init, &mut rng);
                        inp.f
                            .iter_mut()
                            .for_each(|x| *x = rng.gen_range(-13.0..-11.0));
                        let p = RefParams::new(variant, sh.dqk);
                        let g = upstream(&inp, with_final, &mut rng);
                        let want = backward(&inp, &p, &g, mode);
                        // In Exact mode dnum'_i·v'_j = dh_i·v_j/den_i + ds_i may cancel (one
                        // dominant term in s_i): the detached gradient bounds the terms.
                        let sizes = match mode {
                            GradMode::Exact => backward(&inp, &p, &g, GradMode::DetachedNormalizer),
                            GradMode::DetachedNormalizer => want.clone(),
                        };
                        let df_size =
                            (want.df.iter().chain(&sizes.df)).fold(0.0, |m: f64, x| m.max(x.abs()));
                        for chunk in [1, 4, 5, 13, 20] {
                            let got = chunkwise_backward(&inp, &p, &g, mode, chunk);
                            let what =
                                format!("{variant:?} {mode:?} {sh:?} final={with_final} L={chunk}");
                            worst = worst.max(compare(&what, &got, &want, &sizes, 1e-9));
                            let df_diff = got
                                .grads
                                .df
                                .iter()
                                .zip(&want.df)
                                .fold(0.0, |m: f64, (a, b)| m.max((a - b).abs()));
                            let df_err = if df_diff == 0.0 {
                                0.0
                            } else {
                                df_diff / df_size
                            };
                            assert!(df_err <= 1e-11, "{what} df: relative error {df_err:e}");
                            worst_df = worst_df.max(df_err);
                        }
                    }
                }
            }
        }
        println!(
            "forget gates near 0: max relative error {worst:e}, df to its own size {worst_df:e}"
        );
    }

    /// The boundary gradients: the first is the initial-state gradient, the last the seed.
    #[test]
    fn boundary_gradients_start_at_the_seed_and_end_at_the_initial_state() {
        let mut rng =
            seeded_rng("boundary_gradients_start_at_the_seed_and_end_at_the_initial_state");
        let sh = shape(1, 1, 10, 3, 2);
        let inp = RefInputs::random(sh, true, &mut rng);
        let p = RefParams::new(Variant::Sig { normalize: true }, sh.dqk);
        let g = upstream(&inp, true, &mut rng);
        let got = chunkwise_backward(&inp, &p, &g, GradMode::Exact, 4);
        let nc = got.num_chunks;
        assert_eq!(nc, 3);
        let per = sh.dqk * sh.dhv;
        assert_eq!(&got.dc_states[..per], &got.grads.dc0[..]);
        assert_eq!(&got.dc_states[nc * per..], &g.dc.as_ref().unwrap()[..]);
        assert_eq!(&got.dn_states[nc * sh.dqk..], &g.dn.as_ref().unwrap()[..]);
    }
}
