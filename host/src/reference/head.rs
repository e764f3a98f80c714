//! Per-head views of the (B, NH, …) tensors: every form runs the B·NH sequences independently.
//!
//! Notation: `B`, `NH`, `S`, `DQK`, `DHV` as in the parent module; `bh = b·NH + h` indexes a
//! (batch, head) pair.

use super::gates::{LogGates, is_stabilized};
use super::state::State;
use super::{RefInputs, RefOutputs, Shape};
use crate::Variant;

/// The `bh`-th block of `len` elements of a (B, NH, …) tensor.
pub(super) fn head_slice(data: &[f64], bh: usize, len: usize) -> &[f64] {
    &data[bh * len..(bh + 1) * len]
}

/// Mutable [`head_slice`].
pub(super) fn head_slice_mut(data: &mut [f64], bh: usize, len: usize) -> &mut [f64] {
    &mut data[bh * len..(bh + 1) * len]
}

/// The inputs of one (batch, head) sequence.
#[derive(Clone, Debug)]
pub(super) struct HeadInputs<'a> {
    /// Queries, (S, DQK).
    pub q: &'a [f64],
    /// Keys, (S, DQK).
    pub k: &'a [f64],
    /// Values, (S, DHV).
    pub v: &'a [f64],
    /// Gate pre-activations ĩ, f̃, (S) each.
    pub i: &'a [f64],
    /// See `i`.
    pub f: &'a [f64],
    /// Log gates λ, ι, (S) each.
    pub gates: LogGates,
    /// Initial state C̃_0, ñ_0 (zeros when absent) and m_0 (m0 or 0; always 0 for mLSTMsig).
    pub init: State,
    /// Dimensions of the whole problem.
    pub shape: Shape,
}

impl<'a> HeadInputs<'a> {
    /// The `bh`-th sequence of `inp`.
    pub fn new(inp: &'a RefInputs, variant: Variant, bh: usize) -> Self {
        let Shape { s, dqk, dhv, .. } = inp.shape;
        let (i, f) = (head_slice(&inp.i, bh, s), head_slice(&inp.f, bh, s));
        let init = State {
            c: initial(&inp.c0, bh, dqk * dhv),
            n: initial(&inp.n0, bh, dqk),
            m: match (&inp.m0, is_stabilized(variant)) {
                (Some(m0), true) => m0[bh],
                _ => 0.0,
            },
        };
        Self {
            q: head_slice(&inp.q, bh, s * dqk),
            k: head_slice(&inp.k, bh, s * dqk),
            v: head_slice(&inp.v, bh, s * dhv),
            i,
            f,
            gates: LogGates::new(variant, i, f),
            init,
            shape: inp.shape,
        }
    }

    /// k_t, (DQK).
    pub fn key(&self, t: usize) -> &'a [f64] {
        let dqk = self.shape.dqk;
        &self.k[t * dqk..(t + 1) * dqk]
    }

    /// v_t, (DHV).
    pub fn value(&self, t: usize) -> &'a [f64] {
        let dhv = self.shape.dhv;
        &self.v[t * dhv..(t + 1) * dhv]
    }

    /// Writes q̂_t = q_t·scale (DQK) into `qhat`.
    pub fn qhat(&self, t: usize, scale: f64, qhat: &mut [f64]) {
        let dqk = self.shape.dqk;
        let q_t = &self.q[t * dqk..(t + 1) * dqk];
        qhat.iter_mut().zip(q_t).for_each(|(o, &x)| *o = scale * x);
    }
}

/// The `bh`-th block of an optional initial-state tensor, or zeros.
fn initial(data: &Option<Vec<f64>>, bh: usize, len: usize) -> Vec<f64> {
    data.as_ref()
        .map_or_else(|| vec![0.0; len], |d| head_slice(d, bh, len).to_vec())
}

impl RefOutputs {
    /// All-zero outputs of the given shape.
    pub(super) fn zeros(shape: &Shape) -> Self {
        let Shape { s, dqk, dhv, .. } = *shape;
        let heads = shape.heads();
        Self {
            h: vec![0.0; heads * s * dhv],
            c: vec![0.0; heads * dqk * dhv],
            n: vec![0.0; heads * dqk],
            m: vec![0.0; heads],
        }
    }

    /// Runs one of the reference's forms on every head of `inp`: `run` takes the head's
    /// inputs and writes its h (S, DHV), returning its final state; collects h and the final
    /// states.
    ///
    /// # Panics
    /// If a tensor's length does not match `inp.shape` or a head dimension is 0.
    pub(super) fn per_head(
        inp: &RefInputs,
        variant: Variant,
        mut run: impl FnMut(&HeadInputs<'_>, &mut [f64]) -> State,
    ) -> Self {
        inp.validate();
        let shape = inp.shape;
        let mut out = Self::zeros(&shape);
        for bh in 0..shape.heads() {
            let head = HeadInputs::new(inp, variant, bh);
            let last = run(&head, out.head_h_mut(&shape, bh));
            out.store_final(bh, &last);
        }
        out
    }

    /// h of sequence `bh`, (S, DHV).
    fn head_h_mut(&mut self, shape: &Shape, bh: usize) -> &mut [f64] {
        head_slice_mut(&mut self.h, bh, shape.s * shape.dhv)
    }

    /// Stores the final state of sequence `bh`.
    fn store_final(&mut self, bh: usize, state: &State) {
        head_slice_mut(&mut self.c, bh, state.c.len()).copy_from_slice(&state.c);
        head_slice_mut(&mut self.n, bh, state.n.len()).copy_from_slice(&state.n);
        self.m[bh] = state.m;
    }
}
