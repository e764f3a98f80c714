//! The forward pass: chunk states, then chunk outputs (TFLA).
//!
//! Notation: B batch, NH heads, S steps, DQK / DHV head dims, L chunk size, NC = ceil(S/L).
//! Inputs q, k (B, NH, S, DQK), v (B, NH, S, DHV) in bf16 or f16 (tensor-core kernels) or f32
//! (the f32 recurrence: slower, no 16-bit rounding); gate pre-activations ĩ, f̃
//! (B, NH, S) f32; optional initial states C̃0 (B, NH, DQK, DHV), ñ0 (B, NH, DQK), m0 (B, NH)
//! f32. Outputs h (B, NH, S, DHV) in the input dtype and the final states in f32.
//!
//! State pool (serving engines, [`crate::slots`]): instead of c0, n0, m0, a pool of states
//! (num_slots, NH, …) and one slot per batch row; row b starts from slot `slots[b]` and its final
//! states overwrite that slot (the output's c, n, m are then not written). The kernels read
//! and write the pool in place, race-free: each thread of the state kernel reads its elements
//! of C̃0 before it writes the same elements of the final C̃, and ñ0, m0 (which every block of
//! a head needs, but one block writes at the end) are copied into the chunk states at chunk 0
//! by the launch before (`kernels/src/mlstm/common/slots.rs`).
use crate::config::{Dims, MlstmConfig};
use crate::error::{Error, Result};
use crate::launch;
use crate::runtime::Runtime;
use crate::slots::{PoolSlots, Slots, StatePool};
use crate::tensor::{Dtype, Tensor, expect_shape};
use crate::variant::Variant;
use cust::sys::CUstream;
pub use tfla_params::fwd::FwdPointers;
use tfla_params::fwd::{self, FwdParams};
use tfla_params::{Dtype as KDtype, Gates, Path};

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
    /// A state pool and the slot of each batch row, instead of c0, n0, m0 (giving both is an
    /// error): the initial states come from the rows' slots and the final states overwrite
    /// them, in place through this shared borrow (device memory, like every tensor a kernel
    /// writes). Nothing else may use those slots until the forward's kernels have run.
    pub pool: Option<PoolSlots<'a>>,
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
            pool: None,
        }
    }

    /// These inputs with a state pool: batch row b starts from slot `slots[b]` of `pool` and
    /// its final states overwrite that slot.
    pub fn with_pool(self, pool: &'a StatePool, slots: &'a Slots) -> Self {
        MlstmInputs {
            pool: Some(PoolSlots { pool, slots }),
            ..self
        }
    }

    /// Checks every shape and dtype once; the passes below the public entry points take the
    /// result instead of checking again.
    pub fn check(&self) -> Result<CheckedInputs<'a>> {
        Ok(CheckedInputs {
            inputs: *self,
            dims: self.dims()?,
            dtype: self.q.dtype(),
        })
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
        if let Some(pool) = &self.pool {
            let given: Vec<&str> = [("c0", self.c0), ("n0", self.n0), ("m0", self.m0)]
                .iter()
                .filter_map(|(name, t)| t.map(|_| *name))
                .collect();
            if !given.is_empty() {
                return Err(Error::Invalid {
                    arg: "pool",
                    value: format!("given with {}", given.join(", ")),
                    reason: "the pool supplies the initial states: give a pool or c0, n0, m0, \
                             not both",
                });
            }
            pool.check(b, nh, dims.dqk, dims.dhv)?;
        }
        Ok(dims)
    }
}

/// Inputs whose shapes and dtypes [`MlstmInputs::check`] has checked, with the dimensions and
/// the input dtype they imply.
#[derive(Clone, Copy)]
pub struct CheckedInputs<'a> {
    inputs: MlstmInputs<'a>,
    dims: Dims,
    dtype: Dtype,
}

impl<'a> CheckedInputs<'a> {
    pub fn inputs(&self) -> &MlstmInputs<'a> {
        &self.inputs
    }
    pub fn dims(&self) -> Dims {
        self.dims
    }
    /// The dtype of q, k, v.
    pub fn dtype(&self) -> Dtype {
        self.dtype
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
            pool: None,
        }
    }
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
    pooled: bool,
}

