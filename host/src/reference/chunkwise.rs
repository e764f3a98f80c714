//! The chunkwise (TFLA) form of `shared/MATH.md`: states at chunk boundaries, then each chunk's
//! outputs from the state before it plus a causal gated sum inside the chunk.
//!
//! Notation: `B`, `NH`, `S`, `DQK`, `DHV` as in the parent module; `L` chunk size,
//! `NC = ⌈S / L⌉` chunks (the last one may be shorter, length L' ≤ L); chunk k covers steps
//! kL … kL + L' − 1 with local indices i, j = 0…L' − 1.
//!
//! Per head and chunk, with b_i = Σ_{s≤i} λ_s (inclusive cumulative sum inside the chunk),
//! g = b_{L'−1} and the state (C̃^{(k)}, ñ^{(k)}, m^{(k)}) before the chunk:
//! - between chunks: m^{(k+1)} = max(g + m^{(k)}, max_j (g − b_j + ι_j)) (0 for mLSTMsig),
//!   C̃^{(k+1)} = e^{g + m^{(k)} − m^{(k+1)}} C̃^{(k)} +
//!   Σ_j e^{g − b_j + ι_j − m^{(k+1)}} k_j v_jᵀ,
//!   ñ^{(k+1)} likewise with k_j;
//! - inside the chunk, row i, with D_ij = b_i − b_j + ι_j (j ≤ i):
//!   m_i = max(b_i + m^{(k)}, max_{j≤i} D_ij) (equals the recurrent m; 0 for mLSTMsig),
//!   num_i = e^{b_i + m^{(k)} − m_i} C̃^{(k)ᵀ} q̂_i + Σ_{j≤i} e^{D_ij − m_i} (q̂_i·k_j) v_j,
//!   s_i = e^{b_i + m^{(k)} − m_i} ñ^{(k)ᵀ} q̂_i + Σ_{j≤i} e^{D_ij − m_i} (q̂_i·k_j),
//!   h_i = num_i / (max(|s_i|, e^{−m_i}) + eps) (num_i without normalizer).

use std::ops::Range;

use super::gates::LogGates;
use super::head::{HeadInputs, head_slice_mut};
use super::state::{GatedKeys, State, gated_output, gated_state};
use super::{RefInputs, RefOutputs, RefParams};
use crate::Variant;

/// The states the chunkwise form materializes at chunk boundaries.
#[derive(Clone, Debug, PartialEq)]
pub struct ChunkStates {
    /// `NC = ⌈S / L⌉`.
    pub num_chunks: usize,
    /// C̃^{(k)}, the state before chunk k for k = 0…NC (k = NC: final), (B, NH, NC + 1, DQK, DHV).
    pub c: Vec<f64>,
    /// ñ^{(k)}, (B, NH, NC + 1, DQK).
    pub n: Vec<f64>,
    /// m^{(k)}, (B, NH, NC + 1); all zeros for mLSTMsig.
    pub m: Vec<f64>,
}

/// The states before each chunk of length `chunk` (L, positive) and the final state.
///
/// # Panics
/// If a tensor's length does not match `inp.shape`, a head dimension is 0 or `chunk` is 0.
pub fn chunk_states(inp: &RefInputs, p: &RefParams, chunk: usize) -> ChunkStates {
    inp.validate();
    assert!(chunk > 0, "reference: chunk size must be positive");
    let shape = inp.shape;
    let (dqk, dhv, nc) = (shape.dqk, shape.dhv, shape.num_chunks(chunk));
    let heads = shape.heads();
    let mut out = ChunkStates {
        num_chunks: nc,
        c: vec![0.0; heads * (nc + 1) * dqk * dhv],
        n: vec![0.0; heads * (nc + 1) * dqk],
        m: vec![0.0; heads * (nc + 1)],
    };
    for bh in 0..heads {
        let head = HeadInputs::new(inp, p.variant, bh);
        let states = head_chunk_states(&head, p.variant, chunk);
        let c = head_slice_mut(&mut out.c, bh, (nc + 1) * dqk * dhv);
        c.chunks_exact_mut(dqk * dhv)
            .zip(&states)
            .for_each(|(o, st)| o.copy_from_slice(&st.c));
        let n = head_slice_mut(&mut out.n, bh, (nc + 1) * dqk);
        n.chunks_exact_mut(dqk)
            .zip(&states)
            .for_each(|(o, st)| o.copy_from_slice(&st.n));
        let m = head_slice_mut(&mut out.m, bh, nc + 1);
        m.iter_mut().zip(&states).for_each(|(o, st)| *o = st.m);
    }
    out
}

