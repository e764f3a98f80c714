//! The forward pass: chunk states, then chunk outputs (TFLA).
//!
//! Notation: B batch, NH heads, S steps, DQK / DHV head dims, L chunk size, NC = ceil(S/L).
//! Inputs q, k (B, NH, S, DQK), v (B, NH, S, DHV) in bf16 or f16 (tensor-core kernels) or f32
//! (the f32 recurrence: slower, no 16-bit rounding); gate pre-activations ĩ, f̃
//! (B, NH, S) f32; optional initial states C̃0 (B, NH, DQK, DHV), ñ0 (B, NH, DQK), m0 (B, NH)
//! f32. Outputs h (B, NH, S, DHV) in the input dtype and the final states in f32.
use crate::config::{Dims, MlstmConfig};
use crate::error::{Error, Result};
use crate::launch::Launch;
use crate::runtime::Runtime;
use crate::tensor::{Dtype, Tensor};
use crate::variant::Variant;
use cust::stream::Stream;
pub use tfla_params::fwd::FwdPointers;
use tfla_params::fwd::{self, FwdKernel, FwdParams};
use tfla_params::{Dtype as KDtype, Gates};

/// The forward pass's inputs.
#[derive(Clone, Copy)]
pub struct MlstmInputs<'a> {
    pub q: &'a Tensor,
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    /// Input-gate pre-activations ĩ.
    pub i: &'a Tensor,
    /// Forget-gate pre-activations f̃.
    pub f: &'a Tensor,
    pub c0: Option<&'a Tensor>,
    pub n0: Option<&'a Tensor>,
    /// Initial max state (mLSTMexp only; ignored by mLSTMsig, which has none).
    pub m0: Option<&'a Tensor>,
}

impl<'a> MlstmInputs<'a> {
    /// Inputs without initial states.
    pub fn new(q: &'a Tensor, k: &'a Tensor, v: &'a Tensor, i: &'a Tensor, f: &'a Tensor) -> Self {
        MlstmInputs {
            q,
            k,
            v,
            i,
            f,
            c0: None,
            n0: None,
            m0: None,
        }
    }

    /// Dimensions implied by the inputs, after checking every shape and dtype.
    pub fn dims(&self) -> Result<Dims> {
        let q = self.q.shape();
        if q.len() != 4 {
            return Err(Error::Invalid {
                arg: "q",
                value: format!("shape {q:?}"),
                reason: "expected rank 4: (B, NH, S, DQK)",
            });
        }
        let v = self.v.shape();
        let dhv = if v.len() == 4 { v[3] } else { 0 };
        let dims = Dims {
            b: q[0],
            nh: q[1],
            s: q[2],
            dqk: q[3],
            dhv,
        };
        dims.validate()?;
        let (b, nh, s) = (dims.b, dims.nh, dims.s);
        expect_shape("k", self.k, &[b, nh, s, dims.dqk])?;
        expect_shape("v", self.v, &[b, nh, s, dims.dhv])?;
        expect_shape("i", self.i, &[b, nh, s])?;
        expect_shape("f", self.f, &[b, nh, s])?;
        let dtype = self.q.dtype();
        for (arg, t) in [("k", self.k), ("v", self.v)] {
            if t.dtype() != dtype {
                return Err(Error::Dtype {
                    arg,
                    expected: dtype.name(),
                    got: t.dtype(),
                });
            }
        }
        for (arg, t) in [
            ("i", Some(self.i)),
            ("f", Some(self.f)),
            ("c0", self.c0),
            ("n0", self.n0),
            ("m0", self.m0),
        ] {
            if let Some(t) = t
                && t.dtype() != Dtype::F32
            {
                return Err(Error::Dtype {
                    arg,
                    expected: "f32",
                    got: t.dtype(),
                });
            }
        }
        if let Some(c0) = self.c0 {
            expect_shape("c0", c0, &[b, nh, dims.dqk, dims.dhv])?;
        }
        if let Some(n0) = self.n0 {
            expect_shape("n0", n0, &[b, nh, dims.dqk])?;
        }
        if let Some(m0) = self.m0 {
            expect_shape("m0", m0, &[b, nh])?;
        }
        Ok(dims)
    }
}