/// What a forward pass writes, as (name in [`FwdPointers`], dtype, shape), in the order of
/// [`MlstmOutputs`]' fields: h, the final states, the chunk states, the gate vectors and, with
/// `cfg.row_stats`, the row statistics. Without `finals` (a forward into a state pool) the final
/// states are empty (shape `[0]`). What [`MlstmOutputs::alloc`] allocates, and what a framework
/// that owns its buffers allocates for [`mlstm_fwd_raw`].
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
    let mut layout = vec![
        ("h", dtype, vec![b, nh, s, dhv]),
        ("c_final", f32_, fin(vec![b, nh, dqk, dhv])),
        ("n_final", f32_, fin(vec![b, nh, dqk])),
        ("m_final", f32_, fin(vec![b, nh])),
        ("c_states", dtype, vec![b, nh, nc, dqk, dhv]),
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
        let mut tensors = output_layout(dims, dtype, cfg, finals)?
            .into_iter()
            .map(|(_, dt, shape)| Tensor::uninit(rt, dt, &shape));
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
    /// released chunk states pass with `released_ok` (a backward recomputes them).
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
        // Released states (`release_chunk_states`) are for a backward only.
        if !(released_ok && self.states.released()) {
            expect_shape("states.c", &self.states.c, &[b, nh, nc, dqk, dhv])?;
        }
        if self.states.c.dtype() != dtype {
            return Err(Error::Dtype {
                arg: "states.c",
                expected: dtype.name(),
                got: self.states.c.dtype(),
            });
        }
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

/// Runs the forward pass, allocating the outputs (with a state pool, c, n, m empty: the final
/// states go to the pool).
pub fn mlstm_fwd(rt: &Runtime, inputs: &MlstmInputs, cfg: &MlstmConfig) -> Result<MlstmOutputs> {
    fwd_checked(rt, &inputs.check()?, cfg)
}

/// [`mlstm_fwd`] on checked inputs.
pub(crate) fn fwd_checked(
    rt: &Runtime,
    inputs: &CheckedInputs,
    cfg: &MlstmConfig,
) -> Result<MlstmOutputs> {
    let finals = inputs.inputs.pool.is_none();
    let mut out = MlstmOutputs::alloc_with(rt, &inputs.dims, inputs.dtype, cfg, finals)?;
    fwd_into_checked(rt, inputs, cfg, &mut out)?;
    Ok(out)
}

/// Runs the forward pass into caller-allocated outputs (see [`MlstmOutputs::alloc`]). With a
/// state pool, c, n, m are neither checked nor written.
pub fn mlstm_fwd_into(
    rt: &Runtime,
    inputs: &MlstmInputs,
    cfg: &MlstmConfig,
    out: &mut MlstmOutputs,
) -> Result<()> {
    fwd_into_checked(rt, &inputs.check()?, cfg, out)
}

/// [`mlstm_fwd_into`] on checked inputs.
fn fwd_into_checked(
    rt: &Runtime,
    checked: &CheckedInputs,
    cfg: &MlstmConfig,
    out: &mut MlstmOutputs,
) -> Result<()> {
    // Every check (the pool's shapes and slots included) before anything is written.
    let (inputs, dims, dtype) = (&checked.inputs, checked.dims, checked.dtype);
    out.check_shapes(&dims, dtype, cfg, inputs.pool.is_none(), false)?;
    let ptrs = fwd_pointers(inputs, out);
    out.pooled = inputs.pool.is_some();
    // SAFETY: every pointer comes from a live tensor whose shape and dtype were checked
    // against `dims` (inputs and the pool by `MlstmInputs::check`, outputs by `check_shapes`);
    // cuMemAlloc aligns them; the slots were checked against B and the pool (in range,
    // distinct), so the pool is read and written in place, one slot per row.
    unsafe { mlstm_fwd_raw(rt, rt.raw_stream(), &ptrs, dims, dtype, cfg) }
}

/// The device addresses of `inputs` and `out`, as [`mlstm_fwd_raw`] takes them. With a state
/// pool the initial and the final states are the pool's tensors, indexed by `slots`.
pub fn fwd_pointers(inputs: &MlstmInputs, out: &MlstmOutputs) -> FwdPointers {
    let ptr = |t: Option<&Tensor>| t.map_or(0, Tensor::device_ptr);
    let stats =
        |f: fn(&RowStats) -> &Tensor| out.row_stats.as_ref().map_or(0, |r| f(r).device_ptr());
    if let Some(PoolSlots { pool, slots }) = inputs.pool {
        let (c, n, m) = (
            pool.c.device_ptr(),
            pool.n.device_ptr(),
            pool.m.device_ptr(),
        );
        return FwdPointers {
            c0: c,
            n0: n,
            m0: m,
            c_final: c,
            n_final: n,
            m_final: m,
            slots: slots.device_ptr(),
            ..fwd_pointers(
                &MlstmInputs {
                    pool: None,
                    ..*inputs
                },
                out,
            )
        };
    }
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
        slots: 0,
        seq_chunks: 0,
    }
}

