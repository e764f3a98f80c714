//! The forward pass's outputs: h, the final states, and what the backward pass reads (the
//! chunk states, the gate vectors, the row statistics); their layout and allocation.
use crate::config::{Dims, MlstmConfig};
use crate::error::{Error, Result};
use crate::runtime::Runtime;
use crate::tensor::{Dtype, Tensor, expect_dtype, expect_shape};
use tfla_params::Device;
use tfla_params::fwd::{fused, use_fused};

/// The states at every chunk boundary: the interface between the two forward kernels, and
/// what the backward pass starts from. C̃_k, ñ_k, m_k are the states *before* chunk k.
#[derive(Debug)]
pub struct ChunkStates {
    pub chunk_size: usize,
    /// (B, NH, NC, DQK, DHV) in the input dtype: the output kernel consumes C̃_k rounded to
    /// that dtype for its `mma`, so storing it rounded changes no result and halves the bytes.
    pub c: Tensor,
    /// (B, NH, NC, DQK) f32.
    pub n: Tensor,
    /// (B, NH, NC) f32.
    pub m: Tensor,
}

impl ChunkStates {
    /// Whether C̃_k was released ([`MlstmOutputs::release_chunk_states`]).
    pub fn released(&self) -> bool {
        self.c.numel() == 0
    }
}

/// The gate vectors chunk_gates writes (inside each chunk: cumulative log forget gate b,
/// u = ι − b, running max cm of u; per chunk g = b at its last step). Rows are chunk-padded to
/// NC·L steps so every chunk starts 16-byte aligned.
#[derive(Debug)]
pub struct ChunkGates {
    /// (B, NH, NC·L) f32 each.
    pub b: Tensor,
    pub u: Tensor,
    pub cm: Tensor,
    /// (B, NH, NC) f32.
    pub g: Tensor,
}

/// Per-row statistics of the forward pass (kept when `MlstmConfig::row_stats` is set).
#[derive(Debug)]
pub struct RowStats {
    /// Max state m_i: (B, NH, S) f32 (zeros for mLSTMsig).
    pub m: Tensor,
    /// Signed normalizer readout s_i = ñ_iᵀq̂_i: (B, NH, S) f32 (zeros without the
    /// normalizer). The denominator is max(|s_i|, floor_i) + eps with floor_i = e^{−m_i}
    /// (mLSTMexp) or 1 (mLSTMsig).
    pub norm: Tensor,
}

/// The forward pass's outputs.
#[derive(Debug)]
pub struct MlstmOutputs {
    /// (B, NH, S, DHV) in the input dtype.
    pub h: Tensor,
    /// Final states: (B, NH, DQK, DHV), (B, NH, DQK), (B, NH) f32 (ñ = 0 without the
    /// normalizer). Not written by a forward with a state pool, whose final states go to the
    /// pool; [`mlstm_fwd`] then allocates them empty (shape `[0]`).
    pub c: Tensor,
    pub n: Tensor,
    pub m: Tensor,
    pub states: ChunkStates,
    pub gates: ChunkGates,
    pub row_stats: Option<RowStats>,
    /// Whether the last forward into these outputs ran with a state pool: its initial states
    /// are not in the inputs' c0, n0, m0 and its final states not in c, n, m, so a backward
    /// pass must not read them ([`MlstmOutputs::check`]).
    pub(super) pooled: bool,
}

/// Whether a forward with `cfg` leaves the chunk states C̃_k out of its outputs: no backward
/// follows (`cfg.row_stats` unset), and the inputs (16-bit), chunk size and heads are those
/// of the one-kernel forward (`chunk_fused`), which holds C̃_k on chip. Only a backward reads
/// C̃_k (a backward from such outputs recomputes them, as after
/// [`MlstmOutputs::release_chunk_states`]); at 128/128 they are half of what a forward
/// allocates, and storing them 3.5–4.7% of its time on an H100 (BENCHMARKS.md).
fn leaves_out_chunk_states(dims: &Dims, dtype: Dtype, cfg: &MlstmConfig, chunk: usize) -> bool {
    !cfg.row_stats
        && dtype != Dtype::F32
        && fused::applies(chunk as u32, dims.dqk as u32, dims.dhv as u32)
}

/// Whether the device runs the one-kernel forward at `dims` and `chunk`.
fn one_kernel_on(dev: &Device, dims: &Dims, chunk: usize) -> bool {
    use_fused(dev, chunk as u32, dims.dqk as u32, dims.dhv as u32)
}

/// The shape of C̃_k at `dims` and `chunk`: (B, NH, NC, DQK, DHV).
fn chunk_states_shape(dims: &Dims, chunk: usize) -> Vec<usize> {
    let Dims { b, nh, s, dqk, dhv } = *dims;
    vec![b, nh, s.div_ceil(chunk), dqk, dhv]
}

