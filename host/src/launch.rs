//! The one place kernels are launched: checks the grid and the dynamic shared memory against
//! the device, and launches the runtime's cached entry point on a stream.
use crate::error::{Error, Result};
use crate::runtime::Runtime;
use cust::sys::CUstream;
use std::ffi::c_void;

pub(crate) use tfla_params::Launch;
use tfla_params::Pointer;

/// What the host checks of a launch of a plan (`tfla_params::fwd::plan`, `bwd::plan`) before
/// [`run_plan`] launches it.
pub(crate) trait LaunchOnDevice {
    /// Fails with [`Error::SharedMemory`] when the device cannot give the block its memory,
    /// and with [`Error::Invalid`] when the grid exceeds CUDA's limits.
    fn check(&self, rt: &Runtime) -> Result<()>;
    fn check_grid(&self) -> Result<()>;
}

impl LaunchOnDevice for Launch {
    fn check(&self, rt: &Runtime) -> Result<()> {
        self.check_grid()?;
        if self.smem > rt.max_smem_optin {
            return Err(Error::SharedMemory {
                kernel: self.name,
                requested: self.smem,
                available: rt.max_smem_optin,
            });
        }
        Ok(())
    }

    fn check_grid(&self) -> Result<()> {
        if !self.grid_fits() {
            return Err(Error::Invalid {
                arg: "grid",
                value: format!("{:?} for `{}`", self.grid, self.name),
                reason: "outside CUDA's grid limits (x < 2^31, y and z ≤ 65535, none 0): \
                         S or B·NH too large for one call",
            });
        }
        Ok(())
    }
}

/// Checks every launch of `launches` against the device, then queues them in order on
/// `stream`, each with `params` (a `#[repr(C)]` struct passed by value) as its only argument:
/// a pass whose last kernel cannot launch is rejected before its first one runs.
///
/// # Safety
/// `params` holds device pointers valid for what every kernel reads and writes at the
/// launches' dimensions; the kernels' parameter type is `P`; each reads only what the kernels
/// before it on `stream` wrote.
pub(crate) unsafe fn run_plan<P>(
    rt: &Runtime,
    stream: CUstream,
    launches: &[Launch],
    params: &P,
) -> Result<()> {
    for l in launches {
        l.check(rt)?;
    }
    for l in launches {
        let f = rt.function(l.name, l.smem)?;
        let (x, y, z) = l.grid;
        let mut args = [params as *const P as *mut c_void];
        let launch = || {
            // SAFETY: forwarded to the caller (pointer validity); `f` is a function of the
            // runtime's module, whose context the stream belongs to; grid and shared memory
            // were checked above.
            let code = unsafe {
                cust::sys::cuLaunchKernel(
                    f,
                    x,
                    y,
                    z,
                    l.threads,
                    1,
                    1,
                    l.smem,
                    stream,
                    args.as_mut_ptr(),
                    std::ptr::null_mut(),
                )
            };
            Error::check_driver("cuLaunchKernel", code)
        };
        rt.launch_traced(l.name, stream, launch)?;
    }
    Ok(())
}

/// A pass's pointer list (`tfla_params::fwd::pointers` and the like) checked: every required
/// pointer non-null, then every pointer (0 = absent) a multiple of its alignment in bytes;
/// the first failure is a typed error naming the pointer.
pub(crate) fn check_pointers(pointers: &[Pointer]) -> Result<()> {
    if let Some(p) = pointers.iter().find(|p| p.required && p.addr == 0) {
        return Err(Error::Invalid {
            arg: p.name,
            value: "null".into(),
            reason: "required pointer",
        });
    }
    if let Some(p) = pointers.iter().find(|p| p.addr % p.align != 0) {
        return Err(Error::Invalid {
            arg: p.name,
            value: format!("{:#x}, needs {}-byte alignment", p.addr, p.align),
            reason: "device pointer not aligned for the kernels' vector accesses",
        });
    }
    Ok(())
}

