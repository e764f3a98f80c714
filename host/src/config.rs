//! What a caller chooses: the gate variant, the chunk size and the constants of the forward
//! pass, plus the problem dimensions and the chunk-size heuristic.
use crate::error::{Error, Result};
use crate::variant::Variant;
use tfla_params::bwd;
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
    /// of the normalized variants needs the readout). Set it where a backward follows, for
    /// every variant: the automatic chunk size then picks the forward+backward's best L
    /// ([`select_chunk_size`]), and the backward, given the same config, the same one; and
    /// the forward keeps the chunk states C̃_k, which without it a forward on the one-kernel
    /// heads leaves out ([`crate::output_layout`]; a backward then recomputes them).
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
            None => Ok(select_chunk_size(dims, self.row_stats) as usize),
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

/// Chunk size when the caller gives none, for a forward alone or (`backward`) one that a
/// backward follows (`MlstmConfig::row_stats`, which the backward needs, says which); or the
/// smallest supported chunk that covers a shorter sequence.
///
/// | heads | forward | forward that a backward follows |
/// |---|---|---|
/// | wide state (DQK ≥ 128, DHV ≥ 256: `tfla_params::fwd::wide_state`) | 256 | 128 where the backward's `wgmma` state walk has at most [`FEW_STATE_TILES`] blocks, else 256 |
/// | one-kernel forward at L = 128 (`tfla_params::fwd::fused`: 128/128 and smaller) | 256 up to [`FEW_HEADS`] heads (B·NH), else 128 | 256 up to [`FEW_HEADS_BACKWARD`] heads where S ≥ [`LONG_SEQUENCE`], else 128 |
/// | others | 128 | 128 |
///
/// L trades intra-chunk work (S·L·(DQK+DHV) FLOPs per head, growing with L) against
/// chunk-state traffic (NC = S/L states of DQK·DHV, shrinking with L): the larger the state,
/// the larger the best L; larger chunks also halve the materialized states each doubling.
/// Where the batch has few heads, what fills the card decides instead:
/// - The one-kernel forward walks a head's chunks in order, one block per 64 value columns:
///   with few heads its grid leaves most SMs idle, while at L = 256 the forward is split and
///   its output kernel runs every chunk at once. Its backward at L = 128 (`bwd_chunk`, one
///   block per chunk) fills the card from far fewer heads than its forward.
/// - The wide heads' state-gradient walk runs on `wgmma` from L = 256
///   (`tfla_params::bwd::state_wg`), one block per 128 × 256 tile of a head's state, in
///   order over the chunks; at L = 128 the narrow walk runs 4× the blocks.
///
/// Fitted to an H100 (132 SMs), bf16, mLSTMexp: `tfla-bench --grid chooser` (B = 1 … 64,
/// S = 1k … 32k, the three head shapes, L = 64 … 512; `benches/results/chooser_sweep_h100.json`),
/// where this rule picks the fastest L in all 27 forward and all 27
/// forward+backward cells (the test `chooser_picks_the_measured_best` holds it to that
/// sweep; `tfla-bench` with more than one chunk size prints its pick against the best). The
/// switch at [`LONG_SEQUENCE`] lies between two measured S; other cards are not measured (a
/// card with fewer SMs fills from fewer heads).
pub fn select_chunk_size(dims: &Dims, backward: bool) -> u32 {
    let (dqk, dhv) = (dims.dqk as u32, dims.dhv as u32);
    let heads = dims.b.saturating_mul(dims.nh);
    let best = if tfla_params::fwd::wide_state(dqk, dhv) {
        let walk_blocks = heads.saturating_mul(bwd::state_wg::tiles(dqk, dhv) as usize);
        if backward && walk_blocks <= FEW_STATE_TILES {
            128
        } else {
            256
        }
    } else if fused::applies(fused::CHUNK, dqk, dhv) {
        let few = if backward {
            heads <= FEW_HEADS_BACKWARD && dims.s >= LONG_SEQUENCE
        } else {
            heads <= FEW_HEADS
        };
        if few { 256 } else { 128 }
    } else {
        128
    };
    CHUNK_SIZES
        .iter()
        .copied()
        .find(|&l| l as usize >= dims.s)
        .map_or(best, |cover| cover.min(best))
}