/// Whether a forward with `cfg` on `dev` may run without C̃_k (`c_states` null): the outputs
/// leave them out ([`leaves_out_chunk_states`]) and the device runs the one-kernel forward.
pub(crate) fn chunk_states_optional(
    dev: &Device,
    dims: &Dims,
    dtype: Dtype,
    cfg: &MlstmConfig,
) -> Result<bool> {
    let chunk = cfg.chunk_for(dims)?;
    Ok(leaves_out_chunk_states(dims, dtype, cfg, chunk) && one_kernel_on(dev, dims, chunk))
}

/// What a forward on `dev` needs beside its outputs ([`output_layout`]), as (name in
/// [`crate::FwdPointers`], dtype, shape): the chunk states C̃_k where the outputs leave them out
/// but the device runs the two-kernel forward, whose kernels hand them over (a card whose
/// shared memory per block is too small for `chunk_fused`, such as the A100); else nothing. A
/// framework that owns its buffers allocates it for [`crate::mlstm_fwd_raw`] and may free it
/// once the forward's work on the stream is done.
pub fn forward_workspace_layout(
    dev: &Device,
    dims: &Dims,
    dtype: Dtype,
    cfg: &MlstmConfig,
) -> Result<Vec<(&'static str, Dtype, Vec<usize>)>> {
    let chunk = cfg.chunk_for(dims)?;
    let needed =
        leaves_out_chunk_states(dims, dtype, cfg, chunk) && !one_kernel_on(dev, dims, chunk);
    Ok(if needed {
        vec![("c_states", dtype, chunk_states_shape(dims, chunk))]
    } else {
        Vec::new()
    })
}

/// What a forward pass writes, as (name in [`FwdPointers`], dtype, shape), in the order of
/// [`MlstmOutputs`]' fields: h, the final states, the chunk states, the gate vectors and, with
/// `cfg.row_stats`, the row statistics. Without `finals` (a forward into a state pool) the final
/// states are empty (shape `[0]`); so are the chunk states C̃_k where no backward follows and
/// the forward may run as one kernel (`cfg.row_stats` unset, 16-bit inputs, the heads and
/// chunk size of `chunk_fused`; on a device that runs two kernels there,
/// [`forward_workspace_layout`] lists them). What [`MlstmOutputs::alloc`] allocates, and what a
/// framework that owns its buffers allocates for [`mlstm_fwd_raw`].
pub fn output_layout(
    dims: &Dims,
    dtype: Dtype,
    cfg: &MlstmConfig,
    finals: bool,
) -> Result<Vec<(&'static str, Dtype, Vec<usize>)>> {
    let Dims { b, nh, s, dqk, dhv } = *dims;
    let chunk = cfg.chunk_for(dims)?;
    let nc = s.div_ceil(chunk);
    let f32_ = Dtype::F32;
    let fin = |shape: Vec<usize>| if finals { shape } else { vec![0] };
    let c_states = if leaves_out_chunk_states(dims, dtype, cfg, chunk) {
        vec![0]
    } else {
        chunk_states_shape(dims, chunk)
    };
    let mut layout = vec![
        ("h", dtype, vec![b, nh, s, dhv]),
        ("c_final", f32_, fin(vec![b, nh, dqk, dhv])),
        ("n_final", f32_, fin(vec![b, nh, dqk])),
        ("m_final", f32_, fin(vec![b, nh])),
        ("c_states", dtype, c_states),
        ("n_states", f32_, vec![b, nh, nc, dqk]),
        ("m_states", f32_, vec![b, nh, nc]),
        ("gate_b", f32_, vec![b, nh, nc * chunk]),
        ("gate_u", f32_, vec![b, nh, nc * chunk]),
        ("gate_cm", f32_, vec![b, nh, nc * chunk]),
        ("gate_g", f32_, vec![b, nh, nc]),
    ];
    if cfg.row_stats {
        layout.push(("m_rows", f32_, vec![b, nh, s]));
        layout.push(("norm_rows", f32_, vec![b, nh, s]));
    }
    Ok(layout)
}

impl MlstmOutputs {
    /// Allocates outputs for `dims` (contents unspecified until a forward pass writes them).
    /// Without `cfg.row_stats` at the heads the one-kernel forward takes, and where the device
    /// runs it, they hold no chunk states C̃_k (`states.released()`: [`output_layout`]).
    pub fn alloc(rt: &Runtime, dims: &Dims, dtype: Dtype, cfg: &MlstmConfig) -> Result<Self> {
        Self::alloc_with(rt, dims, dtype, cfg, true)
    }

