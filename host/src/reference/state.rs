//! The stabilized state (C̃, ñ, m) of one head and the two gated sums every forward form is
//! built from: a new state from an old one plus weighted keys/values ([`gated_state`]), and one
//! output row from a state plus weighted keys/values ([`gated_output`]).
//!
//! Notation: `J` number of keys in a gated sum, `DQK`, `DHV` head dimensions; `D_j` the log
//! weight of key j, `D_0` the log weight of the previous state, m = max(D_0, max_j D_j)
//! (mLSTMexp) or 0 (mLSTMsig).

use super::RefParams;
use super::gates::{denominator, stabilizer};
use crate::Variant;

/// Stabilized state of one head: the unstabilized state is (C̃·e^m, ñ·e^m).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct State {
    /// C̃, (DQK, DHV).
    pub c: Vec<f64>,
    /// ñ, (DQK).
    pub n: Vec<f64>,
    /// Max state m (0 for mLSTMsig).
    pub m: f64,
}

impl State {
    /// Value dimension DHV.
    fn dhv(&self) -> usize {
        self.c.len() / self.n.len()
    }

    /// C̃ ← α C̃, ñ ← α ñ.
    pub fn scale(&mut self, alpha: f64) {
        self.c.iter_mut().for_each(|x| *x *= alpha);
        self.n.iter_mut().for_each(|x| *x *= alpha);
    }

    /// C̃ += w k vᵀ, ñ += w k, for k (DQK) and v (DHV).
    pub fn add_outer(&mut self, w: f64, k: &[f64], v: &[f64]) {
        for ((c_row, n_a), &k_a) in self.c.chunks_exact_mut(v.len()).zip(&mut self.n).zip(k) {
            let wk = w * k_a;
            *n_a += wk;
            c_row.iter_mut().zip(v).for_each(|(c, &v_d)| *c += wk * v_d);
        }
    }

    /// ‖ñ ∘ x‖₂, the size of the terms of the readout ñᵀx (what its rounding is relative to).
    pub fn readout_terms(&self, x: &[f64]) -> f64 {
        self.n
            .iter()
            .zip(x)
            .map(|(n, q)| (n * q) * (n * q))
            .sum::<f64>()
            .sqrt()
    }

    /// Writes num = C̃ᵀx (DHV) for x (DQK) and returns ñᵀx.
    pub fn query(&self, x: &[f64], num: &mut [f64]) -> f64 {
        num.fill(0.0);
        for (c_row, &x_a) in self.c.chunks_exact(self.dhv()).zip(x) {
            num.iter_mut().zip(c_row).for_each(|(o, &c)| *o += x_a * c);
        }
        dot(&self.n, x)
    }

    /// One recurrent step to the given new max state:
    /// C̃ ← e^{λ + m − m_new} C̃ + e^{ι − m_new} k vᵀ (ñ likewise), m ← m_new.
    pub fn advance(&mut self, m_new: f64, lambda: f64, iota: f64, k: &[f64], v: &[f64]) {
        self.scale((lambda + self.m - m_new).exp());
        self.add_outer((iota - m_new).exp(), k, v);
        self.m = m_new;
    }
}

/// Keys and values entering a gated sum, with their log weights D_j.
#[derive(Clone, Copy, Debug)]
pub(super) struct GatedKeys<'a> {
    /// D_j, (J).
    pub logs: &'a [f64],
    /// k_j, (J, DQK).
    pub k: &'a [f64],
    /// v_j, (J, DHV).
    pub v: &'a [f64],
}

impl GatedKeys<'_> {
    /// (D_j, k_j, v_j) for each key j.
    fn iter(&self, dqk: usize, dhv: usize) -> impl Iterator<Item = (f64, &[f64], &[f64])> {
        self.logs
            .iter()
            .zip(self.k.chunks_exact(dqk))
            .zip(self.v.chunks_exact(dhv))
            .map(|((&d, k_j), v_j)| (d, k_j, v_j))
    }
}

/// The state Σ_j e^{D_j} k_j v_jᵀ + e^{D_0}·(old state), stabilized:
/// m = stabilizer(D_0, D_j), C̃ = e^{D_0 − m} C̃_old + Σ_j e^{D_j − m} k_j v_jᵀ, ñ likewise.
///
/// `old`: the stabilized previous state; `init_log`: D_0, which includes `old.m`.
pub(super) fn gated_state(
    variant: Variant,
    old: &State,
    init_log: f64,
    keys: GatedKeys<'_>,
) -> State {
    let (dqk, dhv) = (old.n.len(), old.dhv());
    let m = stabilizer(variant, init_log, keys.logs);
    let mut new = old.clone();
    new.scale((init_log - m).exp());
    new.m = m;
    for (d, k_j, v_j) in keys.iter(dqk, dhv) {
        new.add_outer((d - m).exp(), k_j, v_j);
    }
    new
}

/// One output row h = num / den with, for m = stabilizer(D_0, D_j),
/// num = e^{D_0 − m} C̃ᵀq̂ + Σ_j e^{D_j − m} (q̂·k_j) v_j,
/// s = e^{D_0 − m} ñᵀq̂ + Σ_j e^{D_j − m} (q̂·k_j), den = [`denominator`]`(s, m)`.
///
/// `old`, `init_log`, `keys` as in [`gated_state`]; `qhat`: (DQK); `h`: (DHV).
pub(super) fn gated_output(
    p: &RefParams,
    old: &State,
    init_log: f64,
    keys: GatedKeys<'_>,
    qhat: &[f64],
    h: &mut [f64],
) {
    let (dqk, dhv) = (old.n.len(), old.dhv());
    let m = stabilizer(p.variant, init_log, keys.logs);
    let w0 = (init_log - m).exp();
    let mut s = w0 * old.query(qhat, h);
    h.iter_mut().for_each(|x| *x *= w0);
    for (d, k_j, v_j) in keys.iter(dqk, dhv) {
        let score = (d - m).exp() * dot(qhat, k_j);
        s += score;
        h.iter_mut()
            .zip(v_j)
            .for_each(|(o, &v_d)| *o += score * v_d);
    }
    let den = denominator(p, s, m);
    h.iter_mut().for_each(|x| *x /= den);
}

/// aᵀb.
pub(super) fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