/// Runs the chunkwise form with chunk size `chunk` (L, positive; S need not be a multiple);
/// returns h and the final states, which are the boundary states after the last chunk.
///
/// # Panics
/// If a tensor's length does not match `inp.shape`, a head dimension is 0 or `chunk` is 0.
pub fn chunkwise(inp: &RefInputs, p: &RefParams, chunk: usize) -> RefOutputs {
    assert!(chunk > 0, "reference: chunk size must be positive");
    RefOutputs::per_head(inp, p.variant, |head, h| {
        let mut states = head_chunk_states(head, p.variant, chunk);
        let dhv = head.shape.dhv;
        for (range, before) in chunk_ranges(head.shape.s, chunk).zip(&states) {
            let h_chunk = &mut h[range.start * dhv..range.end * dhv];
            chunk_output(head, p, range, before, h_chunk);
        }
        states
            .pop()
            .expect("the boundary states include the initial one")
    })
}

/// The step ranges of the chunks: [kL, min((k + 1)L, S)) for k = 0…NC − 1.
pub(super) fn chunk_ranges(s: usize, chunk: usize) -> impl Iterator<Item = Range<usize>> {
    (0..s)
        .step_by(chunk)
        .map(move |start| start..(start + chunk).min(s))
}

/// States of one head before each chunk and after the last: NC + 1 states.
pub(super) fn head_chunk_states(
    head: &HeadInputs<'_>,
    variant: Variant,
    chunk: usize,
) -> Vec<State> {
    let mut states = vec![head.init.clone()];
    for range in chunk_ranges(head.shape.s, chunk) {
        let next = next_chunk_state(head, variant, range, &states[states.len() - 1]);
        states.push(next);
    }
    states
}

/// b_i = Σ_{s≤i} λ_s over the chunk's steps, (L').
pub(super) fn cumulative_log_forget(gates: &LogGates, range: Range<usize>) -> Vec<f64> {
    gates.lambda[range]
        .iter()
        .scan(0.0, |acc, &x| {
            *acc += x;
            Some(*acc)
        })
        .collect()
}

/// The state after chunk `range` from the state before it.
fn next_chunk_state(
    head: &HeadInputs<'_>,
    variant: Variant,
    range: Range<usize>,
    before: &State,
) -> State {
    let b = cumulative_log_forget(&head.gates, range.clone());
    let g = b[b.len() - 1];
    let logs: Vec<f64> = b
        .iter()
        .zip(&head.gates.iota[range.clone()])
        .map(|(b_j, i_j)| g - b_j + i_j)
        .collect();
    let keys = chunk_keys(head, &logs, range);
    gated_state(variant, before, g + before.m, keys)
}

/// Writes h (L', DHV) of the chunk `range` given the state before it.
fn chunk_output(
    head: &HeadInputs<'_>,
    p: &RefParams,
    range: Range<usize>,
    before: &State,
    h: &mut [f64],
) {
    let b = cumulative_log_forget(&head.gates, range.clone());
    let iota = &head.gates.iota[range.clone()];
    let mut qhat = vec![0.0; head.shape.dqk];
    let mut logs = Vec::with_capacity(b.len()); // (i + 1): D_ij for j ≤ i
    for (i, h_i) in h.chunks_exact_mut(head.shape.dhv).enumerate() {
        logs.clear();
        logs.extend((0..=i).map(|j| b[i] - b[j] + iota[j]));
        let keys = chunk_keys(head, &logs, range.start..range.start + i + 1);
        head.qhat(range.start + i, p.scale, &mut qhat);
        gated_output(p, before, b[i] + before.m, keys, &qhat, h_i);
    }
}

