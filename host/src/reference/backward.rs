//! The gradient of the mLSTM: reverse mode through the recurrence, by hand, in float64.
//!
//! Notation: `B`, `NH`, `S`, `DQK`, `DHV` as in the parent module (no chunks here). For a step
//! t (0-based below, 1-based in the formulas) the forward computes
//! a_t = λ_t + m_{t−1}, m_t = max(a_t, ι_t) (mLSTMexp; m ≡ 0 for mLSTMsig),
//! α_t = e^{a_t − m_t}, β_t = e^{ι_t − m_t}, C̃_t = α_t C̃_{t−1} + β_t k_t v_tᵀ, ñ_t likewise,
//! num_t = C̃_tᵀ q̂_t, s_t = ñ_tᵀ q̂_t, den_t = max(|s_t|, e^{−m_t}) + eps, h_t = num_t / den_t.
//!
//! Reverse step, with (dC̃, dñ, dm) the gradient w.r.t. the state after step t (initialized with
//! the upstream gradients of the final state):
//! - output: dnum = dh_t / den_t; with dden = −(dh_t·h_t) / den_t:
//!   ds = sign(s_t)·dden if |s_t| ≥ e^{−m_t}, else the floor takes it: dm += −e^{−m_t}·dden;
//!   dq̂_t = C̃_t dnum + ds ñ_t, dC̃ += q̂_t dnumᵀ, dñ += ds q̂_t (the augmented value [v, 1] of
//!   `shared/MATH.md`).
//! - step: dα = ⟨dC̃, C̃_{t−1}⟩ + dñ·ñ_{t−1}, r = dC̃ v_t + dñ, dk_t = β_t r, dv_t = β_t dC̃ᵀk_t,
//!   dβ = k_t·r; dλ_t = α_t dα, dι_t = β_t dβ; then the path through m (mLSTMexp):
//!   G = dm − α_t dα − β_t dβ goes to a_t (so to λ_t and m_{t−1}) if a_t ≥ ι_t, else to ι_t;
//!   dm_{t−1} = α_t dα + [a_t ≥ ι_t]·G; dC̃ ← α_t dC̃, dñ ← α_t dñ.
//! - gates: dĩ = dι (mLSTMexp) or σ(−ĩ)·dι (mLSTMsig), df̃ = σ(−f̃)·dλ.
//!
//! The forward states C̃_t, ñ_t, m_t are stored for all t (S + 1 per head).
//!
//! Gate identities (`shared/MATH.md`): where L depends on the inputs only through the readouts
//! C_i q̂_i, n_i q̂_i and the final states — Exact mode for mLSTMsig, DetachedNormalizer for both
//! variants — dι_j = k_j·dk_j and dλ_t = Σ_{i≥t}(q_i·dq_i − k_i·dk_i) + ⟨dC̃_S, C̃_S⟩ + ⟨dñ_S, ñ_S⟩
//! hold to rounding (the ñ_S term only where dn is followed). For mLSTMexp in Exact mode they
//! miss the path through m: at most Σ_t |dh_t·h_t|·eps/den_t without final-state gradients, and
//! O(1) with them (the stabilized final state depends on m_S).

use super::gates::{denominator, is_stabilized, sigmoid};
use super::head::{HeadInputs, head_slice, head_slice_mut};
use super::recurrent::trajectory;
use super::state::{State, dot};
use super::{RefInputs, RefParams, Shape, check_len, check_opt_len};
use crate::Variant;

// The mode is the one type the GPU API and the reference share (defined with the config).
pub use crate::variant::GradMode;

/// Upstream gradients: of h and, optionally, of the final states.
#[derive(Clone, Debug, PartialEq)]
pub struct RefGradOutputs {
    /// dL/dh, (B, NH, S, DHV).
    pub dh: Vec<f64>,
    /// dL/dC̃_S, (B, NH, DQK, DHV); `None` means zeros.
    pub dc: Option<Vec<f64>>,
    /// dL/dñ_S, (B, NH, DQK); `None` means zeros.
    pub dn: Option<Vec<f64>>,
    /// dL/dm_S, (B, NH); `None` means zeros (no effect for mLSTMsig, whose m is constant).
    pub dm: Option<Vec<f64>>,
}

impl RefGradOutputs {
    /// Asserts that every tensor has the length `shape` implies.
    pub(super) fn validate(&self, shape: &Shape) {
        let Shape { s, dqk, dhv, .. } = *shape;
        let heads = shape.heads();
        check_len("dh", &self.dh, "B·NH·S·DHV", heads * s * dhv);
        check_opt_len("dc", &self.dc, "B·NH·DQK·DHV", heads * dqk * dhv);
        check_opt_len("dn", &self.dn, "B·NH·DQK", heads * dqk);
        check_opt_len("dm", &self.dm, "B·NH", heads);
    }
}

