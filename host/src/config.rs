//! What a caller chooses: the gate variant, the chunk size and the constants of the forward
//! pass, plus the problem dimensions and the chunk-size heuristic.
use crate::error::{Error, Result};
use crate::variant::Variant;
use tfla_params::fwd::fused;
use tfla_params::{CHUNK_SIZES, HEAD_DIM_MULTIPLE, MAX_HEAD_DIM};

/// Problem dimensions: batch, heads, steps, query/key head dim, value head dim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub b: usize,
    pub nh: usize,
    pub s: usize,
    pub dqk: usize,
    pub dhv: usize,
}

impl Dims {
    /// Checks every dimension against what the kernels support.
    pub fn validate(&self) -> Result<()> {
        for (arg, value) in [("B", self.b), ("NH", self.nh), ("S", self.s)] {
            if value == 0 {
                return Err(Error::Invalid {
                    arg,
                    value: "0".into(),
                    reason: "must be at least 1",
                });
            }
        }
        for (arg, value) in [("DQK", self.dqk), ("DHV", self.dhv)] {
            let ok = value > 0
                && value % HEAD_DIM_MULTIPLE as usize == 0
                && value <= MAX_HEAD_DIM as usize;
            if !ok {
                return Err(Error::HeadDim { arg, value });
            }
        }
        // Kernels index one head's (S, D) rows with 32-bit offsets and put B·NH on a grid axis.
        if self.s.saturating_mul(self.dqk.max(self.dhv)) > u32::MAX as usize / 2 {
            return Err(Error::Invalid {
                arg: "S",
                value: self.s.to_string(),
                reason: "S·max(DQK, DHV) must stay below 2^31",
            });
        }
        if self.b.saturating_mul(self.nh) > 65_535 {
            return Err(Error::Invalid {
                arg: "B·NH",
                value: format!("{}·{}", self.b, self.nh),
                reason: "at most 65535 heads per call",
            });
        }
        Ok(())
    }

    pub fn bh(&self) -> usize {
        self.b * self.nh
    }
}

/// Forward-pass configuration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MlstmConfig {
    pub variant: Variant,
    /// Chunk size L; `None` picks one with [`select_chunk_size`].
    pub chunk_size: Option<usize>,
    /// Added to the denominator of the normalized variants.
    pub eps: f32,
    /// q̂ = q·scale; `None` means 1/√DQK.
    pub scale: Option<f32>,
    /// Also write the per-row max state and the signed normalizer readout (the backward pass
    /// of the normalized variants needs the readout).
    pub row_stats: bool,
}

impl MlstmConfig {
    /// Defaults: heuristic chunk size, eps = 1e-6, scale = 1/√DQK, no row statistics.
    pub fn new(variant: Variant) -> Self {
        MlstmConfig {
            variant,
            chunk_size: None,
            eps: 1e-6,
            scale: None,
            row_stats: false,
        }
    }

    pub fn with_chunk_size(mut self, chunk: usize) -> Self {
        self.chunk_size = Some(chunk);
        self
    }

    /// The chunk size this config gives for `dims`, validated.
    pub fn chunk_for(&self, dims: &Dims) -> Result<usize> {
        match self.chunk_size {
            None => Ok(select_chunk_size(dims) as usize),
            Some(c) if CHUNK_SIZES.contains(&(c as u32)) => Ok(c),
            Some(c) => Err(Error::ChunkSize {
                value: c,
                supported: &CHUNK_SIZES,
            }),
        }
    }

    /// The q scale for `dims`, validated.
    pub fn scale_for(&self, dims: &Dims) -> Result<f32> {
        let scale = self.scale.unwrap_or(1.0 / (dims.dqk as f32).sqrt());
        if !scale.is_finite() {
            return Err(Error::Invalid {
                arg: "scale",
                value: scale.to_string(),
                reason: "must be finite",
            });
        }
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return Err(Error::Invalid {
                arg: "eps",
                value: self.eps.to_string(),
                reason: "must be finite and non-negative",
            });
        }
        Ok(scale)
    }
}