/// The keys and values of steps `range` with log weights `logs`.
fn chunk_keys<'a>(head: &HeadInputs<'a>, logs: &'a [f64], range: Range<usize>) -> GatedKeys<'a> {
    let (dqk, dhv) = (head.shape.dqk, head.shape.dhv);
    GatedKeys {
        logs,
        k: &head.k[range.start * dqk..range.end * dqk],
        v: &head.v[range.start * dhv..range.end * dhv],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::test_util::{
        FORMS_TOL, VARIANTS, assert_close, assert_outputs_close, seeded_rng, shape, time_slice,
    };
    use crate::reference::{parallel, recurrent};

    /// Chunkwise agrees with recurrent and parallel in h and final states on random inputs:
    /// every variant, with and without initial states, S a multiple of L and not, L > S, L = 1.
    #[test]
    fn chunkwise_matches_recurrent_and_parallel() {
        let mut rng = seeded_rng("chunkwise_matches_recurrent_and_parallel");
        let cases = [
            (shape(1, 2, 37, 5, 3), 8),
            (shape(2, 1, 1, 4, 6), 8),
            (shape(1, 2, 64, 8, 4), 16),
            (shape(1, 1, 13, 3, 7), 1),
            (shape(1, 1, 13, 3, 2), 13),
            (shape(1, 1, 0, 3, 2), 4),
        ];
        let (mut worst_rec, mut worst_par): (f64, f64) = (0.0, 0.0);
        for (shape, chunk) in cases {
            for variant in VARIANTS {
                for with_init in [false, true] {
                    let p = RefParams::new(variant, shape.dqk);
                    let inp = RefInputs::random(shape, with_init, &mut rng);
                    let what = format!("{shape:?}, L = {chunk}, {variant:?}, init {with_init}");
                    let got = chunkwise(&inp, &p, chunk);
                    let rec = assert_outputs_close(
                        &format!("{what} vs recurrent"),
                        &got,
                        &recurrent(&inp, &p),
                        FORMS_TOL,
                    );
                    let par = assert_outputs_close(
                        &format!("{what} vs parallel"),
                        &got,
                        &parallel(&inp, &p),
                        FORMS_TOL,
                    );
                    worst_rec = worst_rec.max(rec);
                    worst_par = worst_par.max(par);
                }
            }
        }
        println!(
            "chunkwise: max relative error vs recurrent {worst_rec:e}, vs parallel {worst_par:e}"
        );
    }

    /// The state before chunk k equals the recurrent final state after the first kL steps.
    #[test]
    fn chunk_states_match_recurrent_prefixes() {
        let mut rng = seeded_rng("chunk_states_match_recurrent_prefixes");
        let (shape, chunk) = (shape(2, 2, 21, 4, 3), 5);
        let (dqk, dhv, nc) = (shape.dqk, shape.dhv, shape.num_chunks(chunk));
        for variant in VARIANTS {
            let p = RefParams::new(variant, dqk);
            let inp = RefInputs::random(shape, true, &mut rng);
            let states = chunk_states(&inp, &p, chunk);
            assert_eq!(states.num_chunks, nc);
            for k in 0..=nc {
                let prefix = recurrent(&time_slice(&inp, 0..(k * chunk).min(shape.s), None), &p);
                let pick = |data: &[f64], len: usize| -> Vec<f64> {
                    (0..shape.heads())
                        .flat_map(|bh| data[(bh * (nc + 1) + k) * len..][..len].to_vec())
                        .collect()
                };
                let what = format!("{variant:?}, state before chunk {k}");
                assert_close(
                    &format!("{what}: c"),
                    &pick(&states.c, dqk * dhv),
                    &prefix.c,
                    FORMS_TOL,
                );
                assert_close(
                    &format!("{what}: n"),
                    &pick(&states.n, dqk),
                    &prefix.n,
                    FORMS_TOL,
                );
                assert_close(
                    &format!("{what}: m"),
                    &pick(&states.m, 1),
                    &prefix.m,
                    FORMS_TOL,
                );
            }
        }
    }

    /// GPU-test sized inputs (B = 1, NH = 2, S = 512, DQK = DHV = 64): the forms still agree,
    /// and recurrent and chunkwise stay fast (timings printed).
    #[test]
    fn forms_agree_at_gpu_test_size() {
        let mut rng = seeded_rng("forms_agree_at_gpu_test_size");
        let shape = shape(1, 2, 512, 64, 64);
        for variant in [Variant::Exp, Variant::Sig { normalize: true }] {
            let p = RefParams::new(variant, shape.dqk);
            let inp = RefInputs::random(shape, true, &mut rng);
            let start = std::time::Instant::now();
            let rec = recurrent(&inp, &p);
            let t_rec = start.elapsed();
            let start = std::time::Instant::now();
            let chunked = chunkwise(&inp, &p, 64);
            let t_chunk = start.elapsed();
            let what = format!("{variant:?}");
            let err_chunk =
                assert_outputs_close(&format!("{what}: chunkwise"), &chunked, &rec, FORMS_TOL);
            let err_par = assert_outputs_close(
                &format!("{what}: parallel"),
                &parallel(&inp, &p),
                &rec,
                FORMS_TOL,
            );
            println!("{what}: recurrent {t_rec:?}, chunkwise {t_chunk:?}");
            println!("{what}: errors vs recurrent: chunkwise {err_chunk:e}, parallel {err_par:e}");
        }
    }
}
