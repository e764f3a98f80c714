//! Random inputs in realistic ranges, for tests of the reference and of the GPU kernels.
//!
//! Notation: `B`, `NH`, `S`, `DQK`, `DHV` as in the parent module.

use rand::Rng;

use super::{RefInputs, Shape};

impl RefInputs {
    /// Random inputs: q, k, v ~ N(0, 1); ĩ ~ U[−6, 6]; f̃ ~ U[−2, 8] with probability 0.9, else
    /// strongly negative, U[−12, −4]. With `with_initial_state`: C̃_0, ñ_0 ~ N(0, 1) and
    /// m_0 ~ U[−3, 3]; otherwise no initial state.
    pub fn random(shape: Shape, with_initial_state: bool, rng: &mut impl Rng) -> Self {
        let Shape { s, dqk, dhv, .. } = shape;
        let heads = shape.heads();
        let mut normals = |len: usize| (0..len).map(|_| standard_normal(rng)).collect::<Vec<_>>();
        let q = normals(heads * s * dqk);
        let k = normals(heads * s * dqk);
        let v = normals(heads * s * dhv);
        let (c0, n0) = if with_initial_state {
            (Some(normals(heads * dqk * dhv)), Some(normals(heads * dqk)))
        } else {
            (None, None)
        };
        let i = (0..heads * s).map(|_| rng.gen_range(-6.0..6.0)).collect();
        let f = (0..heads * s).map(|_| forget_preactivation(rng)).collect();
        let m0 = with_initial_state.then(|| (0..heads).map(|_| rng.gen_range(-3.0..3.0)).collect());
        Self {
            shape,
            q,
            k,
            v,
            i,
            f,
            c0,
            n0,
            m0,
        }
    }
}

/// A sample of N(0, 1) by the Box–Muller transform.
fn standard_normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = 1.0 - rng.gen_range(0.0..1.0); // in (0, 1], so ln(u1) is finite
    let u2: f64 = rng.gen_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// f̃: mostly positive (forget gate near 1), sometimes strongly negative (a reset).
fn forget_preactivation(rng: &mut impl Rng) -> f64 {
    if rng.gen_bool(0.1) {
        rng.gen_range(-12.0..-4.0)
    } else {
        rng.gen_range(-2.0..8.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::test_util::{seeded_rng, shape};

    /// Sample moments of the normal sampler, and the gate ranges.
    #[test]
    fn random_inputs_have_the_documented_ranges() {
        let mut rng = seeded_rng("random_inputs_have_the_documented_ranges");
        let shape = shape(2, 2, 4000, 2, 3);
        let inp = RefInputs::random(shape, true, &mut rng);
        let n = inp.q.len() as f64;
        let mean = inp.q.iter().sum::<f64>() / n;
        let var = inp.q.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "mean {mean}, var {var}"
        );
        assert!(inp.i.iter().all(|x| (-6.0..6.0).contains(x)));
        assert!(inp.f.iter().all(|x| (-12.0..8.0).contains(x)));
        let resets = inp.f.iter().filter(|&&x| x < -4.0).count() as f64 / inp.f.len() as f64;
        assert!(
            (resets - 0.1).abs() < 0.02,
            "share of strongly negative f̃: {resets}"
        );
        assert!(inp.m0.unwrap().iter().all(|x| (-3.0..3.0).contains(x)));
        assert_eq!(inp.c0.map(|c| c.len()), Some(4 * 2 * 3));
    }
}
