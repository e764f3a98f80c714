//! The one place kernels are launched: checks the grid and the dynamic shared memory against
//! the device, and launches the runtime's cached entry point on a stream.
use crate::error::{Error, Result};
use crate::runtime::Runtime;
use cust::sys::CUstream;
use std::ffi::c_void;

/// One kernel launch: entry point, grid, block, dynamic shared memory.
pub(crate) struct Launch {
    pub name: &'static str,
    pub grid: (u32, u32, u32),
    pub threads: u32,
    pub smem: u32,
}

impl Launch {
    /// Fails with [`Error::SharedMemory`] when the device cannot give the block its memory, and
    /// with [`Error::Invalid`] when the grid exceeds CUDA's limits (a very long S puts its row
    /// tiles on the y axis, B·NH on y or z).
    pub fn check(&self, rt: &Runtime) -> Result<()> {
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
        const MAX_X: u32 = i32::MAX as u32;
        const MAX_YZ: u32 = 65_535;
        let (x, y, z) = self.grid;
        if x > MAX_X || y > MAX_YZ || z > MAX_YZ || x == 0 || y == 0 || z == 0 {
            return Err(Error::Invalid {
                arg: "grid",
                value: format!("{:?} for `{}`", self.grid, self.name),
                reason: "outside CUDA's grid limits (x < 2^31, y and z ≤ 65535, none 0): \
                         S or B·NH too large for one call",
            });
        }
        Ok(())
    }

    /// Launches with `params` (a `#[repr(C)]` struct passed by value) as the only argument.
    ///
    /// # Safety
    /// `params` holds device pointers valid for what the kernel reads and writes at the
    /// launch's dimensions; the kernel's parameter type is `P`.
    pub unsafe fn run<P>(&self, rt: &Runtime, stream: CUstream, params: &P) -> Result<()> {
        self.check(rt)?;
        let f = rt.function(self.name, self.smem)?;
        let (x, y, z) = self.grid;
        let mut args = [params as *const P as *mut c_void];
        // SAFETY: forwarded to the caller (pointer validity); `f` is a function of the runtime's
        // module, whose context the stream belongs to; grid and block come from the
        // launch-configuration crate for these parameters, the shared memory was checked above.
        let code = unsafe {
            cust::sys::cuLaunchKernel(
                f,
                x,
                y,
                z,
                self.threads,
                1,
                1,
                self.smem,
                stream,
                args.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        };
        Error::check_driver("cuLaunchKernel", code)
    }
}

/// The raw entry points' pointer checks: every `required` pointer non-null (typed error naming
/// it), every pointer of `aligned` (0 = absent) a multiple of its alignment in bytes (what the
/// kernels' widest access to it needs).
pub(crate) fn check_pointers(
    required: &[(&'static str, u64)],
    aligned: &[(&'static str, u64, u64)],
) -> Result<()> {
    for &(arg, p) in required {
        if p == 0 {
            return Err(Error::Invalid {
                arg,
                value: "null".into(),
                reason: "required pointer",
            });
        }
    }
    for &(arg, p, align) in aligned {
        if p % align != 0 {
            return Err(Error::Invalid {
                arg,
                value: format!("{p:#x}, needs {align}-byte alignment"),
                reason: "device pointer not aligned for the kernels' vector accesses",
            });
        }
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
    use crate::backward::{BwdPath, bwd_launches};
    use crate::forward::{fwd_launches, kernel_gates};
    use crate::{Dtype, Variant};
    use tfla_params::bwd::{self, BwdParams};
    use tfla_params::fwd::{self, FwdParams};
    use tfla_params::{CHUNK_SIZES, Device};

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
                                    .chain(bwd_launches(&dev, &bp, gates, BwdPath::of(dtype)));
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
