//! The recurrent form: one step per token, O(S·DQK·DHV) per head.
//!
//! Notation: `B`, `NH`, `S`, `DQK`, `DHV` as in the parent module (no chunks here).
//!
//! Per head, for t = 1…S:
//! m_t = max(λ_t + m_{t−1}, ι_t) (mLSTMexp) or 0 (mLSTMsig),
//! C̃_t = e^{λ_t + m_{t−1} − m_t} C̃_{t−1} + e^{ι_t − m_t} k_t v_tᵀ, ñ_t likewise with k_t,
//! h_t = C̃_tᵀ q̂_t / den_t with den_t = max(|ñ_tᵀ q̂_t|, e^{−m_t}) + eps (1 without normalizer).

use super::gates::{denominator, stabilizer};
use super::head::HeadInputs;
use super::state::State;
use super::{RefInputs, RefOutputs, RefParams, Shape};
use crate::Variant;

/// Runs the recurrence; returns h and the final states (C̃_S, ñ_S, m_S).
///
/// # Panics
/// If a tensor's length does not match `inp.shape` or a head dimension is 0.
pub fn recurrent(inp: &RefInputs, p: &RefParams) -> RefOutputs {
    RefOutputs::per_head(inp, p.variant, |head, h| run_head(head, p, h))
}

/// Runs one head, writing h (S, DHV); returns the final state.
fn run_head(head: &HeadInputs<'_>, p: &RefParams, h: &mut [f64]) -> State {
    let mut state = head.init.clone();
    let mut qhat = vec![0.0; head.shape.dqk];
    for (t, h_t) in h.chunks_exact_mut(head.shape.dhv).enumerate() {
        step(&mut state, head, p.variant, t);
        head.qhat(t, p.scale, &mut qhat);
        readout(&state, p, &qhat, h_t);
    }
    state
}

/// Advances `state` from step t−1 to t (0-based `t`: consumes k_t, v_t, λ_t, ι_t).
pub(super) fn step(state: &mut State, head: &HeadInputs<'_>, variant: Variant, t: usize) {
    let (lambda, iota) = (head.gates.lambda[t], head.gates.iota[t]);
    let m_new = stabilizer(variant, lambda + state.m, &[iota]);
    state.advance(m_new, lambda, iota, head.key(t), head.value(t));
}

/// Writes h = C̃ᵀq̂ / den (DHV) for the state after a step and its query q̂ (DQK).
fn readout(state: &State, p: &RefParams, qhat: &[f64], h: &mut [f64]) {
    let s = state.query(qhat, h);
    let den = denominator(p, s, state.m);
    h.iter_mut().for_each(|x| *x /= den);
}

/// How close every step comes to a point where the exact gradient is discontinuous (the
/// forward is continuous there, its derivative jumps), per step (B, NH, S):
/// - `den`: the relative distance ||s_t| − floor_t| / floor_t of the normalizer readout to its
///   floor (normalized variants; +∞ otherwise);
/// - `readout_terms`: ‖ñ_t ∘ q̂_t‖ / floor_t, the size of the readout's terms on the same
///   scale as `den` (a rounding of u in them moves |s_t| by about u times this; 0 where `den`
///   is +∞);
/// - `branch`: λ_t + m_{t−1} − ι_t, whose sign picks the max state's branch (mLSTMexp; +∞
///   otherwise).
///
/// Gradients computed in finite precision may take either side within their rounding of these
/// quantities, so tests of Exact mode keep their inputs away from them.
#[derive(Clone, Debug)]
pub struct KinkMargins {
    pub den: Vec<f64>,
    pub readout_terms: Vec<f64>,
    pub branch: Vec<f64>,
}

