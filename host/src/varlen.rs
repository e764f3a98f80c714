//! Packed variable-length batches (`cu_seqlens`, as FLA takes them): N sequences of different
//! lengths in one call, forward and backward, each with its own optional initial state and its
//! own final state.
//!
//! Layout: q, k (T, NH, DQK), v (T, NH, DHV), ĩ, f̃ (T, NH), sequence n at steps
//! cu_seqlens[n]..cu_seqlens[n + 1]; initial and final states (N, NH, …) as the forward's
//! (B, NH, …) with a sequence in the place of a batch row.
//!
//! How (`tfla_params::seqs`): the inputs are repacked per head, each sequence starting at a
//! chunk boundary and padded to whole chunks with steps that leave every state unchanged, so
//! no chunk mixes two sequences; the chunk-local kernels run as they are and the kernels that
//! carry a state across chunks walk each sequence's chunks from its own initial state to its
//! own final state. Results equal running each sequence alone. The cost over one batch of the
//! same T: at most L − 1 padding steps per sequence (pick L = 64 for many short sequences), the
//! repacking copies, and the padded copies of the inputs, which the outputs keep for the
//! backward pass.
use crate::backward::{
    BwdWorkspace, MlstmGradOutputs, MlstmGrads, bwd_pointers, expect_initial_grad, launch_bwd,
};
use crate::config::{Dims, MlstmConfig};
use crate::error::{Error, Result};
use crate::forward::{MlstmInputs, MlstmOutputs, fwd_pointers, launch_fwd};
use crate::launch::{self, Launch};
use crate::runtime::Runtime;
use crate::tensor::{self, Dtype, Tensor, expect_dtype, expect_shape};
use crate::variant::GradMode;
use cust::memory::DeviceBuffer;
use tfla_params::seqs::{PAD_F, PAD_I, PackParams, pack};

/// A packed batch of N sequences (borrowed device tensors; `cu_seqlens` on the host, where the
/// checks and the launch sizes need it).
#[derive(Clone, Copy)]
pub struct VarlenInputs<'a> {
    /// q, k: (T, NH, DQK); v: (T, NH, DHV); one input dtype.
    pub q: &'a Tensor,
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    /// ĩ, f̃: (T, NH) f32.
    pub i: &'a Tensor,
    pub f: &'a Tensor,
    /// N + 1 offsets: 0, then strictly increasing (every sequence has a step), ending at T.
    pub cu_seqlens: &'a [u32],
    /// Initial states per sequence, (N, NH, DQK, DHV), (N, NH, DQK), (N, NH) f32; None: zeros.
    pub c0: Option<&'a Tensor>,
    pub n0: Option<&'a Tensor>,
    pub m0: Option<&'a Tensor>,
}

/// The sizes of a packed batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VarlenDims {
    /// T: steps of all sequences.
    pub total: usize,
    /// N: sequences.
    pub seqs: usize,
    pub nh: usize,
    pub dqk: usize,
    pub dhv: usize,
}

impl<'a> VarlenInputs<'a> {
    /// Inputs without initial states.
    pub fn new(
        q: &'a Tensor,
        k: &'a Tensor,
        v: &'a Tensor,
        i: &'a Tensor,
        f: &'a Tensor,
        cu_seqlens: &'a [u32],
    ) -> Self {
        VarlenInputs {
            q,
            k,
            v,
            i,
            f,
            cu_seqlens,
            c0: None,
            n0: None,
            m0: None,
        }
    }