/// Gradients w.r.t. every input.
#[derive(Clone, Debug, PartialEq)]
pub struct RefGrads {
    /// dL/dq, (B, NH, S, DQK).
    pub dq: Vec<f64>,
    /// dL/dk, (B, NH, S, DQK).
    pub dk: Vec<f64>,
    /// dL/dv, (B, NH, S, DHV).
    pub dv: Vec<f64>,
    /// dL/dĩ, (B, NH, S).
    pub di: Vec<f64>,
    /// dL/df̃, (B, NH, S).
    pub df: Vec<f64>,
    /// dL/dC̃_0, (B, NH, DQK, DHV); w.r.t. the implied zero state when none was given.
    pub dc0: Vec<f64>,
    /// dL/dñ_0, (B, NH, DQK); likewise.
    pub dn0: Vec<f64>,
    /// dL/dm_0, (B, NH); zeros for mLSTMsig and for [`GradMode::DetachedNormalizer`].
    pub dm0: Vec<f64>,
}

/// The gradient of L = Σ dh·h + Σ dc·C̃_S + Σ dn·ñ_S + Σ dm·m_S w.r.t. the inputs.
///
/// # Panics
/// If a tensor of `inp` or `g` does not match `inp.shape` or a head dimension is 0.
pub fn backward(inp: &RefInputs, p: &RefParams, g: &RefGradOutputs, mode: GradMode) -> RefGrads {
    inp.validate();
    g.validate(&inp.shape);
    let shape = inp.shape;
    let paths = Paths::new(p.variant, mode);
    let mut grads = RefGrads::zeros(&shape);
    for bh in 0..shape.heads() {
        let head = HeadInputs::new(inp, p.variant, bh);
        let dh = head_slice(&g.dh, bh, shape.s * shape.dhv);
        let adj = paths.final_adjoint(g, &shape, bh);
        backward_head(&head, p, paths, dh, adj, grads.head_mut(&shape, bh));
    }
    grads
}

/// Which dependencies the gradient follows besides the linear recurrence with m held constant.
#[derive(Clone, Copy, Debug)]
struct Paths {
    /// Through the denominator (ds and the floor): Exact mode and a normalizing variant.
    denominator: bool,
    /// Through ñ from the upstream dn: Exact mode.
    normalizer_state: bool,
    /// Through the max state m: Exact mode and mLSTMexp.
    max_state: bool,
}

impl Paths {
    /// The paths `mode` follows for `variant`.
    fn new(variant: Variant, mode: GradMode) -> Self {
        let exact = mode == GradMode::Exact;
        Self {
            denominator: exact && variant.normalizes(),
            normalizer_state: exact,
            max_state: exact && is_stabilized(variant),
        }
    }

    /// The gradient w.r.t. the final state of sequence `bh` (the adjoint has the state's shape).
    fn final_adjoint(self, g: &RefGradOutputs, shape: &Shape, bh: usize) -> State {
        let upstream = |data: &Option<Vec<f64>>, len: usize, follow: bool| match data {
            Some(d) if follow => head_slice(d, bh, len).to_vec(),
            _ => vec![0.0; len],
        };
        State {
            c: upstream(&g.dc, shape.dqk * shape.dhv, true),
            n: upstream(&g.dn, shape.dqk, self.normalizer_state),
            m: upstream(&g.dm, 1, self.max_state)[0],
        }
    }
}

/// The gradients of one (batch, head) sequence, views into [`RefGrads`].
struct HeadGrads<'a> {
    /// (S, DQK).
    dq: &'a mut [f64],
    /// (S, DQK).
    dk: &'a mut [f64],
    /// (S, DHV).
    dv: &'a mut [f64],
    /// (S).
    di: &'a mut [f64],
    /// (S).
    df: &'a mut [f64],
    /// (DQK, DHV).
    dc0: &'a mut [f64],
    /// (DQK).
    dn0: &'a mut [f64],
    /// Scalar.
    dm0: &'a mut f64,
}

impl RefGrads {
    /// All-zero gradients of the given shape.
    pub(super) fn zeros(shape: &Shape) -> Self {
        let Shape { s, dqk, dhv, .. } = *shape;
        let heads = shape.heads();
        Self {
            dq: vec![0.0; heads * s * dqk],
            dk: vec![0.0; heads * s * dqk],
            dv: vec![0.0; heads * s * dhv],
            di: vec![0.0; heads * s],
            df: vec![0.0; heads * s],
            dc0: vec![0.0; heads * dqk * dhv],
            dn0: vec![0.0; heads * dqk],
            dm0: vec![0.0; heads],
        }
    }

    /// The gradients of sequence `bh`.
    fn head_mut(&mut self, shape: &Shape, bh: usize) -> HeadGrads<'_> {
        let Shape { s, dqk, dhv, .. } = *shape;
        HeadGrads {
            dq: head_slice_mut(&mut self.dq, bh, s * dqk),
            dk: head_slice_mut(&mut self.dk, bh, s * dqk),
            dv: head_slice_mut(&mut self.dv, bh, s * dhv),
            di: head_slice_mut(&mut self.di, bh, s),
            df: head_slice_mut(&mut self.df, bh, s),
            dc0: head_slice_mut(&mut self.dc0, bh, dqk * dhv),
            dn0: head_slice_mut(&mut self.dn0, bh, dqk),
            dm0: &mut self.dm0[bh],
        }
    }
}