/// Owned device tensors for the forward pass's inputs (what [`MlstmInputs`] borrows), for
/// callers that upload host data: the file entry (`io`) and the tests.
#[derive(Debug)]
pub struct DeviceInputs {
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub i: Tensor,
    pub f: Tensor,
    pub c0: Option<Tensor>,
    pub n0: Option<Tensor>,
    pub m0: Option<Tensor>,
}

impl DeviceInputs {
    /// The borrowed view the forward calls take.
    pub fn as_inputs(&self) -> MlstmInputs<'_> {
        MlstmInputs {
            q: &self.q,
            k: &self.k,
            v: &self.v,
            i: &self.i,
            f: &self.f,
            c0: self.c0.as_ref(),
            n0: self.n0.as_ref(),
            m0: self.m0.as_ref(),
        }
    }
}

pub(crate) fn expect_shape(arg: &'static str, t: &Tensor, expected: &[usize]) -> Result<()> {
    if t.shape() != expected {
        return Err(Error::Shape {
            arg,
            expected: expected.to_vec(),
            got: t.shape().to_vec(),
        });
    }
    Ok(())
}

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
    /// Final states: (B, NH, DQK, DHV), (B, NH, DQK), (B, NH) f32.
    pub c: Tensor,
    pub n: Tensor,
    pub m: Tensor,
    pub states: ChunkStates,
    pub gates: ChunkGates,
    pub row_stats: Option<RowStats>,
}

