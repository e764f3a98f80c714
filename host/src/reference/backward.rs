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

use super::gates::{denominator, is_stabilized, sigmoid};
use super::head::{HeadInputs, head_slice, head_slice_mut};
use super::recurrent::trajectory;
use super::state::{State, dot};
use super::{RefInputs, RefParams, Shape, check_len, check_opt_len};
use crate::Variant;

/// Which gradient [`backward`] computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GradMode {
    /// The true gradient of the forward as defined, including the paths through the
    /// denominator max(|s|, e^{−m}) + eps and (mLSTMexp) through the max state m, which is
    /// piecewise linear in the gates. Exact except on the measure-zero set where a max ties.
    Exact,
    /// The denominator and the max state held constant (what the TFLA authors' Triton kernels
    /// compute): ds = 0 and no path through m. No gradient flows through ñ: the upstream dn and
    /// dm are ignored and dn0 = dm0 = 0. This is the exact gradient of a forward whose m_t and
    /// den_t are frozen copies of their values.
    DetachedNormalizer,
}

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
    fn validate(&self, shape: &Shape) {
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
    fn zeros(shape: &Shape) -> Self {
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

/// Per-step work buffers of the reverse sweep.
struct Buffers {
    /// q̂_t, (DQK).
    qhat: Vec<f64>,
    /// num_t, then dnum_t, (DHV).
    num: Vec<f64>,
}

/// Reverse sweep over one head: `dh` (S, DHV), `adj` the gradient w.r.t. the final state.
fn backward_head(
    head: &HeadInputs<'_>,
    p: &RefParams,
    paths: Paths,
    dh: &[f64],
    mut adj: State,
    out: HeadGrads<'_>,
) {
    let Shape { s, dqk, dhv, .. } = head.shape;
    let states = trajectory(head, p.variant);
    let mut buf = Buffers { qhat: vec![0.0; dqk], num: vec![0.0; dhv] };
    for t in (0..s).rev() {
        head.qhat(t, p.scale, &mut buf.qhat);
        let dq_t = &mut out.dq[t * dqk..(t + 1) * dqk];
        output_adjoint(p, paths, &states[t + 1], &dh[t * dhv..(t + 1) * dhv], &mut buf, &mut adj, dq_t);
        let dkv_t = (&mut out.dk[t * dqk..(t + 1) * dqk], &mut out.dv[t * dhv..(t + 1) * dhv]);
        let (d_lambda, d_iota) = step_adjoint(head, paths, t, (&states[t], &states[t + 1]), &mut adj, dkv_t);
        out.di[t] = d_iota * input_gate_slope(p.variant, head.i[t]);
        out.df[t] = d_lambda * sigmoid(-head.f[t]);
    }
    out.dc0.copy_from_slice(&adj.c);
    out.dn0.copy_from_slice(&adj.n);
    *out.dm0 = adj.m;
}

/// dι/dĩ: 1 (mLSTMexp, ι = ĩ) or σ(−ĩ) (mLSTMsig, ι = logσ(ĩ)).
fn input_gate_slope(variant: Variant, i: f64) -> f64 {
    if is_stabilized(variant) { 1.0 } else { sigmoid(-i) }
}

/// Adds the gradient of h_t = num_t / den_t to `adj` (the state after step t, `cur`) and writes
/// dq_t (DQK); `dh_t`: (DHV).
fn output_adjoint(
    p: &RefParams,
    paths: Paths,
    cur: &State,
    dh_t: &[f64],
    buf: &mut Buffers,
    adj: &mut State,
    dq_t: &mut [f64],
) {
    let s = cur.query(&buf.qhat, &mut buf.num);
    let den = denominator(p, s, cur.m);
    let mut ds = 0.0;
    if paths.denominator {
        let d_den = -dot(dh_t, &buf.num) / (den * den);
        let floor = (-cur.m).exp();
        if s.abs() >= floor {
            ds = d_den * s.signum();
        } else if paths.max_state {
            adj.m -= d_den * floor;
        }
    }
    let dnum = &mut buf.num;
    dnum.iter_mut().zip(dh_t).for_each(|(o, &x)| *o = x / den);
    let rows = cur.c.chunks_exact(dnum.len()).zip(adj.c.chunks_exact_mut(dnum.len()));
    for (a, (c_row, adj_row)) in rows.enumerate() {
        dq_t[a] = p.scale * (dot(c_row, dnum) + ds * cur.n[a]);
        adj_row.iter_mut().zip(dnum.iter()).for_each(|(o, &x)| *o += buf.qhat[a] * x);
        adj.n[a] += ds * buf.qhat[a];
    }
}

/// Moves `adj` from the state after step t (`cur`) to the state before it (`prev`), writing
/// dk_t (DQK) and dv_t (DHV); returns (dλ_t, dι_t).
fn step_adjoint(
    head: &HeadInputs<'_>,
    paths: Paths,
    t: usize,
    (prev, cur): (&State, &State),
    adj: &mut State,
    (dk_t, dv_t): (&mut [f64], &mut [f64]),
) -> (f64, f64) {
    let (lambda, iota) = (head.gates.lambda[t], head.gates.iota[t]);
    let (k, v) = (head.key(t), head.value(t));
    let alpha = (lambda + prev.m - cur.m).exp();
    let beta = (iota - cur.m).exp();
    let d_alpha = dot(&adj.c, &prev.c) + dot(&adj.n, &prev.n);
    let mut d_beta = 0.0;
    dv_t.fill(0.0);
    for (a, adj_row) in adj.c.chunks_exact(v.len()).enumerate() {
        let r = dot(adj_row, v) + adj.n[a];
        dk_t[a] = beta * r;
        d_beta += k[a] * r;
        dv_t.iter_mut().zip(adj_row).for_each(|(o, &x)| *o += beta * k[a] * x);
    }
    let (d_a, mut d_iota) = (alpha * d_alpha, beta * d_beta);
    let mut d_lambda = d_a;
    if paths.max_state {
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