/// Reverse sweep over one head: `dh` (S, DHV), `adj` the gradient w.r.t. the final state.
fn backward_head(
    head: &HeadInputs<'_>,
    p: &RefParams,
    paths: Paths,
    dh: &[f64],
    adj: State,
    out: HeadGrads<'_>,
) {
    let Shape { s, dqk, dhv, .. } = head.shape;
    let mut sweep = Sweep::new(head, p, paths, adj);
    for t in (0..s).rev() {
        let (qk, hv) = (t * dqk..(t + 1) * dqk, t * dhv..(t + 1) * dhv);
        sweep.output(t, &dh[hv.clone()], &mut out.dq[qk.clone()]);
        let (d_lambda, d_iota) = sweep.step(t, &mut out.dk[qk], &mut out.dv[hv]);
        out.di[t] = d_iota * input_gate_slope(p.variant, head.i[t]);
        out.df[t] = d_lambda * sigmoid(-head.f[t]);
    }
    out.dc0.copy_from_slice(&sweep.adj.c);
    out.dn0.copy_from_slice(&sweep.adj.n);
    *out.dm0 = sweep.adj.m;
}

/// dι/dĩ: 1 (mLSTMexp, ι = ĩ) or σ(−ĩ) (mLSTMsig, ι = logσ(ĩ)).
fn input_gate_slope(variant: Variant, i: f64) -> f64 {
    if is_stabilized(variant) {
        1.0
    } else {
        sigmoid(-i)
    }
}

/// The reverse sweep over one head: the stored forward states and the running adjoint.
struct Sweep<'a> {
    /// Inputs of the head.
    head: &'a HeadInputs<'a>,
    /// Cell parameters.
    p: &'a RefParams,
    /// Dependencies followed.
    paths: Paths,
    /// C̃_t, ñ_t, m_t for t = 0…S.
    states: Vec<State>,
    /// Gradient w.r.t. the state after the current step (dC̃, dñ, dm); the state's shape.
    adj: State,
    /// q̂_t, (DQK).
    qhat: Vec<f64>,
    /// num_t, then dnum_t, (DHV).
    num: Vec<f64>,
}

impl<'a> Sweep<'a> {
    /// Runs the forward of `head` and starts from `adj`, the gradient w.r.t. the final state.
    fn new(head: &'a HeadInputs<'a>, p: &'a RefParams, paths: Paths, adj: State) -> Self {
        Self {
            states: trajectory(head, p.variant),
            qhat: vec![0.0; head.shape.dqk],
            num: vec![0.0; head.shape.dhv],
            head,
            p,
            paths,
            adj,
        }
    }

    /// Adds the gradient of h_t = num_t / den_t (`dh_t`: DHV) to the adjoint of the state after
    /// step t and writes dq_t (DQK).
    fn output(&mut self, t: usize, dh_t: &[f64], dq_t: &mut [f64]) {
        let (cur, adj) = (&self.states[t + 1], &mut self.adj);
        self.head.qhat(t, self.p.scale, &mut self.qhat);
        let s = cur.query(&self.qhat, &mut self.num);
        let den = denominator(self.p, s, cur.m);
        let mut ds = 0.0;
        if self.paths.denominator {
            let d_den = -dot(dh_t, &self.num) / (den * den);
            let floor = (-cur.m).exp();
            if s.abs() >= floor {
                ds = d_den * s.signum();
            } else if self.paths.max_state {
                adj.m -= d_den * floor;
            }
        }
        let dnum = &mut self.num;
        dnum.iter_mut().zip(dh_t).for_each(|(o, &x)| *o = x / den);
        let dhv = dnum.len();
        let rows = cur.c.chunks_exact(dhv).zip(adj.c.chunks_exact_mut(dhv));
        for (a, (c_row, adj_row)) in rows.enumerate() {
            let q_a = self.qhat[a];
            dq_t[a] = self.p.scale * (dot(c_row, dnum) + ds * cur.n[a]);
            adj_row
                .iter_mut()
                .zip(dnum.iter())
                .for_each(|(o, &x)| *o += q_a * x);
            adj.n[a] += ds * q_a;
        }
    }