    /// Checks every shape, dtype and offset; returns the sizes.
    pub fn dims(&self) -> Result<VarlenDims> {
        let q = self.q.shape();
        if q.len() != 3 {
            return Err(Error::Invalid {
                arg: "q",
                value: format!("shape {q:?}"),
                reason: "expected rank 3: (T, NH, DQK)",
            });
        }
        let (total, nh, dqk) = (q[0], q[1], q[2]);
        let dhv = match self.v.shape() {
            [_, _, d] => *d,
            _ => 0,
        };
        let seqs = check_cu_seqlens(self.cu_seqlens, total)?;
        // The head dims and NH as the forward checks them (S is checked after padding).
        Dims {
            b: 1,
            nh,
            s: total,
            dqk,
            dhv,
        }
        .validate()?;
        expect_shape("k", self.k, &[total, nh, dqk])?;
        expect_shape("v", self.v, &[total, nh, dhv])?;
        expect_shape("i", self.i, &[total, nh])?;
        expect_shape("f", self.f, &[total, nh])?;
        let dtype = self.q.dtype();
        for (arg, t) in [("k", self.k), ("v", self.v)] {
            expect_dtype(arg, t, dtype)?;
        }
        let states = [
            ("c0", self.c0, vec![seqs, nh, dqk, dhv]),
            ("n0", self.n0, vec![seqs, nh, dqk]),
            ("m0", self.m0, vec![seqs, nh]),
        ];
        for (arg, t) in [("i", self.i), ("f", self.f)] {
            expect_dtype(arg, t, Dtype::F32)?;
        }
        for (arg, t, shape) in states {
            if let Some(t) = t {
                check_sequences(arg, t, seqs)?;
                expect_shape(arg, t, &shape)?;
                expect_dtype(arg, t, Dtype::F32)?;
            }
        }
        Ok(VarlenDims {
            total,
            seqs,
            nh,
            dqk,
            dhv,
        })
    }
}

/// Checks the offsets against T; returns N.
fn check_cu_seqlens(cu: &[u32], total: usize) -> Result<usize> {
    let bad = |value: String, reason| {
        Err(Error::Invalid {
            arg: "cu_seqlens",
            value,
            reason,
        })
    };
    if cu.len() < 2 {
        return bad(
            format!("{} offsets", cu.len()),
            "needs N + 1 ≥ 2 offsets for N sequences",
        );
    }
    if cu[0] != 0 {
        return bad(format!("cu_seqlens[0] = {}", cu[0]), "must start at 0");
    }
    if let Some(n) = cu.windows(2).position(|w| w[1] <= w[0]) {
        return bad(
            format!(
                "cu_seqlens[{}] = {} ≤ cu_seqlens[{n}] = {}",
                n + 1,
                cu[n + 1],
                cu[n]
            ),
            "offsets must increase strictly (every sequence needs at least one step)",
        );
    }
    let last = cu[cu.len() - 1] as usize;
    if last != total {
        return bad(
            format!("cu_seqlens[{}] = {last} with T = {total}", cu.len() - 1),
            "the last offset must be T, the steps of q",
        );
    }
    let seqs = cu.len() - 1;
    // One block row per sequence on a grid axis (`tfla_params::seqs`).
    if seqs > 65_535 {
        return bad(
            format!("{seqs} sequences"),
            "at most 65535 sequences per call",
        );
    }
    Ok(seqs)
}

/// A per-sequence tensor whose leading dimension is not N: named as a length mismatch of
/// `cu_seqlens` (the shape check would name the tensor's whole shape).
fn check_sequences(arg: &'static str, t: &Tensor, seqs: usize) -> Result<()> {
    match t.shape().first() {
        Some(&n) if n != seqs => Err(Error::Invalid {
            arg: "cu_seqlens",
            value: format!("N + 1 = {} offsets, `{arg}` holds {n} sequences", seqs + 1),
            reason: "cu_seqlens needs one more entry than there are sequences",
        }),
        _ => Ok(()),
    }
}

/// A repacking destination of the right shape and dtype (the outputs' own tensors, so a
/// mismatch means outputs allocated for another batch).
fn check_pair(arg: &'static str, src: &Tensor, dst: &Tensor, shape: &[usize]) -> Result<()> {
    expect_shape(arg, dst, shape)?;
    expect_dtype(arg, dst, src.dtype())
}

/// The padded per-head layout of one packed batch at one chunk size: the host offsets and
/// their device copies (the kernels read them).
#[derive(Debug)]
pub struct VarlenLayout {
    chunk: usize,
    cu: Vec<u32>,
    /// T': padded steps (a multiple of the chunk size).
    padded: usize,
    nh: usize,
    dev_cu: DeviceBuffer<u32>,
    dev_chunks: DeviceBuffer<u32>,
}

