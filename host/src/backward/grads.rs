//! The backward pass's arguments and results: the upstream gradients, the gradients, and the
//! kernels' workspace with its layout and allocation.
use crate::config::{Dims, MlstmConfig};
use crate::error::{Error, Result};
use crate::forward::{CheckedInputs, MlstmInputs, path_of};
use crate::runtime::Runtime;
use crate::tensor::{Dtype, Tensor, expect_dtype, expect_shape};
use tfla_params::bwd::{self};
use tfla_params::{Device, Path};

/// The backward pass's upstream gradients: of h, and optionally of the final states. A packed
/// batch (`crate::varlen`) takes the same, in its shapes: dh (T, NH, DHV), the final-state
/// gradients (N, NH, …).
#[derive(Clone, Copy)]
pub struct MlstmGradOutputs<'a> {
    /// dL/dh: (B, NH, S, DHV) in the input dtype.
    pub dh: &'a Tensor,
    /// dL/dC̃_S: (B, NH, DQK, DHV) f32.
    pub dc: Option<&'a Tensor>,
    /// dL/dñ_S: (B, NH, DQK) f32. Ignored in [`GradMode::DetachedNormalizer`] and by mLSTMsig
    /// without the normalizer (whose forward returns ñ = 0, a constant).
    pub dn: Option<&'a Tensor>,
    /// dL/dm_S: (B, NH) f32. Followed only by mLSTMexp in [`GradMode::Exact`] (mLSTMsig has no
    /// max state; the detached mode holds it constant).
    pub dm: Option<&'a Tensor>,
}

impl<'a> MlstmGradOutputs<'a> {
    /// Only dh (no final-state gradients).
    pub fn new(dh: &'a Tensor) -> Self {
        MlstmGradOutputs {
            dh,
            dc: None,
            dn: None,
            dm: None,
        }
    }

    /// Checks every shape and dtype against the forward's `dims` and input `dtype`.
    pub fn check(&self, dims: &Dims, dtype: Dtype) -> Result<()> {
        let Dims { b, nh, s, dqk, dhv } = *dims;
        expect_shape("dh", self.dh, &[b, nh, s, dhv])?;
        expect_dtype("dh", self.dh, dtype)?;
        let finals = [
            ("dc", self.dc, vec![b, nh, dqk, dhv]),
            ("dn", self.dn, vec![b, nh, dqk]),
            ("dm", self.dm, vec![b, nh]),
        ];
        for (arg, t, shape) in finals {
            if let Some(t) = t {
                expect_shape(arg, t, &shape)?;
                expect_dtype(arg, t, Dtype::F32)?;
            }
        }
        Ok(())
    }
}

/// An initial-state gradient `t` is present exactly when the inputs have that initial state,
/// whose shape `shape` is then, and is f32.
pub(crate) fn expect_initial_grad(
    arg: &'static str,
    t: Option<&Tensor>,
    shape: Option<&[usize]>,
) -> Result<()> {
    match (t, shape) {
        (Some(t), Some(shape)) => {
            expect_shape(arg, t, shape)?;
            expect_dtype(arg, t, Dtype::F32)
        }
        (None, None) => Ok(()),
        (t, _) => Err(Error::Invalid {
            arg,
            value: if t.is_some() { "Some" } else { "None" }.into(),
            reason: "an initial-state gradient is present exactly when the inputs have that \
                     initial state",
        }),
    }
}