/// The [`KinkMargins`] of `inp`.
pub fn kink_margins(inp: &RefInputs, p: &RefParams) -> KinkMargins {
    inp.validate();
    let n = inp.shape.heads() * inp.shape.s;
    let mut out = KinkMargins {
        den: vec![f64::INFINITY; n],
        readout_terms: vec![0.0; n],
        branch: vec![f64::INFINITY; n],
    };
    let mut qhat = vec![0.0; inp.shape.dqk];
    let mut h = vec![0.0; inp.shape.dhv];
    for bh in 0..inp.shape.heads() {
        let head = HeadInputs::new(inp, p.variant, bh);
        let mut state = head.init.clone();
        for t in 0..inp.shape.s {
            let row = bh * inp.shape.s + t;
            if p.variant == Variant::Exp {
                out.branch[row] = head.gates.lambda[t] + state.m - head.gates.iota[t];
            }
            step(&mut state, &head, p.variant, t);
            if p.variant.normalizes() {
                head.qhat(t, p.scale, &mut qhat);
                let s = state.query(&qhat, &mut h);
                let floor = if p.variant == Variant::Exp {
                    (-state.m).exp()
                } else {
                    1.0
                };
                out.den[row] = (s.abs() - floor).abs() / floor;
                out.readout_terms[row] = state.readout_terms(&qhat) / floor;
            }
        }
    }
    out
}

/// Per step (B, NH, S), the sizes that set how errors of the states reach h_t = C̃_tᵀq̂_t / den_t
/// (the readout's conditioning), from the float64 recurrence:
/// - `s`: the normalizer readout ñ_tᵀq̂_t (0 without the normalizer);
/// - `den`: max(|s_t|, floor_t) + eps (1 without the normalizer);
/// - `n_norm`: ‖ñ_t‖₂; `q_norm`: ‖q̂_t‖₂; `c_norm`: ‖C̃_t‖_F;
/// - `num_norm`: ‖C̃_tᵀq̂_t‖₂ (= ‖h_t‖₂·den_t);
/// - `cq_norm`: ‖diag(q̂_t) C̃_t‖_F = (Σ_a q̂_a² ‖row a of C̃_t‖²)^½;
/// - `nq_norm`: ‖ñ_t ∘ q̂_t‖₂ (elementwise product).
///
/// A relative error ε of ñ_t moves den_t by at most ε·‖ñ_t‖‖q̂_t‖ (max and |·| are
/// 1-Lipschitz), i.e. relatively by ε·κ with κ = ‖ñ_t‖‖q̂_t‖/den_t, which is large where
/// |ñ_tᵀq̂_t| is a small difference of large terms; by ε·‖ñ_t ∘ q̂_t‖/den_t in root mean square
/// when the errors of its entries are independent and proportional to the entries
/// (roundings). A relative error ε of C̃_t moves the numerator relatively by at most
/// ε·‖C̃_t‖_F‖q̂_t‖/‖C̃_tᵀq̂_t‖, and by ε·‖diag(q̂_t)C̃_t‖_F/‖C̃_tᵀq̂_t‖ in root mean square.
#[derive(Clone, Debug)]
pub struct ReadoutTerms {
    pub s: Vec<f64>,
    pub den: Vec<f64>,
    pub n_norm: Vec<f64>,
    pub q_norm: Vec<f64>,
    pub c_norm: Vec<f64>,
    pub num_norm: Vec<f64>,
    pub cq_norm: Vec<f64>,
    pub nq_norm: Vec<f64>,
}