impl VarlenLayout {
    fn new(cu: &[u32], chunk: usize, nh: usize) -> Result<Self> {
        let mut chunks = Vec::with_capacity(cu.len());
        chunks.push(0u32);
        for w in cu.windows(2) {
            let len = (w[1] - w[0]) as usize;
            chunks.push(chunks[chunks.len() - 1] + len.div_ceil(chunk) as u32);
        }
        let padded = chunks[chunks.len() - 1] as usize * chunk;
        let mut dev_cu = tensor::alloc("cu_seqlens", cu.len())?;
        tensor::upload(&mut dev_cu, cu)?;
        let mut dev_chunks = tensor::alloc("seq_chunks", chunks.len())?;
        tensor::upload(&mut dev_chunks, &chunks)?;
        Ok(VarlenLayout {
            chunk,
            cu: cu.to_vec(),
            padded,
            nh,
            dev_cu,
            dev_chunks,
        })
    }

    /// N.
    fn seqs(&self) -> usize {
        self.cu.len() - 1
    }

    /// The padded batch's dims: one batch row of T' steps.
    fn dims(&self, d: &VarlenDims) -> Dims {
        Dims {
            b: 1,
            nh: d.nh,
            s: self.padded,
            dqk: d.dqk,
            dhv: d.dhv,
        }
    }

    /// The padded shape of a packed (T, NH, ·) tensor: (1, NH, T', ·).
    fn padded_shape(&self, packed: &[usize]) -> Vec<usize> {
        [1, self.nh, self.padded]
            .iter()
            .chain(&packed[2..])
            .copied()
            .collect()
    }

    /// The packed shape of a padded (1, NH, T', ·) tensor: (T, NH, ·).
    fn packed_shape(&self, padded: &[usize]) -> Vec<usize> {
        let total = self.cu[self.cu.len() - 1] as usize;
        [total, self.nh]
            .iter()
            .chain(&padded[3..])
            .copied()
            .collect()
    }

    /// `src` (T, NH, ·) into `dst` (1, NH, T', ·), `pad` in the padding steps.
    fn pack_into(&self, rt: &Runtime, src: &Tensor, dst: &Tensor, pad: f32) -> Result<()> {
        check_pair("padded", src, dst, &self.padded_shape(src.shape()))?;
        // SAFETY: `src` is (T, NH, ·) of the batch these offsets were checked against, `dst`
        // the padded layout of the same rows (checked above).
        unsafe { self.repack(rt, src, dst, pad.to_bits(), false) }
    }

    /// `src` (1, NH, T', ·) into `dst` (T, NH, ·): the packed steps.
    fn unpack_into(&self, rt: &Runtime, src: &Tensor, dst: &Tensor) -> Result<()> {
        check_pair("packed", src, dst, &self.packed_shape(src.shape()))?;
        // SAFETY: as in `pack_into`, the other way round.
        unsafe { self.repack(rt, src, dst, 0, true) }
    }

    /// # Safety
    /// `src` and `dst` hold the two layouts of the same rows of this batch.
    unsafe fn repack(
        &self,
        rt: &Runtime,
        src: &Tensor,
        dst: &Tensor,
        pad: u32,
        unpack: bool,
    ) -> Result<()> {
        let total = self.cu[self.cu.len() - 1] as usize;
        let row_bytes =
            src.numel() * src.dtype().size() / (self.nh * if unpack { self.padded } else { total });
        let words = row_bytes / 4;
        let p = PackParams {
            src: src.device_ptr(),
            dst: dst.device_ptr(),
            cu_seqlens: self.dev_cu.as_device_ptr().as_raw(),
            seq_chunks: self.dev_chunks.as_device_ptr().as_raw(),
            seqs: self.seqs() as u32,
            nh: self.nh as u32,
            chunk: self.chunk as u32,
            total: total as u32,
            padded: self.padded as u32,
            words: words as u32,
            pad,
            unpack: unpack as u32,
        };
        let kernel = Launch {
            name: pack::ENTRY,
            grid: pack::grid(&p),
            threads: pack::THREADS,
            smem: 0,
        };
        // SAFETY: the caller's contract; offsets checked on the host.
        unsafe { launch::run_plan(rt, rt.raw_stream(), &[kernel], &p) }
    }

    fn seq_chunks(&self) -> u64 {
        self.dev_chunks.as_device_ptr().as_raw()
    }
}

/// The padded copies of the inputs (kept for the backward pass).
#[derive(Debug)]
pub struct PaddedInputs {
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub i: Tensor,
    pub f: Tensor,
}