    /// [`MlstmOutputs::alloc`]; without `finals` (a forward with a state pool) c, n, m are
    /// empty.
    pub(crate) fn alloc_with(
        rt: &Runtime,
        dims: &Dims,
        dtype: Dtype,
        cfg: &MlstmConfig,
        finals: bool,
    ) -> Result<Self> {
        let chunk = cfg.chunk_for(dims)?;
        // Where the device runs two kernels, the chunk states the layout leaves out are their
        // interface: these outputs hold them.
        let workspace = forward_workspace_layout(&rt.plan_device(), dims, dtype, cfg)?;
        let mut tensors =
            output_layout(dims, dtype, cfg, finals)?
                .into_iter()
                .map(|(name, dt, shape)| {
                    let shape = workspace
                        .iter()
                        .find(|w| w.0 == name)
                        .map_or(shape, |w| w.2.clone());
                    Tensor::uninit(rt, dt, &shape)
                });
        let mut next = || tensors.next().expect("output_layout lists every output");
        Ok(MlstmOutputs {
            h: next()?,
            c: next()?,
            n: next()?,
            m: next()?,
            states: ChunkStates {
                chunk_size: chunk,
                c: next()?,
                n: next()?,
                m: next()?,
            },
            gates: ChunkGates {
                b: next()?,
                u: next()?,
                cm: next()?,
                g: next()?,
            },
            row_stats: if cfg.row_stats {
                Some(RowStats {
                    m: next()?,
                    norm: next()?,
                })
            } else {
                None
            },
            pooled: false,
        })
    }

    /// Device memory these outputs hold (everything a forward call allocates).
    pub fn bytes(&self) -> usize {
        let mut tensors = vec![
            &self.h,
            &self.c,
            &self.n,
            &self.m,
            &self.states.c,
            &self.states.n,
            &self.states.m,
            &self.gates.b,
            &self.gates.u,
            &self.gates.cm,
            &self.gates.g,
        ];
        if let Some(r) = &self.row_stats {
            tensors.extend([&r.m, &r.norm]);
        }
        tensors.iter().map(|t| t.numel() * t.dtype().size()).sum()
    }

    /// Whether the last forward into these outputs ran with a state pool (its final states
    /// are in the pool, not in c, n, m).
    pub fn pooled(&self) -> bool {
        self.pooled
    }

    /// Checks outputs before a pass reads them (the backward): allocated for `dims`, `dtype`
    /// and the chunk size of `cfg`, with the final states, from a forward without a state pool
    /// (the backward takes no pool: its initial states are not the inputs' c0, n0, m0).
    pub(crate) fn check(&self, dims: &Dims, dtype: Dtype, cfg: &MlstmConfig) -> Result<()> {
        if self.pooled {
            return Err(Error::Invalid {
                arg: "fwd",
                value: "outputs of a forward with a state pool".into(),
                reason: "the backward pass takes no state pool: its initial states came from \
                         the pool, its final states went there; run the forward with c0, n0, m0",
            });
        }
        self.check_shapes(dims, dtype, cfg, true, true)
    }

    /// Frees the chunk states C̃_k, the bulk of what the forward keeps for a backward pass
    /// (B·NH·NC·DQK·DHV in the input dtype; ñ_k, m_k and the gate vectors, NC·DQK or fewer per
    /// head, stay). A backward from these outputs then recomputes C̃_k into its workspace with
    /// the forward's state kernel (TFLA's memory–time trade-off: memory held between the two
    /// passes against one more state-kernel pass; BENCHMARKS.md measures it). A forward into
    /// these outputs needs them allocated again ([`MlstmOutputs::alloc`]).
    pub fn release_chunk_states(&mut self, rt: &Runtime) -> Result<()> {
        self.states.c = Tensor::uninit(rt, self.states.c.dtype(), &[0])?;
        Ok(())
    }

