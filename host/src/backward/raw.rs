//! The backward pass on raw device pointers: the checks, the kernel parameters and the
//! launches of its plan.
use crate::config::{Dims, MlstmConfig};
use crate::error::Result;
use crate::forward::{kernel_gates, path_of};
use crate::launch;
use crate::runtime::Runtime;
use crate::tensor::Dtype;
use crate::variant::GradMode;
use crate::variant::Variant;
use cust::sys::CUstream;
use tfla_params::Path;
pub use tfla_params::bwd::BwdPointers;
use tfla_params::bwd::{self, BwdParams};

/// The backward pass on caller-owned device memory, launched on `stream` (for frameworks that
/// own their buffers). Validates the dimensions, config, dtype and pointers; returns once the
/// kernels are queued.
///
/// Where the gradient does not follow ñ (DetachedNormalizer, mLSTMsig without normalizer) the
/// kernels ignore dn_final and write zeros to dn0; where it does not follow m
/// (DetachedNormalizer, mLSTMsig) they ignore dm_final and write zeros to dm0. norm_rows is
/// read only by the normalized variants.
///
/// # Safety
/// Every non-zero pointer addresses a live allocation of the runtime's context, large enough
/// for its tensor at `dims` and the chunk count NC = ceil(S / L) of `cfg` (shapes in
/// [`BwdPointers`]), holding `dtype` (q, k, v, h, c_states, dh, dc_states, scores_p, scores_dp,
/// dq, dk, dv) or f32 (everything else; the workspace only what the dtype's path uses, see
/// [`BwdWorkspace`]); the forward tensors hold what the forward pass wrote
/// for these inputs and `cfg` (with row statistics for the normalized variants); outputs and
/// workspace do not overlap each other or the inputs. With `chunk_size` None, L follows
/// `cfg.row_stats` ([`crate::select_chunk_size`]): the forward must have run with the same
/// `row_stats` (or fix L once: `cfg.with_chunk_size(cfg.chunk_for(&dims)?)`).
pub unsafe fn mlstm_bwd_raw(
    rt: &Runtime,
    stream: CUstream,
    ptrs: &BwdPointers,
    dims: Dims,
    dtype: Dtype,
    cfg: &MlstmConfig,
    mode: GradMode,
) -> Result<()> {
    launch::check_not_packed(ptrs.seq_chunks)?;
    // SAFETY: this function's contract; one sequence per head.
    unsafe { launch_bwd(rt, stream, ptrs, dims, dtype, cfg, mode, 1) }
}

/// [`mlstm_bwd_raw`] for `seqs` sequences per head (a packed batch, `crate::varlen`, which has
/// checked `ptrs.seq_chunks`; the workspace's state dots sized for `seqs`).
///
/// # Safety
/// As [`mlstm_bwd_raw`], with the initial and final states and their gradients of `seqs`
/// batch rows.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn launch_bwd(
    rt: &Runtime,
    stream: CUstream,
    ptrs: &BwdPointers,
    dims: Dims,
    dtype: Dtype,
    cfg: &MlstmConfig,
    mode: GradMode,
    seqs: u32,
) -> Result<()> {
    dims.validate()?;
    let path = path_of(dtype);
    let chunk = cfg.chunk_for(&dims)?;
    let scale = cfg.scale_for(&dims)?;
    let dev = rt.plan_device();
    let on_chip = bwd::use_chunk(&dev, chunk as u32, dims.dqk as u32, dims.dhv as u32);
    check_pointers(ptrs, cfg.variant, path, on_chip)?;
    let params = bwd_params(ptrs, &dims, cfg, chunk, scale, mode, seqs);
    let plan = bwd::plan(&dev, &params, kernel_gates(cfg.variant), path);
    // SAFETY: pointers per this function's contract; dims, chunk, dtype and alignment checked;
    // each kernel of the plan reads only what the ones before it wrote.
    unsafe { launch::run_plan(rt, stream, plan.as_slice(), &params) }
}