/// The [`ReadoutTerms`] of `inp`.
pub fn readout_terms(inp: &RefInputs, p: &RefParams) -> ReadoutTerms {
    inp.validate();
    let Shape {
        s: steps, dqk, dhv, ..
    } = inp.shape;
    let n = inp.shape.heads() * steps;
    let mut out = ReadoutTerms {
        s: vec![0.0; n],
        den: vec![1.0; n],
        n_norm: vec![0.0; n],
        q_norm: vec![0.0; n],
        c_norm: vec![0.0; n],
        num_norm: vec![0.0; n],
        cq_norm: vec![0.0; n],
        nq_norm: vec![0.0; n],
    };
    let norm = |x: &[f64]| x.iter().map(|v| v * v).sum::<f64>().sqrt();
    let mut qhat = vec![0.0; dqk];
    let mut num = vec![0.0; dhv];
    for bh in 0..inp.shape.heads() {
        let head = HeadInputs::new(inp, p.variant, bh);
        let mut state = head.init.clone();
        for t in 0..steps {
            let row = bh * steps + t;
            step(&mut state, &head, p.variant, t);
            head.qhat(t, p.scale, &mut qhat);
            let s = state.query(&qhat, &mut num);
            if p.variant.normalizes() {
                out.s[row] = s;
                out.den[row] = denominator(p, s, state.m);
            }
            out.n_norm[row] = norm(&state.n);
            out.nq_norm[row] = state.readout_terms(&qhat);
            out.q_norm[row] = norm(&qhat);
            out.c_norm[row] = norm(&state.c);
            out.num_norm[row] = norm(&num);
            out.cq_norm[row] = state
                .c
                .chunks_exact(dhv)
                .zip(&qhat)
                .map(|(c_row, &q)| q * q * c_row.iter().map(|c| c * c).sum::<f64>())
                .sum::<f64>()
                .sqrt();
        }
    }
    out
}

