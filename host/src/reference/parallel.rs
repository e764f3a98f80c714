//! The parallel (quadratic) form: each output is a gated sum over all earlier keys,
//! O(S²·(DQK + DHV)) per head.
//!
//! Notation: `B`, `NH`, `S`, `DQK`, `DHV` as in the parent module; steps i, j are 1-based here.
//!
//! Per head, with the gate matrix D_ij = Σ_{j<s≤i} λ_s + ι_j for j ≤ i (−∞ otherwise) and the
//! initial-state log weight D_i0 = Σ_{s≤i} λ_s + m_0:
//! m_i = max(D_i0, max_{j≤i} D_ij) (mLSTMexp; equal to the recurrent m_i) or 0 (mLSTMsig),
//! num_i = e^{D_i0 − m_i} C̃_0ᵀ q̂_i + Σ_{j≤i} e^{D_ij − m_i} (q̂_i·k_j) v_j,
//! s_i = e^{D_i0 − m_i} ñ_0ᵀ q̂_i + Σ_{j≤i} e^{D_ij − m_i} (q̂_i·k_j),
//! h_i = num_i / (max(|s_i|, e^{−m_i}) + eps) (num_i without normalizer).
//! The sums over λ are accumulated directly (not as differences of cumulative sums).
//!
//! The final states are the same direct sum at i = S, not the recurrence:
//! m_S as above, C̃_S = e^{D_S0 − m_S} C̃_0 + Σ_j e^{D_Sj − m_S} k_j v_jᵀ, ñ_S likewise.

use super::gates::LogGates;
use super::head::HeadInputs;
use super::state::{GatedKeys, State, gated_output, gated_state};
use super::{RefInputs, RefOutputs, RefParams};

/// Runs the parallel form; returns h and the final states (C̃_S, ñ_S, m_S) as direct sums.
///
/// # Panics
/// If a tensor's length does not match `inp.shape` or a head dimension is 0.
pub fn parallel(inp: &RefInputs, p: &RefParams) -> RefOutputs {
    RefOutputs::per_head(inp, p.variant, |head, h| run_head(head, p, h))
}

/// Runs one head, writing h (S, DHV); returns the final state.
fn run_head(head: &HeadInputs<'_>, p: &RefParams, h: &mut [f64]) -> State {
    let (dqk, dhv) = (head.shape.dqk, head.shape.dhv);
    let mut qhat = vec![0.0; dqk];
    let mut logs = Vec::with_capacity(head.shape.s); // (i): D_ij for j ≤ i
    for (t, h_t) in h.chunks_exact_mut(dhv).enumerate() {
        let init_log = row_log_weights(&head.gates, t + 1, head.init.m, &mut logs);
        let keys = GatedKeys {
            logs: &logs,
            k: &head.k[..(t + 1) * dqk],
            v: &head.v[..(t + 1) * dhv],
        };
        head.qhat(t, p.scale, &mut qhat);
        gated_output(p, &head.init, init_log, keys, &qhat, h_t);
    }
    let init_log = row_log_weights(&head.gates, head.shape.s, head.init.m, &mut logs);
    let keys = GatedKeys {
        logs: &logs,
        k: head.k,
        v: head.v,
    };
    gated_state(p.variant, &head.init, init_log, keys)
}

/// Row i of the gate matrix: writes D_ij = Σ_{j<s≤i} λ_s + ι_j for j = 1…i into `logs` and
/// returns D_i0 = Σ_{s≤i} λ_s + m_0 (`m0`).
fn row_log_weights(gates: &LogGates, i: usize, m0: f64, logs: &mut Vec<f64>) -> f64 {
    logs.clear();
    logs.resize(i, 0.0);
    let mut decay = 0.0; // Σ_{j<s≤i} λ_s
    for j in (0..i).rev() {
        logs[j] = decay + gates.iota[j];
        decay += gates.lambda[j];
    }
    decay + m0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::recurrent;
    use crate::reference::test_util::{
        FORMS_TOL, VARIANTS, assert_outputs_close, seeded_rng, shape,
    };

    /// Parallel and recurrent agree in h and final states on random inputs: every variant,
    /// with and without initial states, S = 0, 1 and longer, DQK ≠ DHV.
    #[test]
    fn parallel_matches_recurrent() {
        let mut rng = seeded_rng("parallel_matches_recurrent");
        let shapes = [
            shape(1, 2, 37, 5, 3),
            shape(2, 1, 1, 4, 6),
            shape(1, 2, 64, 8, 4),
            shape(1, 1, 0, 3, 2),
        ];
        let mut worst: f64 = 0.0;
        for shape in shapes {
            for variant in VARIANTS {
                for with_init in [false, true] {
                    let p = RefParams::new(variant, shape.dqk);
                    let inp = RefInputs::random(shape, with_init, &mut rng);
                    let what = format!("{shape:?}, {variant:?}, init {with_init}");
                    let err = assert_outputs_close(
                        &what,
                        &parallel(&inp, &p),
                        &recurrent(&inp, &p),
                        FORMS_TOL,
                    );
                    worst = worst.max(err);
                }
            }
        }
        println!("parallel vs recurrent: max relative error {worst:e}");
    }
}
