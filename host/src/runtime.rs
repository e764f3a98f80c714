//! The device, its context, the loaded PTX module and a stream.
use crate::error::{Error, Result};
use cust::context::{Context, CurrentContext};
use cust::device::{Device, DeviceAttribute};
use cust::module::Module;
use cust::stream::{Stream, StreamFlags};

/// The PTX of every tfla kernel, built from `kernels/` by the build script.
pub const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/tfla_kernels.ptx"));
/// The architecture the embedded PTX targets (`sm_90`, or `sm_90a` with `TFLA_ARCH`).
pub const PTX_ARCH: &str = env!("TFLA_PTX_ARCH");

/// A CUDA device with tfla's module loaded and a stream to launch on. Kernels launched through
/// one `Runtime` run in order on its stream.
pub struct Runtime {
    // Field order is drop order: the module and stream go before the context they live in.
    module: Module,
    stream: Stream,
    device: Device,
    _ctx: Context,
    /// Shared memory per block the device allows once a kernel opts in.
    pub(crate) max_smem_optin: u32,
}

impl Runtime {
    /// Device 0.
    pub fn new() -> Result<Self> {
        Self::with_device(0)
    }

    /// The device with this ordinal.
    pub fn with_device(ordinal: u32) -> Result<Self> {
        cust::init(cust::CudaFlags::empty()).map_err(Error::cuda("cuInit"))?;
        let count = Device::num_devices().map_err(Error::cuda("cuDeviceGetCount"))?;
        if ordinal >= count {
            return Err(Error::NoDevice(format!(
                "device {ordinal} requested, {count} present"
            )));
        }
        let device = Device::get_device(ordinal).map_err(Error::cuda("cuDeviceGet"))?;
        let ctx = Context::new(device).map_err(Error::cuda("cuCtxCreate"))?;
        let major = device
            .get_attribute(DeviceAttribute::ComputeCapabilityMajor)
            .map_err(Error::cuda("cuDeviceGetAttribute"))?;
        if major < 9 {
            return Err(Error::NoDevice(format!(
                "device {ordinal} has compute capability {major}.x; tfla's PTX targets {PTX_ARCH}"
            )));
        }
        let module = Module::from_ptx(PTX, &[]).map_err(Error::cuda("cuModuleLoadData"))?;
        let stream =
            Stream::new(StreamFlags::NON_BLOCKING, None).map_err(Error::cuda("cuStreamCreate"))?;
        let max_smem_optin = smem_optin(device)?;
        Ok(Runtime {
            module,
            stream,
            device,
            _ctx: ctx,
            max_smem_optin,
        })
    }

    /// Shared memory per block the device allows a kernel that opts in (227 KiB on Hopper).
    pub fn max_shared_memory_per_block(&self) -> u32 {
        self.max_smem_optin
    }

    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    pub(crate) fn module(&self) -> &Module {
        &self.module
    }

    /// Device name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn device_name(&self) -> Result<String> {
        self.device.name().map_err(Error::cuda("cuDeviceGetName"))
    }

    /// Waits for all work on the stream.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(Error::cuda("cuStreamSynchronize"))
    }

    /// Makes this runtime's context current on the calling thread (needed when a runtime is
    /// used from a thread other than the one that created it).
    pub fn make_current(&self) -> Result<()> {
        CurrentContext::set_current(&self._ctx).map_err(Error::cuda("cuCtxSetCurrent"))
    }
}

/// `CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN`, which cust's enum lacks.
fn smem_optin(device: Device) -> Result<u32> {
    use cust::sys::CUdevice_attribute_enum::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN as OPTIN;
    let mut value = 0i32;
    // SAFETY: writes one int for a valid device handle.
    let code = unsafe { cust::sys::cuDeviceGetAttribute(&mut value, OPTIN, device.as_raw()) };
    if code != cust::sys::cudaError_enum::CUDA_SUCCESS {
        return Err(Error::Driver {
            op: "cuDeviceGetAttribute",
            code: code as u32,
        });
    }
    Ok(value as u32)
}