impl PaddedInputs {
    fn as_inputs(&self) -> MlstmInputs<'_> {
        MlstmInputs::new(&self.q, &self.k, &self.v, &self.i, &self.f)
    }
}

/// The forward pass's outputs for a packed batch.
#[derive(Debug)]
pub struct VarlenOutputs {
    /// (T, NH, DHV) in the input dtype.
    pub h: Tensor,
    /// Final states per sequence: (N, NH, DQK, DHV), (N, NH, DQK), (N, NH) f32.
    pub c: Tensor,
    pub n: Tensor,
    pub m: Tensor,
    /// The forward on the padded layout (chunk states, gate vectors, row statistics, padded
    /// h) and its inputs: what the backward pass reads.
    pub padded: MlstmOutputs,
    pub padded_inputs: PaddedInputs,
    pub layout: VarlenLayout,
}

/// The chunk size of a packed batch: `cfg`'s, or the default for one batch row of T steps.
fn chunk_of(d: &VarlenDims, cfg: &MlstmConfig) -> Result<usize> {
    cfg.chunk_for(&Dims {
        b: 1,
        nh: d.nh,
        s: d.total,
        dqk: d.dqk,
        dhv: d.dhv,
    })
}

impl VarlenOutputs {
    /// Allocates outputs for the batch of `inp` (its offsets, shapes and dtype) at the chunk
    /// size of `cfg`; contents unspecified until a forward pass writes them. Reusable for every
    /// call with the same offsets ([`mlstm_fwd_varlen_into`]).
    pub fn alloc(rt: &Runtime, inp: &VarlenInputs, cfg: &MlstmConfig) -> Result<Self> {
        let d = inp.dims()?;
        let chunk = chunk_of(&d, cfg)?;
        let cfg = cfg.with_chunk_size(chunk);
        let layout = VarlenLayout::new(inp.cu_seqlens, chunk, d.nh)?;
        let pdims = layout.dims(&d);
        pdims.validate()?;
        let dtype = inp.q.dtype();
        let padded_like =
            |t: &Tensor| Tensor::uninit(rt, t.dtype(), &layout.padded_shape(t.shape()));
        let padded_inputs = PaddedInputs {
            q: padded_like(inp.q)?,
            k: padded_like(inp.k)?,
            v: padded_like(inp.v)?,
            i: padded_like(inp.i)?,
            f: padded_like(inp.f)?,
        };
        let (n, nh, dqk, dhv) = (d.seqs, d.nh, d.dqk, d.dhv);
        let f32_ = Dtype::F32;
        Ok(VarlenOutputs {
            h: Tensor::uninit(rt, dtype, &[d.total, nh, dhv])?,
            c: Tensor::uninit(rt, f32_, &[n, nh, dqk, dhv])?,
            n: Tensor::uninit(rt, f32_, &[n, nh, dqk])?,
            m: Tensor::uninit(rt, f32_, &[n, nh])?,
            padded: MlstmOutputs::alloc_with(rt, &pdims, dtype, &cfg, false)?,
            padded_inputs,
            layout,
        })
    }

    /// Checks that these outputs belong to the batch of `inp` at `cfg`'s chunk size; returns
    /// the padded dims and the config with the chunk size fixed.
    fn check(
        &self,
        d: &VarlenDims,
        inp: &VarlenInputs,
        cfg: &MlstmConfig,
    ) -> Result<(Dims, MlstmConfig)> {
        let layout = &self.layout;
        if layout.cu != inp.cu_seqlens {
            return Err(Error::Invalid {
                arg: "cu_seqlens",
                value: format!("{} offsets", inp.cu_seqlens.len()),
                reason: "differ from those the outputs were allocated (or computed) for",
            });
        }
        if cfg.chunk_size.is_some_and(|c| c != layout.chunk) {
            return Err(Error::Invalid {
                arg: "chunk_size",
                value: format!("{:?}", cfg.chunk_size),
                reason: "differs from the chunk size the outputs were allocated for",
            });
        }
        let cfg = cfg.with_chunk_size(layout.chunk);
        let pdims = layout.dims(d);
        let dtype = inp.q.dtype();
        // Outputs without chunk states pass here: the forward's launch refuses them where it
        // needs them, the backward (`check_bwd`) always.
        self.padded.check_shapes(&pdims, dtype, &cfg, false, true)?;
        expect_shape("h", &self.h, &[d.total, d.nh, d.dhv])?;
        expect_dtype("h", &self.h, dtype)?;
        for (arg, t, shape) in [
            ("c", &self.c, vec![d.seqs, d.nh, d.dqk, d.dhv]),
            ("n", &self.n, vec![d.seqs, d.nh, d.dqk]),
            ("m", &self.m, vec![d.seqs, d.nh]),
        ] {
            expect_shape(arg, t, &shape)?;
            expect_dtype(arg, t, Dtype::F32)?;
        }
        Ok((pdims, cfg))
    }
}