/// The forward pass on caller-owned device memory, launched on `stream` (for frameworks that
/// own their buffers). Validates the dimensions, config and pointer alignment; returns once
/// the kernels are queued.
///
/// With `ptrs.slots` (B u32), c0, n0, m0 and c_final, n_final, m_final are indexed by
/// `slots[b]·NH + h` instead of b·NH + h (a state pool: [`FwdPointers::slots`]).
///
/// # Safety
/// Every non-zero pointer addresses a live allocation of the runtime's context, large enough
/// for its tensor at `dims` (and the chunk count NC = ceil(S / L) of `cfg`; with slots, the
/// states for the pool's num_slots), holding `dtype` (q, k, v, h, c_states) or f32 (everything
/// else; slots u32); slots, if given, are B values below num_slots, no two equal
/// ([`crate::slots::check_slots`]); outputs do not overlap inputs or each other, except that
/// each final state may be the memory of its initial state (c_final = c0, n_final = n0,
/// m_final = m0: updated in place).
pub unsafe fn mlstm_fwd_raw(
    rt: &Runtime,
    stream: CUstream,
    ptrs: &FwdPointers,
    dims: Dims,
    dtype: Dtype,
    cfg: &MlstmConfig,
) -> Result<()> {
    launch::check_not_packed(ptrs.seq_chunks)?;
    // SAFETY: this function's contract; one sequence per head.
    unsafe { launch_fwd(rt, stream, ptrs, dims, dtype, cfg, 1, false) }
}

/// [`mlstm_fwd_raw`] for `seqs` sequences per head (`ptrs.seq_chunks` their chunk offsets when
/// `seqs` > 1: a packed batch, `crate::varlen`, which has checked the table). With
/// `states_only`, only the state pass (chunk_state, or the f32 recurrence): the chunk states
/// again for a backward whose forward released them (chunk_gates' vectors and the chunk-0 ñ, m
/// are still there; the pass rewrites ñ_k, m_k of the later chunks with the same values).
///
/// # Safety
/// As [`mlstm_fwd_raw`], with the initial and final states (and slots) of `seqs` batch rows.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn launch_fwd(
    rt: &Runtime,
    stream: CUstream,
    ptrs: &FwdPointers,
    dims: Dims,
    dtype: Dtype,
    cfg: &MlstmConfig,
    seqs: u32,
    states_only: bool,
) -> Result<()> {
    dims.validate()?;
    let chunk = cfg.chunk_for(&dims)?;
    let scale = cfg.scale_for(&dims)?;
    let finals = [ptrs.c_final, ptrs.n_final, ptrs.m_final];
    if finals.contains(&0) && finals.iter().any(|&p| p != 0) {
        return Err(Error::Invalid {
            arg: "c_final/n_final/m_final",
            value: format!("{finals:?}"),
            reason: "give all three final-state pointers or none",
        });
    }
    launch::check_pointers(&fwd::pointers(ptrs))?;
    let params = fwd_params(ptrs, &dims, cfg, chunk, scale, seqs);
    let plan = fwd::plan(
        &rt.plan_device(),
        &params,
        kernel_gates(cfg.variant),
        path_of(dtype),
        states_only,
    );
    // SAFETY: pointers per this function's contract; dims, chunk and alignment checked.
    unsafe { launch::run_plan(rt, stream, plan.as_slice(), &params) }
}

/// The forward kernels' parameters for validated `dims`, `cfg` and the chunk size and scale
/// it gives.
pub(crate) fn fwd_params(
    ptrs: &FwdPointers,
    dims: &Dims,
    cfg: &MlstmConfig,
    chunk: usize,
    scale: f32,
    seqs: u32,
) -> FwdParams {
    FwdParams {
        ptr: FwdPointers {
            // Without the normalizer ñ0 is not read: chunk_gates (whose entry serves both
            // mLSTMsig variants) then stores ñ_0 = 0 in the chunk states.
            n0: if cfg.variant.normalizes() { ptrs.n0 } else { 0 },
            ..*ptrs
        },
        bh: dims.bh() as u32,
        nh: dims.nh as u32,
        s: dims.s as u32,
        dqk: dims.dqk as u32,
        dhv: dims.dhv as u32,
        chunk: chunk as u32,
        num_chunks: dims.s.div_ceil(chunk) as u32,
        scale,
        eps: cfg.eps,
        seqs,
    }
}

/// Which kernels run a pass for an input dtype: the tensor cores for 16-bit inputs, the f32
/// recurrences for f32.
pub(crate) fn path_of(dtype: Dtype) -> Path {
    match dtype {
        Dtype::Bf16 => Path::TensorCores(KDtype::Bf16),
        Dtype::F16 => Path::TensorCores(KDtype::F16),
        Dtype::F32 => Path::F32,
    }
}

/// The kernels' gate type parameter for `variant` (entry-point names and `Gates` branches).
pub(crate) fn kernel_gates(variant: Variant) -> Gates {
    match variant {
        Variant::Exp => Gates::Exp,
        Variant::Sig { normalize: true } => Gates::Sig,
        Variant::Sig { normalize: false } => Gates::SigNoNorm,
    }
}