impl MlstmOutputs {
    /// Allocates outputs for `dims` (contents unspecified until a forward pass writes them).
    pub fn alloc(rt: &Runtime, dims: &Dims, dtype: Dtype, cfg: &MlstmConfig) -> Result<Self> {
        let Dims { b, nh, s, dqk, dhv } = *dims;
        let chunk = cfg.chunk_for(dims)?;
        let nc = s.div_ceil(chunk);
        let f32_ = Dtype::F32;
        Ok(MlstmOutputs {
            h: Tensor::uninit(rt, dtype, &[b, nh, s, dhv])?,
            c: Tensor::uninit(rt, f32_, &[b, nh, dqk, dhv])?,
            n: Tensor::uninit(rt, f32_, &[b, nh, dqk])?,
            m: Tensor::uninit(rt, f32_, &[b, nh])?,
            states: ChunkStates {
                chunk_size: chunk,
                c: Tensor::uninit(rt, dtype, &[b, nh, nc, dqk, dhv])?,
                n: Tensor::uninit(rt, f32_, &[b, nh, nc, dqk])?,
                m: Tensor::uninit(rt, f32_, &[b, nh, nc])?,
            },
            gates: ChunkGates {
                b: Tensor::uninit(rt, f32_, &[b, nh, nc * chunk])?,
                u: Tensor::uninit(rt, f32_, &[b, nh, nc * chunk])?,
                cm: Tensor::uninit(rt, f32_, &[b, nh, nc * chunk])?,
                g: Tensor::uninit(rt, f32_, &[b, nh, nc])?,
            },
            row_stats: if cfg.row_stats {
                Some(RowStats {
                    m: Tensor::uninit(rt, f32_, &[b, nh, s])?,
                    norm: Tensor::uninit(rt, f32_, &[b, nh, s])?,
                })
            } else {
                None
            },
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

    /// Checks that these outputs were allocated for `dims`, `dtype` and the chunk size of
    /// `cfg` (the forward before writing them, the backward before reading them).
    pub(crate) fn check(&self, dims: &Dims, dtype: Dtype, cfg: &MlstmConfig) -> Result<()> {
        let Dims { b, nh, s, dqk, dhv } = *dims;
        let chunk = cfg.chunk_for(dims)?;
        let nc = s.div_ceil(chunk);
        expect_shape("h", &self.h, &[b, nh, s, dhv])?;
        if self.h.dtype() != dtype {
            return Err(Error::Dtype {
                arg: "h",
                expected: dtype.name(),
                got: self.h.dtype(),
            });
        }
        if self.states.chunk_size != chunk {
            return Err(Error::Invalid {
                arg: "states.chunk_size",
                value: self.states.chunk_size.to_string(),
                reason: "the outputs were allocated for another chunk size",
            });
        }
        expect_shape("states.c", &self.states.c, &[b, nh, nc, dqk, dhv])?;
        if self.states.c.dtype() != dtype {
            return Err(Error::Dtype {
                arg: "states.c",
                expected: dtype.name(),
                got: self.states.c.dtype(),
            });
        }
        let f32s = [
            ("c", &self.c, vec![b, nh, dqk, dhv]),
            ("n", &self.n, vec![b, nh, dqk]),
            ("m", &self.m, vec![b, nh]),
            ("states.n", &self.states.n, vec![b, nh, nc, dqk]),
            ("states.m", &self.states.m, vec![b, nh, nc]),
            ("gates.b", &self.gates.b, vec![b, nh, nc * chunk]),
            ("gates.u", &self.gates.u, vec![b, nh, nc * chunk]),
            ("gates.cm", &self.gates.cm, vec![b, nh, nc * chunk]),
            ("gates.g", &self.gates.g, vec![b, nh, nc]),
        ];
        for (arg, t, shape) in f32s {
            expect_shape(arg, t, &shape)?;
            if t.dtype() != Dtype::F32 {
                return Err(Error::Dtype {
                    arg,
                    expected: "f32",
                    got: t.dtype(),
                });
            }
        }
        match (&self.row_stats, cfg.row_stats) {
            (Some(r), _) => {
                for (arg, t) in [("row_stats.m", &r.m), ("row_stats.norm", &r.norm)] {
                    expect_shape(arg, t, &[b, nh, s])?;
                    // Written and read as f32: a 16-bit tensor of this shape is half the bytes.
                    if t.dtype() != Dtype::F32 {
                        return Err(Error::Dtype {
                            arg,
                            expected: "f32",
                            got: t.dtype(),
                        });
                    }
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

/// Runs the forward pass, allocating the outputs.
pub fn mlstm_fwd(rt: &Runtime, inputs: &MlstmInputs, cfg: &MlstmConfig) -> Result<MlstmOutputs> {
    let dims = inputs.dims()?;
    let mut out = MlstmOutputs::alloc(rt, &dims, inputs.q.dtype(), cfg)?;
    mlstm_fwd_into(rt, inputs, cfg, &mut out)?;
    Ok(out)
}

/// Runs the forward pass into caller-allocated outputs (see [`MlstmOutputs::alloc`]).
pub fn mlstm_fwd_into(
    rt: &Runtime,
    inputs: &MlstmInputs,
    cfg: &MlstmConfig,
    out: &mut MlstmOutputs,
) -> Result<()> {
    let dims = inputs.dims()?;
    let dtype = inputs.q.dtype();
    out.check(&dims, dtype, cfg)?;
    let ptrs = fwd_pointers(inputs, out);
    if !cfg.variant.normalizes() {
        // Without the normalizer no kernel forms ñ: hand back zeros rather than stale memory.
        out.n.fill_zero_on(rt.stream())?;
        out.states.n.fill_zero_on(rt.stream())?;
        if let Some(r) = &mut out.row_stats {
            r.norm.fill_zero_on(rt.stream())?;
        }
    }
    // SAFETY: every pointer comes from a live tensor whose shape and dtype were checked
    // against `dims` above (inputs by `dims()`, outputs by `check`); cuMemAlloc aligns them.
    unsafe { mlstm_fwd_raw(rt, rt.stream(), &ptrs, dims, dtype, cfg) }
}

/// The device addresses of `inputs` and `out`, as [`mlstm_fwd_raw`] takes them.
pub fn fwd_pointers(inputs: &MlstmInputs, out: &MlstmOutputs) -> FwdPointers {
    let ptr = |t: Option<&Tensor>| t.map_or(0, Tensor::device_ptr);
    let stats =
        |f: fn(&RowStats) -> &Tensor| out.row_stats.as_ref().map_or(0, |r| f(r).device_ptr());
    FwdPointers {
        q: inputs.q.device_ptr(),
        k: inputs.k.device_ptr(),
        v: inputs.v.device_ptr(),
        i: inputs.i.device_ptr(),
        f: inputs.f.device_ptr(),
        c0: ptr(inputs.c0),
        n0: ptr(inputs.n0),
        m0: ptr(inputs.m0),
        c_states: out.states.c.device_ptr(),
        n_states: out.states.n.device_ptr(),
        m_states: out.states.m.device_ptr(),
        c_final: out.c.device_ptr(),
        n_final: out.n.device_ptr(),
        m_final: out.m.device_ptr(),
        h: out.h.device_ptr(),
        gate_b: out.gates.b.device_ptr(),
        gate_u: out.gates.u.device_ptr(),
        gate_cm: out.gates.cm.device_ptr(),
        gate_g: out.gates.g.device_ptr(),
        m_rows: stats(|r| &r.m),
        norm_rows: stats(|r| &r.norm),
    }
}

/// The forward pass on caller-owned device memory, launched on `stream` (for frameworks that
/// own their buffers). Validates the dimensions, config and pointer alignment; returns once
/// the kernels are queued.
///
/// # Safety
/// Every non-zero pointer addresses a live allocation of the runtime's context, large enough
/// for its tensor at `dims` (and the chunk count NC = ceil(S / L) of `cfg`), holding `dtype`
/// (q, k, v, h, c_states) or f32 (everything else); outputs do not overlap inputs or each other.
pub unsafe fn mlstm_fwd_raw(
    rt: &Runtime,
    stream: &Stream,
    ptrs: &FwdPointers,
    dims: Dims,
    dtype: Dtype,
    cfg: &MlstmConfig,
) -> Result<()> {
    dims.validate()?;
    let chunk = cfg.chunk_for(&dims)?;
    let scale = cfg.scale_for(&dims)?;
    let required = [
        ("q", ptrs.q),
        ("k", ptrs.k),
        ("v", ptrs.v),
        ("i", ptrs.i),
        ("f", ptrs.f),
    ];
    let required_out = [
        ("h", ptrs.h),
        ("c_states", ptrs.c_states),
        ("n_states", ptrs.n_states),
        ("m_states", ptrs.m_states),
        ("gate_b", ptrs.gate_b),
        ("gate_u", ptrs.gate_u),
        ("gate_cm", ptrs.gate_cm),
        ("gate_g", ptrs.gate_g),
    ];
    for (arg, p) in required.iter().chain(required_out.iter()) {
        if *p == 0 {
            return Err(Error::Invalid {
                arg,
                value: "null".into(),
                reason: "required pointer",
            });
        }
    }
    let finals = [ptrs.c_final, ptrs.n_final, ptrs.m_final];
    if finals.contains(&0) && finals.iter().any(|&p| p != 0) {
        return Err(Error::Invalid {
            arg: "c_final/n_final/m_final",
            value: format!("{finals:?}"),
            reason: "give all three final-state pointers or none",
        });
    }
    // 16-byte vector accesses on q, k, v, C̃ states and C̃0; 4-byte on the rest.
    let aligned = [
        ("q", ptrs.q, 16),
        ("k", ptrs.k, 16),
        ("v", ptrs.v, 16),
        ("h", ptrs.h, 4),
        ("c0", ptrs.c0, 16),
        ("c_states", ptrs.c_states, 16),
        ("c_final", ptrs.c_final, 8),
        ("i", ptrs.i, 4),
        ("f", ptrs.f, 4),
        ("n0", ptrs.n0, 4),
        ("m0", ptrs.m0, 4),
        ("n_states", ptrs.n_states, 4),
        ("m_states", ptrs.m_states, 4),
        ("n_final", ptrs.n_final, 4),
        ("m_final", ptrs.m_final, 4),
        ("gate_b", ptrs.gate_b, 4),
        ("gate_u", ptrs.gate_u, 16),
        ("gate_cm", ptrs.gate_cm, 4),
        ("gate_g", ptrs.gate_g, 4),
        ("m_rows", ptrs.m_rows, 4),
        ("norm_rows", ptrs.norm_rows, 4),
    ];
    for (arg, p, align) in aligned {
        if p % align != 0 {
            return Err(Error::Invalid {
                arg,
                value: format!("{p:#x}"),
                reason: "device pointer not aligned (q, k, v, c0, c_states, gate_u: 16 bytes; others 4)",
            });
        }
    }
    let gates = kernel_gates(cfg.variant);
    let params = FwdParams {
        ptr: *ptrs,
        bh: dims.bh() as u32,
        s: dims.s as u32,
        dqk: dims.dqk as u32,
        dhv: dims.dhv as u32,
        chunk: chunk as u32,
        num_chunks: dims.s.div_ceil(chunk) as u32,
        scale,
        eps: cfg.eps,
    };
    let launches = fwd_launches(&params, gates, dtype);
    for l in &launches {
        l.check(rt)?;
    }
    for l in &launches {
        // SAFETY: pointers per this function's contract; dims, chunk and alignment checked.
        unsafe { l.run(rt, stream, &params)? };
    }
    Ok(())
}

/// The kernels' gate type parameter for `variant` (entry-point names and `Gates` branches).
pub(crate) fn kernel_gates(variant: Variant) -> Gates {
    match variant {
        Variant::Exp => Gates::Exp,
        Variant::Sig { normalize: true } => Gates::Sig,
        Variant::Sig { normalize: false } => Gates::SigNoNorm,
    }
}

/// The launches of the forward pass, in order: the gate vectors, then for 16-bit inputs the
/// chunk states and chunk outputs on the tensor cores, for f32 inputs the f32 recurrence (which
/// writes the same outputs).
fn fwd_launches(p: &FwdParams, gates: Gates, dtype: Dtype) -> Vec<Launch> {
    let chunk_gates = Launch {
        // The gate kernel has no element type; its name does not depend on the one passed.
        name: fwd::entry_name(FwdKernel::ChunkGates, gates, KDtype::Bf16),
        grid: fwd::gates::grid(p),
        threads: fwd::gates::THREADS,
        smem: fwd::gates::smem_bytes(p.chunk),
    };
    let kdtype = match dtype {
        Dtype::Bf16 => KDtype::Bf16,
        Dtype::F16 => KDtype::F16,
        Dtype::F32 => {
            let recurrent = Launch {
                name: fwd::recurrent::entry_name(gates),
                grid: fwd::recurrent::grid(p),
                threads: fwd::recurrent::THREADS,
                smem: fwd::recurrent::smem_bytes(p.dqk),
            };
            return vec![chunk_gates, recurrent];
        }
    };
    vec![
        chunk_gates,
        Launch {
            name: fwd::entry_name(FwdKernel::ChunkState, gates, kdtype),
            grid: fwd::state::grid(p),
            threads: fwd::state::THREADS,
            smem: fwd::state::smem_bytes(p.chunk),
        },
        Launch {
            name: fwd::entry_name(FwdKernel::ChunkOutput, gates, kdtype),
            grid: fwd::output::grid(p),
            threads: fwd::output::THREADS,
            smem: fwd::output::smem_bytes(p.chunk, p.dqk),
        },
    ]
}