/// The most heads (B·NH) for which the one-kernel forward's heads take L = 256 in a forward
/// alone ([`select_chunk_size`]): at 32 heads 256 was 1.16× faster, at 64 heads 128 was 1.31×
/// faster.
pub const FEW_HEADS: usize = 32;
/// The same for a forward that a backward follows: at 16 heads 256 was 1.09–1.15× faster
/// forward+backward at S = 8192 and 32768, at 32 heads 128 was 1.08× faster.
pub const FEW_HEADS_BACKWARD: usize = 16;
/// The shortest sequence for which [`FEW_HEADS_BACKWARD`] takes L = 256: at S = 2048, 16
/// heads ran forward+backward 1.06× faster at 128.
pub const LONG_SEQUENCE: usize = 4096;
/// The most blocks of the wide heads' `wgmma` state-gradient walk (B·NH × its tiles per head)
/// for which a forward that a backward follows takes L = 128: 512/512 at 8 heads (64 blocks)
/// and 256/512 at 8 and 16 heads (32 and 64 blocks) ran forward+backward 1.01–1.13× faster at
/// 128; at 128 blocks and more, 256 was the faster.
pub const FEW_STATE_TILES: usize = 64;

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

    /// The rule against the H100 sweep it was fitted to (`tfla-bench --grid chooser`, bf16,
    /// mLSTMexp, every L of 64 … 512 at each shape): at every shape the pick for a forward
    /// alone and for a forward+backward runs within 1% of the fastest L measured there.
    #[test]
    fn chooser_picks_the_measured_best() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../benches/results/chooser_sweep_h100.json"
        );
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // One measurement per line: {"impl": "tfla", …, "B": 1, …, "fwd_ms": 0.2329, …}.
        let num = |line: &str, key: &str| -> f64 {
            let key = format!("\"{key}\": ");
            let at = line.find(&key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len();
            line[at..]
                .split([',', '}'])
                .next()
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        // Per shape: (L, forward ms, forward+backward ms) at each L.
        type Times = Vec<(u32, f64, f64)>;
        let mut cells: Vec<(Dims, Times)> = Vec::new();
        for line in text.lines().filter(|l| l.contains("\"impl\": \"tfla\"")) {
            let dims = Dims {
                b: num(line, "B") as usize,
                nh: num(line, "NH") as usize,
                s: num(line, "S") as usize,
                dqk: num(line, "DQK") as usize,
                dhv: num(line, "DHV") as usize,
            };
            let time = (
                num(line, "chunk") as u32,
                num(line, "fwd_ms"),
                num(line, "fwdbwd_ms"),
            );
            match cells.iter_mut().find(|(d, _)| *d == dims) {
                Some((_, times)) => times.push(time),
                None => cells.push((dims, vec![time])),
            }
        }
        assert_eq!(cells.len(), 27, "the sweep's shapes");
        for (dims, times) in &cells {
            assert_eq!(times.len(), 4, "L = 64 … 512 at {dims:?}");
            for backward in [false, true] {
                let ms =
                    |&(_, fwd, fwd_bwd): &(u32, f64, f64)| if backward { fwd_bwd } else { fwd };
                let best = times.iter().map(ms).fold(f64::INFINITY, f64::min);
                let pick = select_chunk_size(dims, backward);
                let at_pick = times.iter().find(|t| t.0 == pick).map(ms);
                assert!(
                    at_pick.is_some_and(|t| t <= 1.01 * best),
                    "{dims:?}, backward {backward}: L = {pick} runs {at_pick:?} ms, the best {best} ms"
                );
            }
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
        assert_eq!(select_chunk_size(&heads(128, 8192, 128, 128), false), 128);
        assert_eq!(
            select_chunk_size(&heads(FEW_HEADS + 1, 8192, 128, 128), false),
            128
        );
        assert_eq!(
            select_chunk_size(&heads(FEW_HEADS, 8192, 128, 128), false),
            256
        );
        assert_eq!(select_chunk_size(&heads(1, 8192, 64, 128), false), 256);
        assert_eq!(select_chunk_size(&heads(1, 100, 128, 128), false), 128);
        assert_eq!(select_chunk_size(&heads(128, 8192, 512, 512), false), 256);
        assert_eq!(select_chunk_size(&dims(8192, 512, 512), false), 256);
        assert_eq!(select_chunk_size(&dims(8192, 256, 512), false), 256);
        assert_eq!(select_chunk_size(&dims(8192, 128, 512), false), 256);
        assert_eq!(select_chunk_size(&dims(8192, 512, 128), false), 128);
        assert_eq!(select_chunk_size(&dims(200, 512, 512), false), 256);
        assert_eq!(select_chunk_size(&dims(100, 512, 512), false), 128);
        assert_eq!(select_chunk_size(&dims(64, 512, 512), false), 64);
        assert_eq!(select_chunk_size(&dims(1, 512, 512), false), 64);
        // Followed by a backward: the wide heads take 128 while their state-gradient walk
        // has few blocks; the one-kernel forward's heads take 256 with fewer heads, and only
        // on long sequences.
        let wide_tiles = bwd::state_wg::tiles(512, 512) as usize;
        assert_eq!(
            select_chunk_size(&heads(FEW_STATE_TILES / wide_tiles, 8192, 512, 512), true),
            128
        );
        assert_eq!(
            select_chunk_size(
                &heads(FEW_STATE_TILES / wide_tiles + 1, 8192, 512, 512),
                true
            ),
            256
        );
        assert_eq!(
            select_chunk_size(&heads(FEW_HEADS_BACKWARD, 8192, 128, 128), true),
            256
        );
        assert_eq!(
            select_chunk_size(&heads(FEW_HEADS_BACKWARD + 1, 8192, 128, 128), true),
            128
        );
        assert_eq!(
            select_chunk_size(
                &heads(FEW_HEADS_BACKWARD, LONG_SEQUENCE - 1, 128, 128),
                true
            ),
            128
        );
        assert_eq!(select_chunk_size(&heads(1, 8192, 512, 128), true), 128);
        assert_eq!(select_chunk_size(&dims(100, 512, 512), true), 128);
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