/// Scratch tensors the backward kernels hand each other (see `params/src/bwd.rs`,
/// [`BwdPointers`]). Kept with the gradients so repeated calls allocate nothing and the scratch
/// outlives the kernels that use it.
#[derive(Debug)]
pub struct BwdWorkspace {
    pub chunk_size: usize,
    /// Per-row coefficients: (`rows::PLANES`, BH, NC·L) f32.
    pub row_coef: Tensor,
    /// dC̃ after each chunk: (BH, NC, DQK, DHV) in the input dtype (the combine kernels' mma
    /// operand, as the forward's C̃_k).
    pub dc_states: Tensor,
    /// dñ after each chunk: (BH, NC, DQK) f32.
    pub dn_states: Tensor,
    /// Gated score matrices P and dP of every chunk, their lower-triangular tiles packed:
    /// (BH, NC, `scores::pairs(L)`, TILE, TILE) in the input dtype each; empty where the chunk
    /// kernel keeps them on chip (`bwd::use_chunk`).
    pub scores_p: Tensor,
    pub scores_dp: Tensor,
    /// Partial row dots per column tile: (combine::DOT_PLANES, BH, NC·L,
    /// combine::col_tiles(DQK)) f32.
    pub row_dots: Tensor,
    /// Partial state dots per state tile: (BH, NC + 2·sequences, state::MAX_TILES) f32
    /// (`state::dots_per_head`).
    pub state_dots: Tensor,
    /// Partial row and column sums of the pair gradients per score tile:
    /// (2, BH, NC·L, L / scores::TILE) f32.
    pub pair_sums: Tensor,
    /// f32 inputs: the states the reverse recurrence recomputes, `recurrent::segments_len`
    /// f32. (The tensors above that only the tensor-core kernels use are empty for f32
    /// inputs, and this one for 16-bit inputs.)
    pub segments: Tensor,
    /// The chunk states C̃_k recomputed for a forward that released them
    /// ([`MlstmOutputs::release_chunk_states`]), (BH, NC, DQK, DHV) in the input dtype, and for
    /// f32 inputs the h the recurrence writes along (discarded). Allocated by the first
    /// backward that needs them, reused after.
    pub recomputed_states: Option<Tensor>,
    pub recomputed_h: Option<Tensor>,
}