/// All states of one head, before step 1 through after step S: S + 1 states.
pub(super) fn trajectory(head: &HeadInputs<'_>, variant: Variant) -> Vec<State> {
    let mut states = Vec::with_capacity(head.shape.s + 1);
    states.push(head.init.clone());
    for t in 0..head.shape.s {
        let mut next = states[t].clone();
        step(&mut next, head, variant, t);
        states.push(next);
    }
    states
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::test_util::{VARIANTS, assert_close, seeded_rng, shape, time_slice};

    /// Running the first part, then the rest from its final states, equals one run bit for bit
    /// (the same operations in the same order).
    #[test]
    fn recurrent_state_passing_matches_single_run() {
        let mut rng = seeded_rng("recurrent_state_passing_matches_single_run");
        let shape = shape(2, 2, 23, 5, 3);
        let split = 9;
        for variant in VARIANTS {
            for with_init in [false, true] {
                let p = RefParams::new(variant, shape.dqk);
                let inp = RefInputs::random(shape, with_init, &mut rng);
                let whole = recurrent(&inp, &p);
                let first = recurrent(&time_slice(&inp, 0..split, None), &p);
                let rest = recurrent(&time_slice(&inp, split..shape.s, Some(&first)), &p);
                let (first_h, rest_h) = (
                    first.h.chunks(split * shape.dhv),
                    rest.h.chunks((shape.s - split) * shape.dhv),
                );
                let joined: Vec<f64> = first_h
                    .zip(rest_h)
                    .flat_map(|(a, b)| [a, b].concat())
                    .collect();
                let label = format!("{variant:?}, init {with_init}");
                assert_eq!(joined, whole.h, "h, {label}");
                assert_eq!(
                    (&rest.c, &rest.n, &rest.m),
                    (&whole.c, &whole.n, &whole.m),
                    "{label}"
                );
            }
        }
    }

    /// The readout terms agree with the recurrence's outputs (‖C̃_tᵀq̂_t‖ = ‖h_t‖·den_t; the
    /// last step's norms are the final states'), and each is within its Cauchy–Schwarz bound.
    #[test]
    fn readout_terms_match_the_recurrence() {
        let mut rng = seeded_rng("readout_terms_match_the_recurrence");
        let shape = shape(2, 1, 7, 5, 3);
        let norm = |x: &[f64]| x.iter().map(|v| v * v).sum::<f64>().sqrt();
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * a.abs().max(b.abs());
        for variant in VARIANTS {
            let p = RefParams::new(variant, shape.dqk);
            let inp = RefInputs::random(shape, true, &mut rng);
            let out = recurrent(&inp, &p);
            let t = readout_terms(&inp, &p);
            for (row, h) in out.h.chunks_exact(shape.dhv).enumerate() {
                assert!(
                    close(t.num_norm[row], norm(h) * t.den[row]),
                    "{variant:?} {row}"
                );
                let nq = t.n_norm[row] * t.q_norm[row] * (1.0 + 1e-12);
                assert!(t.s[row].abs() <= nq && t.nq_norm[row] <= nq);
                assert!(t.cq_norm[row] <= t.c_norm[row] * t.q_norm[row] * (1.0 + 1e-12));
                assert!(t.num_norm[row] <= t.c_norm[row] * t.q_norm[row] * (1.0 + 1e-12));
                if !variant.normalizes() {
                    assert_eq!((t.s[row], t.den[row]), (0.0, 1.0));
                }
            }
            let (cs, ns) = (shape.dqk * shape.dhv, shape.dqk);
            for bh in 0..shape.heads() {
                let last = bh * shape.s + shape.s - 1;
                assert!(close(t.c_norm[last], norm(&out.c[bh * cs..(bh + 1) * cs])));
                assert!(close(t.n_norm[last], norm(&out.n[bh * ns..(bh + 1) * ns])));
            }
        }
    }

    /// `None` initial states mean zeros (m0 = 0), and mLSTMsig ignores m0.
    #[test]
    fn absent_initial_state_equals_zero_state() {
        let mut rng = seeded_rng("absent_initial_state_equals_zero_state");
        let shape = shape(1, 3, 6, 4, 2);
        let heads = shape.heads();
        for variant in VARIANTS {
            let p = RefParams::new(variant, shape.dqk);
            let inp = RefInputs::random(shape, false, &mut rng);
            let zeros = RefInputs {
                c0: Some(vec![0.0; heads * shape.dqk * shape.dhv]),
                n0: Some(vec![0.0; heads * shape.dqk]),
                m0: Some(vec![0.0; heads]),
                ..inp.clone()
            };
            assert_eq!(recurrent(&inp, &p), recurrent(&zeros, &p), "{variant:?}");
        }
        let p = RefParams::new(Variant::Sig { normalize: true }, shape.dqk);
        let inp = RefInputs::random(shape, true, &mut rng);
        let other_m0 = RefInputs {
            m0: Some(vec![5.0; heads]),
            ..inp.clone()
        };
        assert_eq!(recurrent(&inp, &p), recurrent(&other_m0, &p));
    }

    /// mLSTMsig with a single step: h = σ(ĩ)(q̂·k) v / (max(|σ(ĩ)(q̂·k)|, 1) + eps), by hand.
    #[test]
    fn single_step_matches_hand_computation() {
        let shape = shape(1, 1, 1, 2, 2);
        let inp = RefInputs {
            shape,
            q: vec![1.0, 2.0],
            k: vec![3.0, -1.0],
            v: vec![0.5, -2.0],
            i: vec![0.3],
            f: vec![1.0],
            c0: None,
            n0: None,
            m0: None,
        };
        let mut p = RefParams::new(Variant::Sig { normalize: true }, 2);
        p.scale = 0.5;
        let gate = 1.0 / (1.0 + f64::exp(-0.3));
        let score = gate * 0.5 * (3.0 - 2.0);
        let den = score.abs().max(1.0) + p.eps;
        let out = recurrent(&inp, &p);
        assert_close("h", &out.h, &[score * 0.5 / den, score * -2.0 / den], 1e-15);
        assert_close("n", &out.n, &[gate * 3.0, -gate], 1e-15);
        // mLSTMexp: m_1 = max(logσ(1), 0.3) = 0.3, so C̃_1 = k vᵀ and the floor is e^{−0.3}.
        p.variant = Variant::Exp;
        let out = recurrent(&inp, &p);
        let den = (0.5f64).max(f64::exp(-0.3)) + p.eps;
        assert_close("h exp", &out.h, &[0.5 * 0.5 / den, 0.5 * -2.0 / den], 1e-15);
        assert_close("m exp", &out.m, &[0.3], 0.0);
    }
}
