//! The one place kernels are launched: looks up the entry point, raises its dynamic shared
//! memory limit, checks it against the device, and launches on a stream.
use crate::error::{Error, Result};
use crate::runtime::Runtime;
use cust::function::{BlockSize, GridSize};
use cust::stream::Stream;
use std::ffi::c_void;

/// One kernel launch: entry point, grid, block, dynamic shared memory.
pub(crate) struct Launch {
    pub name: &'static str,
    pub grid: (u32, u32, u32),
    pub threads: u32,
    pub smem: u32,
}

impl Launch {
    /// Fails with [`Error::SharedMemory`] when the device cannot give the block its memory.
    pub fn check(&self, rt: &Runtime) -> Result<()> {
        if self.smem > rt.max_smem_optin {
            return Err(Error::SharedMemory {
                kernel: self.name,
                requested: self.smem,
                available: rt.max_smem_optin,
            });
        }
        Ok(())
    }

    /// Launches with `params` (a `#[repr(C)]` struct passed by value) as the only argument.
    ///
    /// # Safety
    /// `params` holds device pointers valid for what the kernel reads and writes at the
    /// launch's dimensions; the kernel's parameter type is `P`.
    pub unsafe fn run<P>(&self, rt: &Runtime, stream: &Stream, params: &P) -> Result<()> {
        self.check(rt)?;
        let f = rt
            .module()
            .get_function(self.name)
            .map_err(Error::cuda("cuModuleGetFunction"))?;
        use cust::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES as MAX_DYN;
        // SAFETY: `f` is a live function of the runtime's module; the value was checked above.
        let code = unsafe { cust::sys::cuFuncSetAttribute(f.to_raw(), MAX_DYN, self.smem as i32) };
        if code != cust::sys::cudaError_enum::CUDA_SUCCESS {
            return Err(Error::Driver {
                op: "cuFuncSetAttribute",
                code: code as u32,
            });
        }
        let (x, y, z) = self.grid;
        let args = [params as *const P as *mut c_void];
        // SAFETY: forwarded to the caller (pointer validity); grid and block come from the
        // launch-configuration crate for these parameters.
        unsafe {
            stream
                .launch(
                    &f,
                    GridSize::xyz(x, y, z),
                    BlockSize::x(self.threads),
                    self.smem,
                    &args,
                )
                .map_err(Error::cuda("cuLaunchKernel"))
        }
    }
}