/// The backward kernels' parameters for validated `dims`, `cfg` and the chunk size and scale
/// it gives.
pub(crate) fn bwd_params(
    ptrs: &BwdPointers,
    dims: &Dims,
    cfg: &MlstmConfig,
    chunk: usize,
    scale: f32,
    mode: GradMode,
    seqs: u32,
) -> BwdParams {
    BwdParams {
        ptr: *ptrs,
        bh: dims.bh() as u32,
        s: dims.s as u32,
        dqk: dims.dqk as u32,
        dhv: dims.dhv as u32,
        chunk: chunk as u32,
        num_chunks: dims.s.div_ceil(chunk) as u32,
        scale,
        eps: cfg.eps,
        exact: (mode == GradMode::Exact) as u32,
        seqs,
    }
}

/// Required pointers present and every pointer aligned (`bwd::pointers`).
/// `scores_on_chip`: the chunk kernel runs (`bwd::use_chunk`), which needs no score
/// matrices.
fn check_pointers(
    p: &BwdPointers,
    variant: Variant,
    path: Path,
    scores_on_chip: bool,
) -> Result<()> {
    launch::check_pointers(&bwd::pointers(
        p,
        variant.normalizes(),
        path,
        scores_on_chip,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backward::workspace_layout;
    use crate::error::Error;
    use crate::launch::Launch;
    use crate::variant::Variant;
    use tfla_params::Device;
    use tfla_params::bwd::BwdKernel;
    use tfla_params::{Dtype as KDtype, Gates};

    /// The plan's launches as a list.
    fn bwd_launches(dev: &Device, p: &BwdParams, gates: Gates, path: Path) -> Vec<Launch> {
        bwd::plan(dev, p, gates, path).as_slice().to_vec()
    }

    fn dims(s: usize, dqk: usize, dhv: usize) -> Dims {
        Dims {
            b: 2,
            nh: 3,
            s,
            dqk,
            dhv,
        }
    }

    #[test]
    fn workspace_layout_matches_the_pointer_contract() {
        let d = dims(1000, 80, 272);
        let l = workspace_layout(&Device::HOPPER, &d, Dtype::Bf16, 256, 1);
        let shape = |name: &str| l.iter().find(|(n, ..)| *n == name).unwrap().2.clone();
        // NC = 4, NC·L = 1024, BH = 6.
        assert_eq!(shape("row_coef"), [bwd::rows::PLANES as usize, 6, 1024]);
        assert_eq!(shape("dc_states"), [6, 4, 80, 272]);
        assert_eq!(shape("dn_states"), [6, 4, 80]);
        // L = 256: 4 × 4 score tiles of 64, 10 of them on or below the diagonal.
        assert_eq!(shape("scores_p"), [6, 4, 10, 64, 64]);
        // DQK = 80: one 128-column tile of dq and dk.
        assert_eq!(shape("row_dots"), [3, 6, 1024, 1]);
        assert_eq!(shape("state_dots")[..2], [6, 6]);
        assert_eq!(shape("pair_sums"), [2, 6, 1024, 4]);
        // L = 128 and heads up to 128: the chunk kernel needs no score matrices.
        let l = workspace_layout(&Device::HOPPER, &dims(1000, 128, 128), Dtype::Bf16, 128, 1);
        assert_eq!(numel_of(&l, "scores_p"), 0);
        assert_eq!(numel_of(&l, "scores_dp"), 0);
        assert_eq!(numel_of(&l, "pair_sums"), 2 * 6 * 1024 * 2);
        // Every row_coef plane starts 16-byte aligned (cp.async of the row weights).
        assert_eq!(6 * 1024 * 4 % 16, 0);
        for &chunk in &tfla_params::CHUNK_SIZES {
            assert_eq!(chunk as usize * 4 % 16, 0);
        }
    }

    #[test]
    fn launches_follow_the_params_order_and_names() {
        let p = BwdParams {
            bh: 6,
            s: 1000,
            dqk: 64,
            dhv: 128,
            chunk: 128,
            num_chunks: 8,
            seqs: 1,
            ..Default::default()
        };
        let names = |l: &[Launch]| l.iter().map(|l| l.name).collect::<Vec<_>>();
        let f16 = Path::TensorCores(KDtype::F16);
        // L = 128 with DHV = 128 but DQK = 256: the four intra-chunk kernels.
        let p = BwdParams { dqk: 256, ..p };
        let want = |g| {
            BwdKernel::ALL
                .iter()
                .filter(|&&k| k != BwdKernel::Chunk)
                .map(|&k| bwd::entry_name(k, g, KDtype::F16))
                .collect::<Vec<_>>()
        };
        // The max-state path runs for mLSTMexp in Exact mode only.
        let exact = BwdParams { exact: 1, ..p };
        assert_eq!(
            names(&bwd_launches(&Device::HOPPER, &exact, Gates::Exp, f16)),
            want(Gates::Exp)
        );
        let l = bwd_launches(&Device::HOPPER, &exact, Gates::Sig, f16);
        assert_eq!(names(&l), want(Gates::Sig)[..7]);
        assert_eq!(bwd_launches(&Device::HOPPER, &p, Gates::Exp, f16).len(), 7);
        // dq and dk tile DQK, dv tiles DHV.
        assert_eq!(l[3].grid, bwd::combine::grid(&p, 256));
        assert_eq!(l[5].grid, bwd::combine::grid(&p, 128));
        assert!(l.iter().all(|l| l.threads % 32 == 0 && l.threads > 0));

        // Heads up to 128 at L = 128: one kernel per chunk in place of those four, on `wgmma`
        // in the sm_90a module, on `mma.sync` in the sm_80 one.
        let small = BwdParams { dqk: 64, ..exact };
        let want_small = |chunk| {
            [
                BwdKernel::Rows,
                BwdKernel::State,
                chunk,
                BwdKernel::Gates,
                BwdKernel::MaxPath,
            ]
            .map(|k| bwd::entry_name(k, Gates::Exp, KDtype::F16))
        };
        for (dev, chunk) in [
            (Device::HOPPER, BwdKernel::ChunkWg),
            (Device::PORTABLE_227K, BwdKernel::Chunk),
        ] {
            let l = bwd_launches(&dev, &small, Gates::Exp, f16);
            assert_eq!(names(&l), want_small(chunk));
            assert_eq!(l[2].grid, (8, 6, 1));
        }
        let at_256 = BwdParams {
            chunk: 256,
            num_chunks: 4,
            ..small
        };
        let l = bwd_launches(&Device::HOPPER, &at_256, Gates::Exp, f16);
        assert!(
            [BwdKernel::Chunk, BwdKernel::ChunkWg]
                .iter()
                .all(|&k| !names(&l).contains(&bwd::entry_name(k, Gates::Exp, KDtype::F16)))
        );

        // f32: rows, the recurrence, and the max-state path where it applies.
        let l = bwd_launches(&Device::HOPPER, &exact, Gates::Exp, Path::F32);
        assert_eq!(
            names(&l),
            [
                "mlstm_bwd_rows_exp_f32",
                "mlstm_bwd_recurrent_exp_f32",
                "mlstm_bwd_max_path_exp"
            ]
        );
        // Exact mode carries ñ as one more column tile: 128 + 1 columns.
        assert_eq!(l[1].grid, (9, 6, 1));
        let l = bwd_launches(&Device::HOPPER, &p, Gates::Sig, Path::F32);
        assert_eq!(l.len(), 2);
        assert_eq!(l[1].grid, (8, 6, 1));
    }

    const TC: Path = Path::TensorCores(KDtype::Bf16);

    #[test]
    fn pointer_checks_name_the_argument() {
        // Addresses only (never dereferenced): a plausible, aligned pointer set.
        let mut p = BwdPointers::default();
        let mut next = 0x1000_0000u64;
        for f in [
            &mut p.q,
            &mut p.k,
            &mut p.v,
            &mut p.i,
            &mut p.f,
            &mut p.h,
            &mut p.c_states,
            &mut p.n_states,
            &mut p.m_states,
            &mut p.gate_b,
            &mut p.gate_u,
            &mut p.gate_cm,
            &mut p.gate_g,
            &mut p.norm_rows,
            &mut p.dh,
            &mut p.row_coef,
            &mut p.dc_states,
            &mut p.dn_states,
            &mut p.scores_p,
            &mut p.scores_dp,
            &mut p.row_dots,
            &mut p.state_dots,
            &mut p.pair_sums,
            &mut p.dq,
            &mut p.dk,
            &mut p.dv,
            &mut p.di,
            &mut p.df,
        ] {
            *f = next;
            next += 0x10_0000;
        }
        assert!(check_pointers(&p, Variant::Exp, TC, false).is_ok());
        let arg_of = |p: &BwdPointers, v| match check_pointers(p, v, TC, false) {
            Err(Error::Invalid { arg, .. }) => arg,
            other => panic!("expected Error::Invalid, got {other:?}"),
        };
        let mut bad = p;
        bad.norm_rows = 0;
        assert_eq!(arg_of(&bad, Variant::Exp), "norm_rows");
        assert!(check_pointers(&bad, Variant::Sig { normalize: false }, TC, false).is_ok());
        // One spoiled pointer at a time (a final-state gradient without its state, misaligned
        // addresses): the error names the argument.
        type Spoil = fn(&mut BwdPointers);
        let spoiled: [(Spoil, &str); 6] = [
            (|p| p.dc_final = 0x2000_0000, "c_final"),
            (|p| p.dv += 4, "dv"),
            (|p| p.row_coef += 4, "row_coef"),
            (|p| p.dh += 8, "dh"),
            (|p| p.dn_states += 4, "dn_states"),
            (|p| p.di += 2, "di"),
        ];
        for (spoil, arg) in spoiled {
            let mut bad = p;
            spoil(&mut bad);
            assert_eq!(arg_of(&bad, Variant::Exp), arg);
        }
        let mut bad = p;
        bad.scores_dp = 0;
        assert_eq!(arg_of(&bad, Variant::Exp), "scores_dp");
        // The chunk kernel keeps the score matrices on chip.
        assert!(check_pointers(&bad, Variant::Exp, TC, true).is_ok());
        // The f32 path needs its scratch, not the tensor-core workspace.
        let f32_arg = |p: &BwdPointers| match check_pointers(p, Variant::Exp, Path::F32, false) {
            Err(Error::Invalid { arg, .. }) => arg,
            other => panic!("expected Error::Invalid, got {other:?}"),
        };
        assert_eq!(f32_arg(&bad), "segments");
        bad.segments = next;
        assert!(check_pointers(&bad, Variant::Exp, Path::F32, false).is_ok());
        bad.dq += 4;
        assert_eq!(f32_arg(&bad), "dq");
    }

    #[test]
    fn f32_path_needs_only_its_workspace() {
        let d = dims(1000, 80, 272);
        let l = workspace_layout(&Device::HOPPER, &d, Dtype::F32, 256, 1);
        let numel = |name| numel_of(&l, name);
        for name in [
            "dc_states",
            "dn_states",
            "scores_p",
            "scores_dp",
            "row_dots",
            "pair_sums",
        ] {
            assert_eq!(numel(name), 0, "{name}");
        }
        // BH = 6, 18 column tiles (272 + ñ), 32 slots at L = 256, 80 × 16 per slot.
        assert_eq!(numel("segments"), 6 * 18 * 32 * 80 * 16);
        assert_eq!(numel("state_dots"), 6 * 6 * bwd::state::MAX_TILES as usize);
        assert_eq!(
            numel_of(
                &workspace_layout(&Device::HOPPER, &d, Dtype::Bf16, 256, 1),
                "segments"
            ),
            0
        );
    }

    fn numel_of(l: &[(&'static str, Dtype, Vec<usize>)], name: &str) -> usize {
        l.iter()
            .find(|(n, ..)| *n == name)
            .unwrap()
            .2
            .iter()
            .product()
    }
}