    /// Checks that these outputs were allocated for `dims`, `dtype` and the chunk size of
    /// `cfg`; the final states c, n, m only with `finals` (a forward with a pool writes none);
    /// released chunk states pass with `released_ok` (a backward recomputes them; a forward
    /// where [`chunk_states_optional`] skips them).
    pub(crate) fn check_shapes(
        &self,
        dims: &Dims,
        dtype: Dtype,
        cfg: &MlstmConfig,
        finals: bool,
        released_ok: bool,
    ) -> Result<()> {
        let Dims { b, nh, s, dqk, dhv } = *dims;
        let chunk = cfg.chunk_for(dims)?;
        let nc = s.div_ceil(chunk);
        expect_shape("h", &self.h, &[b, nh, s, dhv])?;
        expect_dtype("h", &self.h, dtype)?;
        if self.states.chunk_size != chunk {
            return Err(Error::Invalid {
                arg: "states.chunk_size",
                value: self.states.chunk_size.to_string(),
                reason: "the outputs were allocated for another chunk size (with chunk_size None the \
                         size follows row_stats: give the backward the forward's config)",
            });
        }
        // Released states (`release_chunk_states`) are for a backward only.
        if !(released_ok && self.states.released()) {
            expect_shape("states.c", &self.states.c, &chunk_states_shape(dims, chunk))?;
        }
        expect_dtype("states.c", &self.states.c, dtype)?;
        let finals = [
            ("c", &self.c, vec![b, nh, dqk, dhv]),
            ("n", &self.n, vec![b, nh, dqk]),
            ("m", &self.m, vec![b, nh]),
        ]
        .into_iter()
        .filter(|_| finals);
        let f32s = finals.chain([
            ("states.n", &self.states.n, vec![b, nh, nc, dqk]),
            ("states.m", &self.states.m, vec![b, nh, nc]),
            ("gates.b", &self.gates.b, vec![b, nh, nc * chunk]),
            ("gates.u", &self.gates.u, vec![b, nh, nc * chunk]),
            ("gates.cm", &self.gates.cm, vec![b, nh, nc * chunk]),
            ("gates.g", &self.gates.g, vec![b, nh, nc]),
        ]);
        for (arg, t, shape) in f32s {
            expect_shape(arg, t, &shape)?;
            expect_dtype(arg, t, Dtype::F32)?;
        }
        match (&self.row_stats, cfg.row_stats) {
            (Some(r), _) => {
                for (arg, t) in [("row_stats.m", &r.m), ("row_stats.norm", &r.norm)] {
                    expect_shape(arg, t, &[b, nh, s])?;
                    // Written and read as f32: a 16-bit tensor of this shape is half the bytes.
                    expect_dtype(arg, t, Dtype::F32)?;
                }
            }
            (None, true) => {
                return Err(Error::Invalid {
                    arg: "row_stats",
                    value: "None".into(),
                    reason: "the config asks for row statistics but the outputs have none",
                });
            }
            (None, false) => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::variant::Variant;

    fn shape_of(layout: &[(&'static str, Dtype, Vec<usize>)], name: &str) -> Vec<usize> {
        layout.iter().find(|(n, ..)| *n == name).unwrap().2.clone()
    }

    #[test]
    fn a_forward_no_backward_follows_leaves_out_the_chunk_states_where_one_kernel_runs() {
        let d = |dqk, dhv| Dims {
            b: 2,
            nh: 3,
            s: 1000,
            dqk,
            dhv,
        };
        let cfg = |row_stats, chunk| MlstmConfig {
            row_stats,
            ..MlstmConfig::new(Variant::Sig { normalize: false }).with_chunk_size(chunk)
        };
        let states = |dims: &Dims, dtype, cfg: &MlstmConfig| {
            shape_of(&output_layout(dims, dtype, cfg, true).unwrap(), "c_states")
        };
        let bf16 = Dtype::Bf16;
        // The one-kernel forward's heads and L, no backward: no C̃_k; the other buffers stay.
        let small = d(128, 128);
        assert_eq!(states(&small, bf16, &cfg(false, 128)), [0]);
        assert_eq!(
            shape_of(
                &output_layout(&small, bf16, &cfg(false, 128), true).unwrap(),
                "n_states"
            ),
            [2, 3, 8, 128]
        );
        // A backward follows, another L, wider heads, or the f32 recurrence: C̃_k is kept.
        let kept = [2, 3, 8, 128, 128];
        assert_eq!(states(&small, bf16, &cfg(true, 128)), kept);
        assert_eq!(states(&small, Dtype::F32, &cfg(false, 128)), kept);
        assert_eq!(states(&small, bf16, &cfg(false, 64)), [2, 3, 16, 128, 128]);
        assert_eq!(
            states(&d(128, 256), bf16, &cfg(false, 128)),
            [2, 3, 8, 128, 256]
        );
        // Where the device runs two kernels there, they hand C̃_k over: the forward's
        // workspace holds it, and a null pointer is not allowed.
        for (dev, fused) in [
            (Device::HOPPER, true),
            (Device::PORTABLE_227K, true),
            (Device::AMPERE_A100, false),
        ] {
            let ws = forward_workspace_layout(&dev, &small, bf16, &cfg(false, 128)).unwrap();
            let optional = chunk_states_optional(&dev, &small, bf16, &cfg(false, 128)).unwrap();
            assert_eq!(optional, fused, "{dev:?}");
            if fused {
                assert!(ws.is_empty(), "{dev:?}: {ws:?}");
            } else {
                assert_eq!(ws, [("c_states", bf16, kept.to_vec())]);
            }
            // With the states in the outputs, the workspace is empty on every device.
            assert!(
                forward_workspace_layout(&dev, &small, bf16, &cfg(true, 128))
                    .unwrap()
                    .is_empty()
            );
            assert!(!chunk_states_optional(&dev, &small, bf16, &cfg(true, 128)).unwrap());
        }
    }
}