/// The raw entries take one sequence per head: a sequence table (`seq_chunks`) belongs to the
/// packed batches of `crate::varlen`, which check it and pass the sequence count.
pub(crate) fn check_not_packed(seq_chunks: u64) -> Result<()> {
    if seq_chunks != 0 {
        return Err(Error::Invalid {
            arg: "seq_chunks",
            value: format!("{seq_chunks:#x}"),
            reason: "packed variable-length batches go through crate::varlen",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::{kernel_gates, path_of};
    use crate::{Dtype, Variant};
    use tfla_params::bwd::{self, BwdParams};
    use tfla_params::fwd::{self, FwdParams};
    use tfla_params::{CHUNK_SIZES, Device, Gates};

    fn fwd_launches(
        dev: &Device,
        p: &FwdParams,
        g: Gates,
        dtype: Dtype,
        states_only: bool,
    ) -> Vec<Launch> {
        fwd::plan(dev, p, g, path_of(dtype), states_only)
            .as_slice()
            .to_vec()
    }

    fn bwd_launches(dev: &Device, p: &BwdParams, g: Gates, dtype: Dtype) -> Vec<Launch> {
        bwd::plan(dev, p, g, path_of(dtype)).as_slice().to_vec()
    }

    /// A value for one dimension: mostly ordinary, often at an edge (0, 1, off the 16-grid,
    /// the limits, past 32 and 64 bits when multiplied).
    fn edgy(rng: &mut impl rand::Rng, ordinary: std::ops::RangeInclusive<usize>) -> usize {
        const EDGES: [usize; 12] = [
            0,
            1,
            15,
            16,
            17,
            512,
            528,
            65_535,
            65_536,
            1 << 31,
            u32::MAX as usize,
            usize::MAX,
        ];
        if rng.gen_bool(0.3) {
            EDGES[rng.gen_range(0..EDGES.len())]
        } else {
            rng.gen_range(ordinary)
        }
    }

    /// A head dim: a multiple of 16 (edges included) or, now and then, any value.
    fn head_dim(rng: &mut impl rand::Rng) -> usize {
        let d = edgy(rng, 1..=40);
        if rng.gen_bool(0.2) {
            d
        } else {
            d.saturating_mul(16)
        }
    }

    /// Property test of the validation layer over random and extreme arguments: nothing
    /// panics; every rejected combination is a typed error naming its argument; every
    /// accepted one (dims, chunk size, scale, eps) gives forward and backward plans whose
    /// every launch has a grid within CUDA's limits and shared memory the card has, on each
    /// limit set, for every variant, dtype and gradient mode.
    #[test]
    fn accepted_arguments_are_launchable_and_the_rest_are_named_errors() {
        use crate::backward::bwd_params;
        use crate::forward::fwd_params;
        use crate::{Dims, GradMode, MlstmConfig};
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(21);
        let (mut accepted, mut rejected) = (0, 0);
        for _ in 0..20_000 {
            let dims = Dims {
                b: edgy(&mut rng, 1..=64),
                nh: edgy(&mut rng, 1..=64),
                s: edgy(&mut rng, 1..=100_000),
                dqk: head_dim(&mut rng),
                dhv: head_dim(&mut rng),
            };
            let variant = [
                Variant::Exp,
                Variant::Sig { normalize: true },
                Variant::Sig { normalize: false },
            ][rng.gen_range(0..3)];
            let mut cfg = MlstmConfig::new(variant);
            cfg.chunk_size = rng
                .gen_bool(0.8)
                .then(|| [0, 1, 32, 64, 100, 128, 256, 512, 1024, 2048][rng.gen_range(0..10)]);
            cfg.scale = rng
                .gen_bool(0.2)
                .then(|| [f32::NAN, -1.0, 0.0, 0.5, f32::INFINITY][rng.gen_range(0..5)]);
            let checked = std::panic::catch_unwind(|| {
                dims.validate()?;
                Ok::<_, Error>((cfg.chunk_for(&dims)?, cfg.scale_for(&dims)?))
            })
            .unwrap_or_else(|_| panic!("validation panicked on {dims:?}, {cfg:?}"));
            let (chunk, scale) = match checked {
                Ok(v) => v,
                Err(e) => {
                    rejected += 1;
                    let named = match &e {
                        Error::Invalid { arg, .. } | Error::HeadDim { arg, .. } => !arg.is_empty(),
                        Error::ChunkSize { .. } => true,
                        other => panic!("unexpected error kind for {dims:?}: {other}"),
                    };
                    assert!(named && !e.to_string().is_empty());
                    continue;
                }
            };
            accepted += 1;
            let mode = if rng.gen_bool(0.5) {
                GradMode::Exact
            } else {
                GradMode::DetachedNormalizer
            };
            let fp = fwd_params(&Default::default(), &dims, &cfg, chunk, scale, 1);
            let bp = bwd_params(&Default::default(), &dims, &cfg, chunk, scale, mode, 1);
            for dev in Device::LIMIT_SETS {
                for dtype in [Dtype::Bf16, Dtype::F16, Dtype::F32] {
                    let launches = fwd_launches(&dev, &fp, kernel_gates(variant), dtype, false)
                        .into_iter()
                        .chain(bwd_launches(&dev, &bp, kernel_gates(variant), dtype));
                    for l in launches {
                        l.check_grid()
                            .unwrap_or_else(|e| panic!("{dims:?} L={chunk}: {e}"));
                        assert!(dev.fits(l.smem), "{}: {dims:?} L={chunk}", l.name);
                    }
                }
            }
        }
        // Both kinds occurred in numbers (the distribution is doing its job).
        eprintln!("{accepted} accepted, {rejected} rejected");
        assert!(
            accepted > 1_000 && rejected > 1_000,
            "{accepted} accepted, {rejected} rejected"
        );
    }

    /// Slot lists of every size against every pool size: no panic, and what is accepted is
    /// in range and distinct (what the kernels rely on to update the pool in place).
    #[test]
    fn slot_lists_are_checked_without_panicking() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(22);
        for _ in 0..20_000 {
            let batch = edgy(&mut rng, 0..=8).min(64);
            let num_slots = edgy(&mut rng, 0..=16);
            let slots: Vec<u32> = (0..rng.gen_range(0..=10))
                .map(|_| {
                    if rng.gen_bool(0.1) {
                        u32::MAX
                    } else {
                        rng.gen_range(0..20)
                    }
                })
                .collect();
            let ok = std::panic::catch_unwind(|| crate::check_slots(&slots, batch, num_slots))
                .unwrap_or_else(|_| {
                    panic!("check_slots panicked on {slots:?}, {batch}, {num_slots}")
                });
            if ok.is_ok() {
                assert_eq!(slots.len(), batch);
                let mut sorted = slots.clone();
                sorted.sort_unstable();
                sorted.dedup();
                assert_eq!(sorted.len(), slots.len());
                assert!(slots.iter().all(|&s| (s as usize) < num_slots));
            }
        }
    }

    /// Every launch of the forward and the backward plan fits the shared memory of each card's
    /// limit set, at every head shape, chunk size, variant and dtype: a smaller card gets
    /// kernels that fit (never a launch failure). On Hopper the plan keeps its fast kernels
    /// (the one-kernel fused forward and chunk gradients, and `wgmma` where each applies).
    #[test]
    fn every_limit_set_gets_a_plan_that_fits() {
        let variants = [
            Variant::Exp,
            Variant::Sig { normalize: true },
            Variant::Sig { normalize: false },
        ];
        for dev in Device::LIMIT_SETS {
            for chunk in CHUNK_SIZES {
                for dqk in (16..=512).step_by(16) {
                    for dhv in (16..=512).step_by(16) {
                        let fp = FwdParams {
                            bh: 4,
                            s: 4 * chunk,
                            dqk,
                            dhv,
                            chunk,
                            num_chunks: 4,
                            seqs: 1,
                            ..Default::default()
                        };
                        let bp = BwdParams {
                            bh: 4,
                            s: 4 * chunk,
                            dqk,
                            dhv,
                            chunk,
                            num_chunks: 4,
                            seqs: 1,
                            exact: 1,
                            ..Default::default()
                        };
                        for variant in variants {
                            let gates = kernel_gates(variant);
                            for dtype in [Dtype::Bf16, Dtype::F16, Dtype::F32] {
                                let launches = fwd_launches(&dev, &fp, gates, dtype, false)
                                    .into_iter()
                                    .chain(bwd_launches(&dev, &bp, gates, dtype));
                                for l in launches {
                                    assert!(
                                        dev.fits(l.smem),
                                        "{}: {} bytes on {dev:?} (L={chunk}, {dqk}/{dhv})",
                                        l.name,
                                        l.smem
                                    );
                                    assert!(l.check_grid().is_ok());
                                }
                            }
                        }
                        let hopper = dev == Device::HOPPER;
                        if hopper {
                            assert_eq!(
                                fwd::use_fused(&dev, chunk, dqk, dhv),
                                fwd::fused::applies(chunk, dqk, dhv)
                            );
                            assert_eq!(
                                bwd::use_chunk(&dev, chunk, dqk, dhv),
                                bwd::chunk::applies(chunk, dqk, dhv)
                            );
                            assert_eq!(
                                bwd::use_state_wg(&dev, chunk, dqk, dhv),
                                bwd::state_wg::applies(chunk, dqk, dhv)
                            );
                        } else {
                            assert!(!bwd::use_state_wg(&dev, chunk, dqk, dhv));
                            assert_ne!(
                                fwd::output_kernel(&dev, chunk, dqk, dhv),
                                fwd::FwdKernel::ChunkOutputWg
                            );
                        }
                    }
                }
            }
        }
        // The 99 KB cards lose the one-kernel paths; the A100 keeps none of the ~200 KB kernels.
        let small = Device::SMALL_SMEM_99K;
        assert!(!fwd::use_fused(&small, 128, 128, 128) && !bwd::use_chunk(&small, 128, 128, 128));
        assert_eq!(
            fwd::state_kernel(&Device::AMPERE_A100, 512, 512),
            fwd::FwdKernel::ChunkState
        );
        assert_eq!(
            fwd::state_kernel(&Device::PORTABLE_227K, 512, 512),
            fwd::FwdKernel::ChunkStateWide
        );
        assert_eq!(
            fwd::state_kernel(&Device::HOPPER, 512, 512),
            fwd::FwdKernel::ChunkStateWg
        );
    }

    /// The forward's and the step's pointer lists through the check: what the GPU tests check
    /// on a device (a misaligned q, a null h), here on the CPU, plus optional pointers.
    #[test]
    fn pointer_lists_name_the_null_or_misaligned_pointer() {
        use tfla_params::fwd::FwdPointers;
        use tfla_params::step::StepPointers;
        let arg = |r: Result<()>| match r {
            Err(Error::Invalid { arg, .. }) => arg,
            other => panic!("expected a typed error, got {other:?}"),
        };
        let base = 1u64 << 20; // 1 MiB: aligned for every access
        let fwd_ok = FwdPointers {
            q: base,
            k: base,
            v: base,
            i: base,
            f: base,
            h: base,
            c_states: base,
            n_states: base,
            m_states: base,
            gate_b: base,
            gate_u: base,
            gate_cm: base,
            gate_g: base,
            ..Default::default()
        };
        assert!(check_pointers(&fwd::pointers(&fwd_ok)).is_ok());
        assert_eq!(
            arg(check_pointers(&fwd::pointers(&FwdPointers {
                q: base + 2,
                ..fwd_ok
            }))),
            "q"
        );
        assert_eq!(
            arg(check_pointers(&fwd::pointers(&FwdPointers {
                h: 0,
                ..fwd_ok
            }))),
            "h"
        );
        assert_eq!(
            arg(check_pointers(&fwd::pointers(&FwdPointers {
                c0: base + 8,
                ..fwd_ok
            }))),
            "c0"
        );
        assert!(
            check_pointers(&fwd::pointers(&FwdPointers {
                c_final: base + 8,
                ..fwd_ok
            }))
            .is_ok()
        );
        let step_ok = StepPointers {
            q: base,
            k: base,
            v: base,
            i: base,
            f: base,
            c: base,
            n: base,
            m: base,
            h: base,
            tiles_done: base,
            slots: 0,
        };
        let step = |p: &StepPointers| check_pointers(&tfla_params::step::pointers(p, 2));
        assert!(step(&step_ok).is_ok());
        assert_eq!(
            arg(step(&StepPointers {
                v: base + 4,
                ..step_ok
            })),
            "v"
        );
        assert_eq!(
            arg(step(&StepPointers {
                tiles_done: 0,
                ..step_ok
            })),
            "tiles_done"
        );
        assert_eq!(
            arg(step(&StepPointers {
                slots: base + 2,
                ..step_ok
            })),
            "slots"
        );
    }

    #[test]
    fn grids_beyond_cuda_limits_are_typed_errors() {
        let launch = |grid| Launch {
            name: "k",
            grid,
            threads: 128,
            smem: 0,
        };
        assert!(launch((1, 65_535, 65_535)).check_grid().is_ok());
        for grid in [
            (1, 65_536, 1),
            (1, 1, 65_536),
            (0, 1, 1),
            (1u32 << 31, 1, 1),
        ] {
            assert!(matches!(
                launch(grid).check_grid(),
                Err(Error::Invalid { arg: "grid", .. })
            ));
        }
    }
}
