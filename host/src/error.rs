//! tfla's error type. Every message names the argument and the value at fault.
use crate::dtype::Dtype;

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable CUDA device or driver.
    #[error("no CUDA device: {0}")]
    NoDevice(String),
    /// A CUDA driver call failed.
    #[error("CUDA error in {op}: {source}")]
    Cuda {
        op: &'static str,
        #[source]
        source: cust::error::CudaError,
    },
    /// A raw driver call (one cust does not wrap, or a launch) failed with this `CUresult`.
    #[error("CUDA error in {op}: {name} (CUresult {code})")]
    Driver {
        op: &'static str,
        code: u32,
        name: String,
    },
    /// Device memory could not be allocated.
    #[error("out of GPU memory allocating `{arg}` ({bytes} bytes)")]
    OutOfMemory { arg: &'static str, bytes: usize },
    /// A tensor's shape does not match what the other arguments imply.
    #[error("`{arg}` has shape {got:?}, expected {expected:?}")]
    Shape {
        arg: &'static str,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    /// A tensor has the wrong element type.
    #[error("`{arg}` has dtype {got:?}, expected {expected}")]
    Dtype {
        arg: &'static str,
        expected: &'static str,
        got: Dtype,
    },
    /// A head dimension the kernels do not support.
    #[error("`{arg}` = {value} is not supported: head dims must be multiples of 16 in 16..=512")]
    HeadDim { arg: &'static str, value: usize },
    /// A chunk size the kernels do not support.
    #[error("`chunk_size` = {value} is not supported: expected one of {supported:?}")]
    ChunkSize {
        value: usize,
        supported: &'static [u32],
    },
    /// Any other invalid argument.
    #[error("`{arg}` = {value} is invalid: {reason}")]
    Invalid {
        arg: &'static str,
        value: String,
        reason: &'static str,
    },
    /// A kernel needs more shared memory per block than the device offers.
    #[error(
        "kernel `{kernel}` needs {requested} bytes of shared memory per block, the device offers \
         {available} (DQK and chunk size set it)"
    )]
    SharedMemory {
        kernel: &'static str,
        requested: u32,
        available: u32,
    },
    /// A kernel name that is not in the registry.
    #[error("unknown kernel `{name}`; registered: {registered}")]
    UnknownKernel { name: String, registered: String },
    /// A .safetensors file that cannot be used.
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
}

impl Error {
    /// Wraps a CUDA error from `op`, turning "no device" conditions into [`Error::NoDevice`].
    /// `Ok` for `CUDA_SUCCESS`, else [`Error::Driver`] with the driver's name of the code.
    pub(crate) fn check_driver(op: &'static str, code: cust::sys::CUresult) -> Result<()> {
        if code == cust::sys::cudaError_enum::CUDA_SUCCESS {
            return Ok(());
        }
        let mut ptr = std::ptr::null();
        // SAFETY: cuGetErrorName stores a pointer to a static C string (or fails, leaving null).
        unsafe { cust::sys::cuGetErrorName(code, &mut ptr) };
        let name = if ptr.is_null() {
            "unknown".into()
        } else {
            // SAFETY: non-null: a NUL-terminated static string owned by the driver.
            unsafe { std::ffi::CStr::from_ptr(ptr) }
                .to_string_lossy()
                .into_owned()
        };
        Err(Error::Driver {
            op,
            code: code as u32,
            name,
        })
    }

    pub(crate) fn cuda(op: &'static str) -> impl FnOnce(cust::error::CudaError) -> Error {
        use cust::error::CudaError as E;
        move |source| match source {
            E::NoDevice | E::InvalidDevice | E::NotInitialized => {
                Error::NoDevice(format!("{op}: {source}"))
            }
            _ => Error::Cuda { op, source },
        }
    }
}