/// The forward pass over a packed batch, allocating its outputs. The chunk size is `cfg`'s,
/// or the default for one batch row of T steps.
pub fn mlstm_fwd_varlen(
    rt: &Runtime,
    inp: &VarlenInputs,
    cfg: &MlstmConfig,
) -> Result<VarlenOutputs> {
    let mut out = VarlenOutputs::alloc(rt, inp, cfg)?;
    mlstm_fwd_varlen_into(rt, inp, cfg, &mut out)?;
    Ok(out)
}

/// The forward pass over a packed batch into outputs from [`VarlenOutputs::alloc`] for the
/// same offsets (nothing allocated: a serving loop reuses them).
pub fn mlstm_fwd_varlen_into(
    rt: &Runtime,
    inp: &VarlenInputs,
    cfg: &MlstmConfig,
    out: &mut VarlenOutputs,
) -> Result<()> {
    let d = inp.dims()?;
    let (pdims, cfg) = out.check(&d, inp, cfg)?;
    let layout = &out.layout;
    let pi = &out.padded_inputs;
    layout.pack_into(rt, inp.q, &pi.q, 0.0)?;
    layout.pack_into(rt, inp.k, &pi.k, 0.0)?;
    layout.pack_into(rt, inp.v, &pi.v, 0.0)?;
    layout.pack_into(rt, inp.i, &pi.i, PAD_I)?;
    layout.pack_into(rt, inp.f, &pi.f, PAD_F)?;
    let ptr = |t: Option<&Tensor>| t.map_or(0, Tensor::device_ptr);
    let ptrs = tfla_params::fwd::FwdPointers {
        c0: ptr(inp.c0),
        n0: ptr(inp.n0),
        m0: ptr(inp.m0),
        c_final: out.c.device_ptr(),
        n_final: out.n.device_ptr(),
        m_final: out.m.device_ptr(),
        seq_chunks: layout.seq_chunks(),
        ..fwd_pointers(&pi.as_inputs(), &out.padded)
    };
    // SAFETY: the padded inputs and outputs were checked against `pdims` and this chunk size,
    // the states and offsets against N, NH and the head dims (`dims`, `check`).
    unsafe {
        launch_fwd(
            rt,
            rt.raw_stream(),
            &ptrs,
            pdims,
            inp.q.dtype(),
            &cfg,
            d.seqs as u32,
            false,
        )?
    };
    layout.unpack_into(rt, &out.padded.h, &out.h)
}

/// The gradients of a packed batch, in the packed layout.
#[derive(Debug)]
pub struct VarlenGrads {
    /// dq, dk (T, NH, DQK), dv (T, NH, DHV) in the input dtype; dĩ, df̃ (T, NH) f32.
    pub dq: Tensor,
    pub dk: Tensor,
    pub dv: Tensor,
    pub di: Tensor,
    pub df: Tensor,
    /// Initial-state gradients (N, NH, …) f32, present where the inputs had that state.
    pub dc0: Option<Tensor>,
    pub dn0: Option<Tensor>,
    pub dm0: Option<Tensor>,
    /// The padded gradients and workspace, and the padded dh.
    pub padded: MlstmGrads,
    pub padded_dh: Tensor,
}