    /// Moves the adjoint from the state after step t to the state before it, writing dk_t
    /// (DQK) and dv_t (DHV); returns (dλ_t, dι_t).
    fn step(&mut self, t: usize, dk_t: &mut [f64], dv_t: &mut [f64]) -> (f64, f64) {
        let (prev, cur, adj) = (&self.states[t], &self.states[t + 1], &mut self.adj);
        let (lambda, iota) = (self.head.gates.lambda[t], self.head.gates.iota[t]);
        let (k, v) = (self.head.key(t), self.head.value(t));
        let alpha = (lambda + prev.m - cur.m).exp();
        let beta = (iota - cur.m).exp();
        let d_alpha = dot(&adj.c, &prev.c) + dot(&adj.n, &prev.n);
        let mut d_beta = 0.0;
        dv_t.fill(0.0);
        for (a, adj_row) in adj.c.chunks_exact(v.len()).enumerate() {
            let r = dot(adj_row, v) + adj.n[a];
            dk_t[a] = beta * r;
            d_beta += k[a] * r;
            let w = beta * k[a];
            dv_t.iter_mut().zip(adj_row).for_each(|(o, &x)| *o += w * x);
        }
        let (d_a, mut d_iota) = (alpha * d_alpha, beta * d_beta);
        let mut d_lambda = d_a;
        if self.paths.max_state {
            let d_m = adj.m - d_a - d_iota;
            if lambda + prev.m >= iota {
                d_lambda += d_m;
                adj.m = d_a + d_m;
            } else {
                d_iota += d_m;
                adj.m = d_a;
            }
        }
        adj.scale(alpha);
        (d_lambda, d_iota)
    }
}

#[cfg(test)]
mod tests {
    use rand::Rng;

    use super::*;
    use crate::reference::test_util::{VARIANTS, assert_close, seeded_rng, shape};
    use crate::reference::{RefOutputs, recurrent};

    /// Shapes of the finite-difference tests, with whether to pass initial states.
    const CASES: [(Shape, bool); 3] = [
        (shape(1, 2, 7, 4, 3), false),
        (shape(1, 2, 7, 4, 3), true),
        (shape(2, 1, 1, 4, 3), true),
    ];

    /// Step of the finite differences: the five-point stencil
    /// (−L(x + 2δ) + 8L(x + δ) − 8L(x − δ) + L(x − 2δ)) / 12δ, error O(δ⁴). Second-order
    /// central differences are not enough: where |s_t| is small but made of large cancelling
    /// terms, L has third derivatives ~1e4 and their O(δ²) error reaches 1e-5 relative.
    const STEP: f64 = 1e-5;

    /// Inputs are redrawn until every max and |·| in the forward is this far from its kink,
    /// so that no finite difference crosses one.
    const KINK_MARGIN: f64 = 1e-3;

    /// Inputs are redrawn while, in a row where |s_t| wins the normalizer max, s_t = Σ_a ñ_a q̂_a
    /// cancels by more than this factor (Σ_a |ñ_a q̂_a| / |s_t|). There h = num/|s| amplifies
    /// rounding in L by that factor (finite differences turn 1e-14 into 1e-9 noise) and L has
    /// derivatives growing like its powers; the gradient itself is fine.
    const MAX_CANCELLATION: f64 = 10.0;

    /// The differentiable inputs.
    #[derive(Clone, Copy, Debug)]
    enum Input {
        Q,
        K,
        V,
        I,
        F,
        C0,
        N0,
        M0,
    }

    /// Every [`Input`].
    const INPUTS: [Input; 8] = [
        Input::Q,
        Input::K,
        Input::V,
        Input::I,
        Input::F,
        Input::C0,
        Input::N0,
        Input::M0,
    ];

    /// The tensor `which` of `inp`, with an absent initial state materialized as zeros.
    fn input_mut(inp: &mut RefInputs, which: Input) -> &mut Vec<f64> {
        let Shape { dqk, dhv, .. } = inp.shape;
        let heads = inp.shape.heads();
        match which {
            Input::Q => &mut inp.q,
            Input::K => &mut inp.k,
            Input::V => &mut inp.v,
            Input::I => &mut inp.i,
            Input::F => &mut inp.f,
            Input::C0 => inp.c0.get_or_insert_with(|| vec![0.0; heads * dqk * dhv]),
            Input::N0 => inp.n0.get_or_insert_with(|| vec![0.0; heads * dqk]),
            Input::M0 => inp.m0.get_or_insert_with(|| vec![0.0; heads]),
        }
    }

    /// The gradient w.r.t. `which`.
    fn grad_of(grads: &RefGrads, which: Input) -> &[f64] {
        match which {
            Input::Q => &grads.dq,
            Input::K => &grads.dk,
            Input::V => &grads.dv,
            Input::I => &grads.di,
            Input::F => &grads.df,
            Input::C0 => &grads.dc0,
            Input::N0 => &grads.dn0,
            Input::M0 => &grads.dm0,
        }
    }

    /// Upstream gradients ~ U[−1, 1] for h and every final state.
    fn random_upstream(shape: Shape, rng: &mut impl Rng) -> RefGradOutputs {
        let heads = shape.heads();
        let mut uniform = |len: usize| {
            (0..len)
                .map(|_| rng.gen_range(-1.0..1.0))
                .collect::<Vec<f64>>()
        };
        RefGradOutputs {
            dh: uniform(heads * shape.s * shape.dhv),
            dc: Some(uniform(heads * shape.dqk * shape.dhv)),
            dn: Some(uniform(heads * shape.dqk)),
            dm: Some(uniform(heads)),
        }
    }

    /// Σ x·y over an optional upstream gradient.
    fn dot_opt(upstream: &Option<Vec<f64>>, x: &[f64]) -> f64 {
        upstream.as_ref().map_or(0.0, |u| dot(u, x))
    }