/// Chunk size when the caller gives none: 256 for the heads that take the wide state tile
/// (DQK ≥ 128 and DHV ≥ 256, `tfla_params::fwd::wide_state`); for the heads whose L = 128
/// forward is the one-kernel walk (`tfla_params::fwd::fused`), 128, or 256 where the batch
/// has at most [`FEW_HEADS`] heads; 128 for the others; or the smallest supported chunk that
/// covers a shorter sequence.
///
/// L trades intra-chunk work (S·L·(DQK+DHV) FLOPs per head, growing with L) against
/// chunk-state traffic (NC = S/L states of DQK·DHV, shrinking with L): the larger the state,
/// the larger the best L. Measured on an H100 over the paper grid (BENCHMARKS.md, bf16, the
/// best of L = 64, 128, 256 at each of the four (B, S) points, every variant): 512/512 and
/// 256/512 fastest at 256 in forward+backward everywhere and in the forward at 22 of 24
/// points (the other two at 128 within 4%); 128/128 fastest at 128 everywhere. Larger chunks
/// also halve the materialized states each doubling.
///
/// The one-kernel forward walks a head's chunks in order, one block per 64 value columns, so
/// with few heads its grid leaves most of the card idle; at L = 256 the forward is split and
/// its output kernel runs every chunk at once. At B·NH = 16 (128/128, S = 16k … 256k, one
/// H100, BENCHMARKS.md "Long context") L = 256 was 1.5–1.8× faster forward and 1.05–1.17×
/// forward+backward than 128; at B·NH = 64 and more (the paper grid) 128 is the faster.
/// Between 16 and 64 heads it is not measured, and 128 stays.
pub fn select_chunk_size(dims: &Dims) -> u32 {
    let (dqk, dhv) = (dims.dqk as u32, dims.dhv as u32);
    let few_heads = dims.b.saturating_mul(dims.nh) <= FEW_HEADS;
    let best = if tfla_params::fwd::wide_state(dqk, dhv)
        || (few_heads && fused::applies(fused::CHUNK, dqk, dhv))
    {
        256
    } else {
        128
    };
    CHUNK_SIZES
        .iter()
        .copied()
        .find(|&l| l as usize >= dims.s)
        .map_or(best, |cover| cover.min(best))
}

/// The most heads (B·NH) for which the one-kernel forward's heads take L = 256
/// ([`select_chunk_size`]).
pub const FEW_HEADS: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    fn dims(s: usize, dqk: usize, dhv: usize) -> Dims {
        Dims {
            b: 1,
            nh: 1,
            s,
            dqk,
            dhv,
        }
    }

    #[test]
    fn heuristic_chunk_sizes() {
        let heads = |bh: usize, s: usize, dqk: usize, dhv: usize| Dims {
            b: 1,
            nh: bh,
            ..dims(s, dqk, dhv)
        };
        // The one-kernel forward's heads: 256 with few heads in the batch, 128 with many.
        assert_eq!(select_chunk_size(&heads(128, 8192, 128, 128)), 128);
        assert_eq!(
            select_chunk_size(&heads(FEW_HEADS + 1, 8192, 128, 128)),
            128
        );
        assert_eq!(select_chunk_size(&heads(FEW_HEADS, 8192, 128, 128)), 256);
        assert_eq!(select_chunk_size(&heads(1, 8192, 64, 128)), 256);
        assert_eq!(select_chunk_size(&heads(1, 100, 128, 128)), 128);
        assert_eq!(select_chunk_size(&heads(128, 8192, 512, 512)), 256);
        assert_eq!(select_chunk_size(&dims(8192, 512, 512)), 256);
        assert_eq!(select_chunk_size(&dims(8192, 256, 512)), 256);
        assert_eq!(select_chunk_size(&dims(8192, 128, 512)), 256);
        assert_eq!(select_chunk_size(&dims(8192, 512, 128)), 128);
        assert_eq!(select_chunk_size(&dims(200, 512, 512)), 256);
        assert_eq!(select_chunk_size(&dims(100, 512, 512)), 128);
        assert_eq!(select_chunk_size(&dims(64, 512, 512)), 64);
        assert_eq!(select_chunk_size(&dims(1, 512, 512)), 64);
    }

    #[test]
    fn rejects_bad_dims() {
        assert!(matches!(
            dims(8, 24, 64).validate(),
            Err(Error::HeadDim {
                arg: "DQK",
                value: 24
            })
        ));
        assert!(matches!(
            dims(8, 64, 528).validate(),
            Err(Error::HeadDim {
                arg: "DHV",
                value: 528
            })
        ));
        assert!(matches!(
            dims(0, 64, 64).validate(),
            Err(Error::Invalid { arg: "S", .. })
        ));
        assert!(dims(8, 16, 512).validate().is_ok());
    }

    #[test]
    fn rejects_bad_chunk_and_constants() {
        let d = dims(64, 64, 64);
        let cfg = MlstmConfig::new(Variant::Exp).with_chunk_size(96);
        assert!(matches!(
            cfg.chunk_for(&d),
            Err(Error::ChunkSize { value: 96, .. })
        ));
        let cfg = MlstmConfig {
            eps: -1.0,
            ..MlstmConfig::new(Variant::Exp)
        };
        assert!(matches!(
            cfg.scale_for(&d),
            Err(Error::Invalid { arg: "eps", .. })
        ));
        let cfg = MlstmConfig {
            scale: Some(f32::NAN),
            ..MlstmConfig::new(Variant::Exp)
        };
        assert!(matches!(
            cfg.scale_for(&d),
            Err(Error::Invalid { arg: "scale", .. })
        ));
    }
}