impl VarlenGrads {
    /// Allocates gradients for the batch of `inp` and the forward outputs `fwd` (contents
    /// unspecified until a backward pass writes them); reusable as [`VarlenOutputs`].
    pub fn alloc(rt: &Runtime, inp: &VarlenInputs, fwd: &VarlenOutputs) -> Result<Self> {
        let d = inp.dims()?;
        let layout = &fwd.layout;
        let pdims = layout.dims(&d);
        let dtype = inp.q.dtype();
        let (n, nh, s, dqk, dhv) = (d.seqs, d.nh, layout.padded, d.dqk, d.dhv);
        let f32_ = Dtype::F32;
        let opt = |given: bool, shape: &[usize]| -> Result<Option<Tensor>> {
            given.then(|| Tensor::uninit(rt, f32_, shape)).transpose()
        };
        Ok(VarlenGrads {
            dq: Tensor::uninit(rt, dtype, &[d.total, nh, dqk])?,
            dk: Tensor::uninit(rt, dtype, &[d.total, nh, dqk])?,
            dv: Tensor::uninit(rt, dtype, &[d.total, nh, dhv])?,
            di: Tensor::uninit(rt, f32_, &[d.total, nh])?,
            df: Tensor::uninit(rt, f32_, &[d.total, nh])?,
            dc0: opt(inp.c0.is_some(), &[n, nh, dqk, dhv])?,
            dn0: opt(inp.n0.is_some(), &[n, nh, dqk])?,
            dm0: opt(inp.m0.is_some(), &[n, nh])?,
            padded: MlstmGrads {
                dq: Tensor::uninit(rt, dtype, &[1, nh, s, dqk])?,
                dk: Tensor::uninit(rt, dtype, &[1, nh, s, dqk])?,
                dv: Tensor::uninit(rt, dtype, &[1, nh, s, dhv])?,
                di: Tensor::uninit(rt, f32_, &[1, nh, s])?,
                df: Tensor::uninit(rt, f32_, &[1, nh, s])?,
                dc0: None,
                dn0: None,
                dm0: None,
                workspace: BwdWorkspace::alloc_for(rt, &pdims, dtype, layout.chunk, n)?,
            },
            padded_dh: Tensor::uninit(rt, dtype, &[1, nh, s, dhv])?,
        })
    }
}

/// The backward pass over a packed batch, allocating its gradients, from the outputs of a
/// forward on the same inputs and `cfg` (with `row_stats`, which the normalized variants need and
/// which picks the automatic chunk size for a forward+backward).
pub fn mlstm_bwd_varlen(
    rt: &Runtime,
    inp: &VarlenInputs,
    fwd: &VarlenOutputs,
    grad: &MlstmGradOutputs,
    cfg: &MlstmConfig,
    mode: GradMode,
) -> Result<VarlenGrads> {
    // Validate before allocating (the workspace is large).
    check_bwd(inp, fwd, grad, cfg)?;
    let mut grads = VarlenGrads::alloc(rt, inp, fwd)?;
    mlstm_bwd_varlen_into(rt, inp, fwd, grad, cfg, mode, &mut grads)?;
    Ok(grads)
}

/// Everything the backward reads: the inputs, the forward outputs (same batch, chunk size,
/// row statistics where needed) and the upstream gradients.
fn check_bwd(
    inp: &VarlenInputs,
    fwd: &VarlenOutputs,
    grad: &MlstmGradOutputs,
    cfg: &MlstmConfig,
) -> Result<(VarlenDims, Dims, MlstmConfig)> {
    let d = inp.dims()?;
    let (pdims, cfg) = fwd.check(&d, inp, cfg)?;
    if fwd.padded.states.released() {
        return Err(Error::Invalid {
            arg: "fwd.states.c",
            value: "empty".into(),
            reason: "the outputs hold no chunk states (released, or a forward without \
                     row_stats at the heads the one-kernel forward takes): a packed backward \
                     needs a forward with MlstmConfig::row_stats = true",
        });
    }
    if cfg.variant.normalizes() && fwd.padded.row_stats.is_none() {
        return Err(Error::Invalid {
            arg: "fwd.row_stats",
            value: "None".into(),
            reason: "the normalized variants' backward needs the forward's row statistics: \
                     run the forward with MlstmConfig::row_stats = true",
        });
    }
    let (n, nh, dqk, dhv) = (d.seqs, d.nh, d.dqk, d.dhv);
    expect_shape("dh", grad.dh, &[d.total, nh, dhv])?;
    expect_dtype("dh", grad.dh, inp.q.dtype())?;
    let finals = [
        ("dc", grad.dc, vec![n, nh, dqk, dhv]),
        ("dn", grad.dn, vec![n, nh, dqk]),
        ("dm", grad.dm, vec![n, nh]),
    ];
    for (arg, t, shape) in finals {
        if let Some(t) = t {
            check_sequences(arg, t, n)?;
            expect_shape(arg, t, &shape)?;
            expect_dtype(arg, t, Dtype::F32)?;
        }
    }
    Ok((d, pdims, cfg))
}