    /// Σ |dh|·|h| + Σ |dc|·|C̃_S| + Σ |dn|·|ñ_S| + Σ |dm|·|m_S|: the size of the terms of L.
    fn loss_size(out: &RefOutputs, g: &RefGradOutputs) -> f64 {
        let abs_dot =
            |u: &[f64], x: &[f64]| u.iter().zip(x).map(|(a, b)| (a * b).abs()).sum::<f64>();
        let opt = |u: &Option<Vec<f64>>, x: &[f64]| u.as_ref().map_or(0.0, |u| abs_dot(u, x));
        abs_dot(&g.dh, &out.h) + opt(&g.dc, &out.c) + opt(&g.dn, &out.n) + opt(&g.dm, &out.m)
    }

    /// L = Σ dh·h + Σ dc·C̃_S + Σ dn·ñ_S + Σ dm·m_S, the loss [`backward`] differentiates.
    fn loss(out: &RefOutputs, g: &RefGradOutputs) -> f64 {
        dot(&g.dh, &out.h)
            + dot_opt(&g.dc, &out.c)
            + dot_opt(&g.dn, &out.n)
            + dot_opt(&g.dm, &out.m)
    }

    /// One step of a forward, as seen by the test helpers.
    struct StepView<'a> {
        /// Sequence index b·NH + h.
        bh: usize,
        /// Step index (0-based).
        t: usize,
        /// Inputs of the sequence.
        head: &'a HeadInputs<'a>,
        /// States before and after the step.
        prev: &'a State,
        /// See `prev`.
        cur: &'a State,
        /// q̂_t, (DQK).
        qhat: &'a [f64],
        /// s_t = ñ_tᵀq̂_t.
        s: f64,
        /// den_t.
        den: f64,
    }

    /// Calls `visit` for every step of every sequence of the forward at `inp`.
    fn for_each_step(inp: &RefInputs, p: &RefParams, mut visit: impl FnMut(&StepView<'_>)) {
        let mut qhat = vec![0.0; inp.shape.dqk];
        let mut num = vec![0.0; inp.shape.dhv];
        for bh in 0..inp.shape.heads() {
            let head = HeadInputs::new(inp, p.variant, bh);
            let states = trajectory(&head, p.variant);
            for (t, pair) in states.windows(2).enumerate() {
                head.qhat(t, p.scale, &mut qhat);
                let s = pair[1].query(&qhat, &mut num);
                let den = denominator(p, s, pair[1].m);
                visit(&StepView {
                    bh,
                    t,
                    head: &head,
                    prev: &pair[0],
                    cur: &pair[1],
                    qhat: &qhat,
                    s,
                    den,
                });
            }
        }
    }

    /// Whether the forward at `inp` is at least [`KINK_MARGIN`] from every kink (|a_t − ι_t| at
    /// each max of mLSTMexp, ||s_t| − e^{−m_t}| at each normalizer max) and no row where |s_t|
    /// wins cancels by more than [`MAX_CANCELLATION`].
    fn well_conditioned(inp: &RefInputs, p: &RefParams) -> bool {
        let mut ok = true;
        for_each_step(inp, p, |st| {
            let gates = &st.head.gates;
            let a = gates.lambda[st.t] + st.prev.m;
            if is_stabilized(p.variant) {
                ok &= (a - gates.iota[st.t]).abs() >= KINK_MARGIN;
            }
            if p.variant.normalizes() {
                let floor = (-st.cur.m).exp();
                ok &= (st.s.abs() - floor).abs() >= KINK_MARGIN;
                let terms: f64 = st
                    .cur
                    .n
                    .iter()
                    .zip(st.qhat)
                    .map(|(n, q)| (n * q).abs())
                    .sum();
                ok &= st.s.abs() < floor || terms <= MAX_CANCELLATION * st.s.abs();
            }
        });
        ok
    }

    /// Random inputs on which the forward is [`well_conditioned`].
    fn well_conditioned_random(
        shape: Shape,
        with_init: bool,
        p: &RefParams,
        rng: &mut impl Rng,
    ) -> RefInputs {
        for _ in 0..1000 {
            let inp = RefInputs::random(shape, with_init, rng);
            if well_conditioned(&inp, p) {
                return inp;
            }
        }
        panic!("no well-conditioned random input in 1000 draws");
    }

    /// The largest deviations from finite differences seen.
    #[derive(Clone, Copy, Debug, Default)]
    struct FdError {
        /// max |g − fd|.
        abs: f64,
        /// max |g − fd| / |fd| over elements with |fd| ≥ 1e-2.
        rel: f64,
    }

    impl std::fmt::Display for FdError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let Self { abs, rel } = self;
            write!(
                f,
                "max |g − fd| {abs:e}, max relative (|fd| ≥ 1e-2) {rel:e}"
            )
        }
    }

    impl FdError {
        /// Elementwise maximum.
        fn max(self, other: Self) -> Self {
            Self {
                abs: self.abs.max(other.abs),
                rel: self.rel.max(other.rel),
            }
        }
    }

    /// Compares `grads` with finite differences of `loss_of` at up to 10 random elements of
    /// every input: |g − fd| ≤ 1e-6·|fd| + atol with atol = 1e-9·(1 + `loss_size`) (rounding
    /// in L is ~1e-16·`loss_size`, ~1e-11·`loss_size` after dividing by STEP).
    fn check_finite_differences(
        what: &str,
        inp: &RefInputs,
        grads: &RefGrads,
        loss_of: &dyn Fn(&RefInputs) -> f64,
        loss_size: f64,
        rng: &mut impl Rng,
    ) -> FdError {
        let atol = 1e-9 * (1.0 + loss_size);
        let mut worst = FdError::default();
        for which in INPUTS {
            let len = input_mut(&mut inp.clone(), which).len();
            let picks: Vec<usize> = if len <= 10 {
                (0..len).collect()
            } else {
                (0..10).map(|_| rng.gen_range(0..len)).collect()
            };
            for idx in picks {
                let shifted = |delta: f64| {
                    let mut x = inp.clone();
                    input_mut(&mut x, which)[idx] += delta;
                    loss_of(&x)
                };
                let fd = (8.0 * (shifted(STEP) - shifted(-STEP)) - shifted(2.0 * STEP)
                    + shifted(-2.0 * STEP))
                    / (12.0 * STEP);
                let got = grad_of(grads, which)[idx];
                let err = (got - fd).abs();
                assert!(
                    err <= 1e-6 * fd.abs() + atol,
                    "{what}: d{which:?}[{idx}] = {got:e}, finite difference {fd:e}"
                );
                worst.abs = worst.abs.max(err);
                if fd.abs() >= 1e-2 {
                    worst.rel = worst.rel.max(err / fd.abs());
                }
            }
        }
        worst
    }

    /// Exact gradients equal finite differences of `recurrent` for every input and every
    /// variant, with upstream gradients on h and all final states.
    #[test]
    fn backward_matches_finite_differences() {
        let mut rng = seeded_rng("backward_matches_finite_differences");
        let mut worst = FdError::default();
        for (shape, with_init) in CASES {
            for variant in VARIANTS {
                let p = RefParams::new(variant, shape.dqk);
                let inp = well_conditioned_random(shape, with_init, &p, &mut rng);
                let g = random_upstream(shape, &mut rng);
                let grads = backward(&inp, &p, &g, GradMode::Exact);
                let what = format!("{shape:?}, init {with_init}, {variant:?}");
                let loss_of = |x: &RefInputs| loss(&recurrent(x, &p), &g);
                let size = loss_size(&recurrent(&inp, &p), &g);
                let err = check_finite_differences(&what, &inp, &grads, &loss_of, size, &mut rng);
                worst = worst.max(err);
            }
        }
        println!("exact backward vs finite differences: {worst}");
    }

    /// As [`backward_matches_finite_differences`] with a tiny query scale, so that the floor
    /// e^{−m} (1 for mLSTMsig) wins the normalizer max at every step.
    #[test]
    fn backward_matches_finite_differences_with_floor_active() {
        let mut rng = seeded_rng("backward_matches_finite_differences_with_floor_active");
        let mut worst = FdError::default();
        for (shape, with_init) in CASES {
            for variant in [Variant::Exp, Variant::Sig { normalize: true }] {
                let p = RefParams {
                    scale: 1e-5,
                    ..RefParams::new(variant, shape.dqk)
                };
                let inp = well_conditioned_random(shape, with_init, &p, &mut rng);
                for_each_step(&inp, &p, |st| {
                    assert!(
                        st.s.abs() < (-st.cur.m).exp(),
                        "floor not active at step {}",
                        st.t
                    );
                });
                let g = random_upstream(shape, &mut rng);
                let grads = backward(&inp, &p, &g, GradMode::Exact);
                let what = format!("{shape:?}, init {with_init}, {variant:?}, floor active");
                let loss_of = |x: &RefInputs| loss(&recurrent(x, &p), &g);
                let size = loss_size(&recurrent(&inp, &p), &g);
                let err = check_finite_differences(&what, &inp, &grads, &loss_of, size, &mut rng);
                worst = worst.max(err);
            }
        }
        println!("exact backward (floor active) vs finite differences: {worst}");
    }

    /// m_t (t = 0…S) and den_t (t = 1…S) of every head at fixed inputs.
    struct Frozen {
        /// (B·NH, S + 1).
        m: Vec<Vec<f64>>,
        /// (B·NH, S).
        den: Vec<Vec<f64>>,
    }

    /// The stabilizer and denominators of the forward at `inp`.
    fn freeze(inp: &RefInputs, p: &RefParams) -> Frozen {
        let heads = inp.shape.heads();
        let m0 = |bh| HeadInputs::new(inp, p.variant, bh).init.m;
        let mut frozen = Frozen {
            m: (0..heads).map(|bh| vec![m0(bh)]).collect(),
            den: vec![Vec::new(); heads],
        };
        for_each_step(inp, p, |st| {
            frozen.m[st.bh].push(st.cur.m);
            frozen.den[st.bh].push(st.den);
        });
        frozen
    }

    /// L = Σ dh·h + Σ dc·C̃_S of the forward with m_t and den_t taken from `frozen` (dn and dm
    /// ignored, as [`GradMode::DetachedNormalizer`] does).
    fn frozen_loss(inp: &RefInputs, p: &RefParams, frozen: &Frozen, g: &RefGradOutputs) -> f64 {
        let Shape { s, dqk, dhv, .. } = inp.shape;
        let (mut qhat, mut num) = (vec![0.0; dqk], vec![0.0; dhv]);
        let mut total = 0.0;
        for bh in 0..inp.shape.heads() {
            let head = HeadInputs::new(inp, p.variant, bh);
            let dh = head_slice(&g.dh, bh, s * dhv);
            let mut state = State {
                m: frozen.m[bh][0],
                ..head.init.clone()
            };
            for t in 0..s {
                let (lambda, iota) = (head.gates.lambda[t], head.gates.iota[t]);
                state.advance(
                    frozen.m[bh][t + 1],
                    lambda,
                    iota,
                    head.key(t),
                    head.value(t),
                );
                head.qhat(t, p.scale, &mut qhat);
                state.query(&qhat, &mut num);
                total += dot(&dh[t * dhv..(t + 1) * dhv], &num) / frozen.den[bh][t];
            }
            total +=
                g.dc.as_ref()
                    .map_or(0.0, |dc| dot(head_slice(dc, bh, dqk * dhv), &state.c));
        }
        total
    }

    /// Detached-normalizer gradients equal finite differences of a forward whose m_t and den_t
    /// are frozen copies; no gradient reaches ñ_0 or m_0.
    #[test]
    fn detached_normalizer_matches_frozen_finite_differences() {
        let mut rng = seeded_rng("detached_normalizer_matches_frozen_finite_differences");
        let mut worst = FdError::default();
        for (shape, with_init) in CASES {
            for variant in VARIANTS {
                let p = RefParams::new(variant, shape.dqk);
                let inp = RefInputs::random(shape, with_init, &mut rng);
                let g = random_upstream(shape, &mut rng);
                let grads = backward(&inp, &p, &g, GradMode::DetachedNormalizer);
                assert!(grads.dn0.iter().chain(&grads.dm0).all(|&x| x == 0.0));
                let frozen = freeze(&inp, &p);
                let what = format!("{shape:?}, init {with_init}, {variant:?}, detached");
                let loss_of = |x: &RefInputs| frozen_loss(x, &p, &frozen, &g);
                let h_and_c = RefGradOutputs {
                    dn: None,
                    dm: None,
                    ..g.clone()
                };
                let size = loss_size(&recurrent(&inp, &p), &h_and_c);
                let err = check_finite_differences(&what, &inp, &grads, &loss_of, size, &mut rng);
                worst = worst.max(err);
            }
        }
        println!("detached backward vs frozen finite differences: {worst}");
    }

    /// Without a normalizer (and no dn) there is nothing to detach: both modes agree exactly.
    #[test]
    fn detached_equals_exact_without_normalizer() {
        let mut rng = seeded_rng("detached_equals_exact_without_normalizer");
        let (shape, _) = CASES[1];
        let p = RefParams::new(Variant::Sig { normalize: false }, shape.dqk);
        let inp = RefInputs::random(shape, true, &mut rng);
        let g = RefGradOutputs {
            dn: None,
            ..random_upstream(shape, &mut rng)
        };
        let exact = backward(&inp, &p, &g, GradMode::Exact);
        assert_eq!(exact, backward(&inp, &p, &g, GradMode::DetachedNormalizer));
    }

    /// The gate gradients predicted by the identities of `shared/MATH.md` from dq and dk:
    /// dĩ_j = ι'(ĩ_j)·(k_j·dk_j) and df̃_t = σ(−f̃_t)·(Σ_{i≥t}(q_i·dq_i − k_i·dk_i) + final),
    /// where `final_term` (per head) = ⟨dC̃_S, C̃_S⟩ + ⟨dñ_S, ñ_S⟩ for the final states the loss
    /// depends on. Returns (dĩ, df̃), (B, NH, S) each.
    fn gate_identities<'a>(
        inp: &'a RefInputs,
        p: &RefParams,
        grads: &'a RefGrads,
        final_term: &[f64],
    ) -> (Vec<f64>, Vec<f64>) {
        let Shape { s, dqk, .. } = inp.shape;
        let (mut di, mut df) = (vec![0.0; grads.di.len()], vec![0.0; grads.df.len()]);
        for bh in 0..inp.shape.heads() {
            let head = HeadInputs::new(inp, p.variant, bh);
            let row = |x: &'a [f64], t: usize| &head_slice(x, bh, s * dqk)[t * dqk..(t + 1) * dqk];
            let mut suffix = final_term[bh];
            for t in (0..s).rev() {
                let k_dk = dot(head.key(t), row(&grads.dk, t));
                suffix += dot(row(&inp.q, t), row(&grads.dq, t)) - k_dk;
                di[bh * s + t] = input_gate_slope(p.variant, head.i[t]) * k_dk;
                df[bh * s + t] = sigmoid(-head.f[t]) * suffix;
            }
        }
        (di, df)
    }

    /// ⟨dC̃_S, C̃_S⟩ (+ ⟨dñ_S, ñ_S⟩ when `with_n`) per head.
    fn final_state_term(
        out: &RefOutputs,
        g: &RefGradOutputs,
        shape: &Shape,
        with_n: bool,
    ) -> Vec<f64> {
        let (c_len, n_len) = (shape.dqk * shape.dhv, shape.dqk);
        (0..shape.heads())
            .map(|bh| {
                let head_dot = |u: &Option<Vec<f64>>, x: &[f64], len| {
                    u.as_ref()
                        .map_or(0.0, |u| dot(head_slice(u, bh, len), head_slice(x, bh, len)))
                };
                let n_term = if with_n {
                    head_dot(&g.dn, &out.n, n_len)
                } else {
                    0.0
                };
                head_dot(&g.dc, &out.c, c_len) + n_term
            })
            .collect()
    }

    /// The identities hold to rounding where the loss is a function of the readouts C_i q̂_i,
    /// n_i q̂_i and the final states only: Exact mode for mLSTMsig (both settings), and
    /// DetachedNormalizer for every variant (there dn is ignored, so no ñ_S term).
    #[test]
    fn gate_gradient_identities_hold() {
        let mut rng = seeded_rng("gate_gradient_identities_hold");
        let (shape, _) = CASES[1];
        let exact_sig = [
            Variant::Sig { normalize: false },
            Variant::Sig { normalize: true },
        ]
        .map(|v| (v, GradMode::Exact));
        let detached = VARIANTS.map(|v| (v, GradMode::DetachedNormalizer));
        let mut worst: f64 = 0.0;
        for (variant, mode) in exact_sig.into_iter().chain(detached) {
            let p = RefParams::new(variant, shape.dqk);
            let inp = RefInputs::random(shape, true, &mut rng);
            let g = random_upstream(shape, &mut rng);
            let grads = backward(&inp, &p, &g, mode);
            let final_term =
                final_state_term(&recurrent(&inp, &p), &g, &shape, mode == GradMode::Exact);
            let (di, df) = gate_identities(&inp, &p, &grads, &final_term);
            let what = format!("{variant:?}, {mode:?}");
            worst = worst.max(assert_close(&format!("{what}: dĩ"), &grads.di, &di, 1e-12));
            worst = worst.max(assert_close(&format!("{what}: df̃"), &grads.df, &df, 1e-12));
        }
        println!("gate identities: max relative error {worst:e}");
    }

    /// For mLSTMexp in Exact mode the identities miss only the path through m, whose total is
    /// bounded by Σ_t |dh_t·h_t|·eps/den_t per head (L depends on m_t only through eps·e^{m_t}
    /// in unstabilized form, and each m_t has slope 0 or 1 in every gate).
    #[test]
    fn gate_gradient_identities_hold_up_to_eps_for_exp() {
        let mut rng = seeded_rng("gate_gradient_identities_hold_up_to_eps_for_exp");
        let (shape, _) = CASES[1];
        let p = RefParams::new(Variant::Exp, shape.dqk);
        let mut worst_share: f64 = 0.0;
        for with_init in [false, true] {
            let inp = RefInputs::random(shape, with_init, &mut rng);
            let g = RefGradOutputs {
                dc: None,
                dn: None,
                dm: None,
                ..random_upstream(shape, &mut rng)
            };
            let grads = backward(&inp, &p, &g, GradMode::Exact);
            let (di, df) = gate_identities(&inp, &p, &grads, &vec![0.0; shape.heads()]);
            let h = recurrent(&inp, &p).h;
            let mut bound = vec![0.0; shape.heads()];
            for_each_step(&inp, &p, |st| {
                let start = (st.bh * shape.s + st.t) * shape.dhv;
                let row = start..start + shape.dhv;
                bound[st.bh] += dot(&g.dh[row.clone()], &h[row]).abs() * p.eps / st.den;
            });
            let size = grads
                .di
                .iter()
                .chain(&grads.df)
                .fold(0.0, |m: f64, x| m.max(x.abs()));
            let residuals = grads.di.iter().zip(&di).chain(grads.df.iter().zip(&df));
            for (idx, (got, want)) in residuals.enumerate() {
                // The bound is attained (every m_t with slope 1 in the gate, terms of one sign):
                // leave room for rounding only.
                let allowed = bound[(idx % grads.di.len()) / shape.s] * (1.0 + 1e-9) + 1e-12 * size;
                let residual = (got - want).abs();
                assert!(
                    residual <= allowed,
                    "gate {idx}: {got:e} vs identity {want:e}, allowed {allowed:e}"
                );
                worst_share = worst_share.max(residual / allowed);
            }
        }
        println!("exp identities: largest residual {worst_share:.3} of the eps-path bound");
    }
}