/// The workspace tensors at `dims`, chunk size `chunk` and `seqs` sequences per head (1 unless
/// packed), as (name in [`BwdPointers`], dtype, shape): what [`BwdWorkspace::alloc`] allocates,
/// and what a framework that owns its buffers allocates for [`mlstm_bwd_raw`].
pub fn workspace_layout(
    dev: &Device,
    dims: &Dims,
    dtype: Dtype,
    chunk: usize,
    seqs: usize,
) -> [(&'static str, Dtype, Vec<usize>); 9] {
    let (bh, dqk, dhv) = (dims.bh(), dims.dqk, dims.dhv);
    let nc = dims.s.div_ceil(chunk);
    let rows = nc * chunk;
    let f32_ = Dtype::F32;
    let f32_path = path_of(dtype) == Path::F32;
    // A tensor only one path uses is empty on the other.
    let only = |tc: bool, shape: Vec<usize>| if tc != f32_path { shape } else { vec![0] };
    // The one-kernel chunk gradients keep the score matrices on chip.
    let on_chip = bwd::use_chunk(dev, chunk as u32, dqk as u32, dhv as u32);
    let segments = bwd::recurrent::segments_len(bh as u32, dqk as u32, dhv as u32, chunk as u32);
    let tile = bwd::scores::TILE as usize;
    let scores = vec![
        bh,
        nc,
        bwd::scores::pairs(chunk as u32) as usize,
        tile,
        tile,
    ];
    let mut layout = [
        ("row_coef", f32_, vec![bwd::rows::PLANES as usize, bh, rows]),
        ("dc_states", dtype, vec![bh, nc, dqk, dhv]),
        ("dn_states", f32_, vec![bh, nc, dqk]),
        (
            "scores_p",
            dtype,
            if on_chip { vec![0] } else { scores.clone() },
        ),
        ("scores_dp", dtype, if on_chip { vec![0] } else { scores }),
        (
            "row_dots",
            f32_,
            vec![
                bwd::combine::DOT_PLANES as usize,
                bh,
                rows,
                bwd::combine::col_tiles(dqk as u32) as usize,
            ],
        ),
        (
            "state_dots",
            f32_,
            vec![
                bh,
                bwd::state::dots_per_head(nc as u32, seqs as u32) as usize,
                bwd::state::MAX_TILES as usize,
            ],
        ),
        (
            "pair_sums",
            f32_,
            vec![2, bh, rows, bwd::scores::tiles(chunk as u32) as usize],
        ),
        ("segments", f32_, vec![segments as usize]),
    ];
    for (name, _, shape) in &mut layout {
        let tensor_cores = !matches!(*name, "row_coef" | "state_dots" | "segments");
        let f32_only = *name == "segments";
        if tensor_cores || f32_only {
            *shape = only(tensor_cores, std::mem::take(shape));
        }
    }
    layout
}

impl BwdWorkspace {
    /// Allocates the scratch for `dims`, the input `dtype` and chunk size `chunk`.
    pub fn alloc(rt: &Runtime, dims: &Dims, dtype: Dtype, chunk: usize) -> Result<Self> {
        Self::alloc_for(rt, dims, dtype, chunk, 1)
    }

    /// The scratch for `seqs` sequences per head (a packed batch).
    pub(crate) fn alloc_for(
        rt: &Runtime,
        dims: &Dims,
        dtype: Dtype,
        chunk: usize,
        seqs: usize,
    ) -> Result<Self> {
        let [rc, dcs, dns, sp, sdp, rd, sd, ps, seg] =
            workspace_layout(&rt.plan_device(), dims, dtype, chunk, seqs)
                .map(|(_, dt, shape)| Tensor::uninit(rt, dt, &shape));
        Ok(BwdWorkspace {
            chunk_size: chunk,
            row_coef: rc?,
            dc_states: dcs?,
            dn_states: dns?,
            scores_p: sp?,
            scores_dp: sdp?,
            row_dots: rd?,
            state_dots: sd?,
            pair_sums: ps?,
            segments: seg?,
            recomputed_states: None,
            recomputed_h: None,
        })
    }

    fn tensors(&self) -> [&Tensor; 9] {
        [
            &self.row_coef,
            &self.dc_states,
            &self.dn_states,
            &self.scores_p,
            &self.scores_dp,
            &self.row_dots,
            &self.state_dots,
            &self.pair_sums,
            &self.segments,
        ]
    }

    /// Device memory the workspace holds.
    pub fn bytes(&self) -> usize {
        let recomputed = self.recomputed_states.iter().chain(&self.recomputed_h);
        self.tensors()
            .iter()
            .copied()
            .chain(recomputed)
            .map(bytes)
            .sum()
    }

    fn check(
        &self,
        dev: &Device,
        dims: &Dims,
        dtype: Dtype,
        chunk: usize,
        seqs: usize,
    ) -> Result<()> {
        if self.chunk_size != chunk {
            return Err(Error::Invalid {
                arg: "workspace.chunk_size",
                value: self.chunk_size.to_string(),
                reason: "the gradients were allocated for another chunk size (with chunk_size None the \
                         size follows row_stats: allocate them with the backward's config)",
            });
        }
        for ((arg, dt, shape), t) in workspace_layout(dev, dims, dtype, chunk, seqs)
            .into_iter()
            .zip(self.tensors())
        {
            expect_shape(arg, t, &shape)?;
            expect_dtype(arg, t, dt)?;
        }
        Ok(())
    }
}

fn bytes(t: &Tensor) -> usize {
    t.numel() * t.dtype().size()
}

/// The backward pass's outputs: the gradient w.r.t. every input of the forward.
#[derive(Debug)]
pub struct MlstmGrads {
    /// dq, dk: (B, NH, S, DQK); dv: (B, NH, S, DHV); in the input dtype.
    pub dq: Tensor,
    pub dk: Tensor,
    pub dv: Tensor,
    /// dĩ, df̃: (B, NH, S) f32.
    pub di: Tensor,
    pub df: Tensor,
    /// dL/dC̃_0 (B, NH, DQK, DHV), dL/dñ_0 (B, NH, DQK), dL/dm_0 (B, NH), f32: each present
    /// exactly when the inputs had that initial state. dñ_0 is zero where the gradient does not
    /// follow ñ (DetachedNormalizer, mLSTMsig without normalizer), dm_0 where it does not
    /// follow m (DetachedNormalizer, mLSTMsig).
    pub dc0: Option<Tensor>,
    pub dn0: Option<Tensor>,
    pub dm0: Option<Tensor>,
    /// Scratch of the kernels (contents unspecified between calls).
    pub workspace: BwdWorkspace,
}

impl MlstmGrads {
    /// Allocates gradients (and the workspace) for `inputs` and the chunk size of `cfg`
    /// (contents unspecified until a backward pass writes them).
    pub fn alloc(rt: &Runtime, inputs: &MlstmInputs, cfg: &MlstmConfig) -> Result<Self> {
        Self::alloc_checked(rt, &inputs.check()?, cfg)
    }

    /// [`MlstmGrads::alloc`] for checked inputs.
    pub(crate) fn alloc_checked(
        rt: &Runtime,
        checked: &CheckedInputs,
        cfg: &MlstmConfig,
    ) -> Result<Self> {
        let (inputs, dims, dtype) = (checked.inputs(), checked.dims(), checked.dtype());
        let chunk = cfg.chunk_for(&dims)?;
        let Dims { b, nh, s, dqk, dhv } = dims;
        let f32_ = Dtype::F32;
        let opt = |given: bool, shape: &[usize]| -> Result<Option<Tensor>> {
            given.then(|| Tensor::uninit(rt, f32_, shape)).transpose()
        };
        Ok(MlstmGrads {
            dq: Tensor::uninit(rt, dtype, &[b, nh, s, dqk])?,
            dk: Tensor::uninit(rt, dtype, &[b, nh, s, dqk])?,
            dv: Tensor::uninit(rt, dtype, &[b, nh, s, dhv])?,
            di: Tensor::uninit(rt, f32_, &[b, nh, s])?,
            df: Tensor::uninit(rt, f32_, &[b, nh, s])?,
            dc0: opt(inputs.c0.is_some(), &[b, nh, dqk, dhv])?,
            dn0: opt(inputs.n0.is_some(), &[b, nh, dqk])?,
            dm0: opt(inputs.m0.is_some(), &[b, nh])?,
            workspace: BwdWorkspace::alloc(rt, &dims, dtype, chunk)?,
        })
    }

    /// Device memory these gradients and their workspace hold (everything a backward call
    /// allocates).
    pub fn bytes(&self) -> usize {
        let mut tensors = vec![&self.dq, &self.dk, &self.dv, &self.di, &self.df];
        tensors.extend(self.dc0.iter().chain(&self.dn0).chain(&self.dm0));
        tensors.iter().map(|t| bytes(t)).sum::<usize>() + self.workspace.bytes()
    }

    /// `seqs`: sequences per head the workspace serves (1 unless packed, `crate::varlen`);
    /// `dev`: the device the workspace was planned for.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn check(
        &self,
        dev: &Device,
        inputs: &MlstmInputs,
        dims: &Dims,
        dtype: Dtype,
        chunk: usize,
        seqs: usize,
    ) -> Result<()> {
        let Dims { b, nh, s, dqk, dhv } = *dims;
        for (arg, t, shape) in [
            ("dq", &self.dq, [b, nh, s, dqk]),
            ("dk", &self.dk, [b, nh, s, dqk]),
            ("dv", &self.dv, [b, nh, s, dhv]),
        ] {
            expect_shape(arg, t, &shape)?;
            expect_dtype(arg, t, dtype)?;
        }
        for (arg, t) in [("di", &self.di), ("df", &self.df)] {
            expect_shape(arg, t, &[b, nh, s])?;
            expect_dtype(arg, t, Dtype::F32)?;
        }
        let initial = [
            ("dc0", &self.dc0, inputs.c0.is_some(), vec![b, nh, dqk, dhv]),
            ("dn0", &self.dn0, inputs.n0.is_some(), vec![b, nh, dqk]),
            ("dm0", &self.dm0, inputs.m0.is_some(), vec![b, nh]),
        ];
        for (arg, t, given, shape) in initial {
            expect_initial_grad(arg, t.as_ref(), given.then_some(&shape[..]))?;
        }
        self.workspace.check(dev, dims, dtype, chunk, seqs)
    }
}