/// The backward pass over a packed batch into gradients from [`VarlenGrads::alloc`].
pub fn mlstm_bwd_varlen_into(
    rt: &Runtime,
    inp: &VarlenInputs,
    fwd: &VarlenOutputs,
    grad: &MlstmGradOutputs,
    cfg: &MlstmConfig,
    mode: GradMode,
    grads: &mut VarlenGrads,
) -> Result<()> {
    let (d, pdims, cfg) = check_bwd(inp, fwd, grad, cfg)?;
    let (n, dtype) = (d.seqs, inp.q.dtype());
    let layout = &fwd.layout;
    grads.padded.check(
        &rt.plan_device(),
        &fwd.padded_inputs.as_inputs(),
        &pdims,
        dtype,
        layout.chunk,
        n,
    )?;
    for (arg, t, want) in [
        ("dc0", &grads.dc0, inp.c0.map(Tensor::shape)),
        ("dn0", &grads.dn0, inp.n0.map(Tensor::shape)),
        ("dm0", &grads.dm0, inp.m0.map(Tensor::shape)),
    ] {
        expect_initial_grad(arg, t.as_ref(), want)?;
    }
    layout.pack_into(rt, grad.dh, &grads.padded_dh, 0.0)?;
    let ptr = |t: Option<&Tensor>| t.map_or(0, Tensor::device_ptr);
    let ptrs = tfla_params::bwd::BwdPointers {
        c0: ptr(inp.c0),
        n0: ptr(inp.n0),
        m0: ptr(inp.m0),
        c_final: fwd.c.device_ptr(),
        n_final: fwd.n.device_ptr(),
        dc_final: ptr(grad.dc),
        dn_final: ptr(grad.dn),
        dm_final: ptr(grad.dm),
        dc0: ptr(grads.dc0.as_ref()),
        dn0: ptr(grads.dn0.as_ref()),
        dm0: ptr(grads.dm0.as_ref()),
        seq_chunks: layout.seq_chunks(),
        ..bwd_pointers(
            &fwd.padded_inputs.as_inputs(),
            &fwd.padded,
            &MlstmGradOutputs::new(&grads.padded_dh),
            &grads.padded,
        )
    };
    // SAFETY: the padded tensors were checked against `pdims` and the forward's chunk size,
    // the workspace for N sequences; the per-sequence states and gradients against N, NH and
    // the head dims.
    unsafe {
        launch_bwd(
            rt,
            rt.raw_stream(),
            &ptrs,
            pdims,
            dtype,
            &cfg,
            mode,
            n as u32,
        )?
    };
    let p = &grads.padded;
    layout.unpack_into(rt, &p.dq, &grads.dq)?;
    layout.unpack_into(rt, &p.dk, &grads.dk)?;
    layout.unpack_into(rt, &p.dv, &grads.dv)?;
    layout.unpack_into(rt, &p.di, &grads.di)?;
    layout.unpack_into(rt, &p.df, &grads.df)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_checked() {
        let arg = |cu: &[u32], t| match check_cu_seqlens(cu, t) {
            Err(Error::Invalid { arg, value, .. }) => (arg, value),
            other => panic!("expected Error::Invalid, got {other:?}"),
        };
        assert_eq!(check_cu_seqlens(&[0, 1, 16, 40], 40).unwrap(), 3);
        assert_eq!(arg(&[0], 0).0, "cu_seqlens");
        assert!(arg(&[1, 5], 5).1.contains("cu_seqlens[0] = 1"));
        assert!(
            arg(&[0, 5, 5, 9], 9)
                .1
                .contains("cu_seqlens[2] = 5 ≤ cu_seqlens[1] = 5")
        );
        assert!(arg(&[0, 7, 3], 3).1.contains("cu_seqlens[2] = 3"));
        assert!(arg(&[0, 5, 9], 10).1.contains("T = 10"));
    }
}
