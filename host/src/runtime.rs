//! The device, its context, the loaded PTX module and a stream.
use crate::error::{Error, Result};
use cust::context::{Context, CurrentContext};
use cust::device::{Device, DeviceAttribute};
use cust::module::Module;
use cust::stream::{Stream, StreamFlags};
use cust::sys::{CUfunction, CUfunction_attribute_enum};
use std::collections::{HashMap, hash_map};
use std::sync::Mutex;

/// The PTX of every tfla kernel, built from `kernels/` by the build script.
pub const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/tfla_kernels.ptx"));
/// The architecture the embedded PTX targets (`sm_90a`, or `sm_90` with `TFLA_ARCH=sm_90`).
pub const PTX_ARCH: &str = env!("TFLA_PTX_ARCH");
/// Whether the embedded PTX has the `wgmma` kernels (an sm_90a build; `host/build.rs`).
pub const WGMMA: bool = cfg!(tfla_wgmma);

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
    /// Entry points looked up so far, with the dynamic shared memory each was opted in to: a
    /// launch then costs one hash lookup instead of a module lookup and an attribute call (a
    /// generation step is ~20 µs of GPU time, so the host side of a launch counts).
    functions: Mutex<HashMap<&'static str, Entry>>,
}

/// Per-thread resources of a kernel as the driver compiled it ([`Runtime::kernel_resources`]).
#[derive(Clone, Copy, Debug)]
pub struct KernelResources {
    pub registers: u32,
    /// Local memory per thread in bytes: register spills and stack.
    pub local_bytes: u32,
}

/// A looked-up entry point of the runtime's module and the dynamic shared memory it may use.
struct Entry {
    function: CUfunction,
    smem_limit: u32,
}

// SAFETY: a CUfunction is a handle into the module, valid in any thread that has the module's
// context current (every launch makes that so); the map is only touched under its mutex.
unsafe impl Send for Entry {}

impl Runtime {
    /// Device 0.
    pub fn new() -> Result<Self> {
        Self::with_device(0)
    }

    /// The device with this ordinal.
    pub fn with_device(ordinal: u32) -> Result<Self> {
        // libcuda is loaded here, not linked (`tfla-driver`): without a driver this is the error.
        tfla_driver::load().map_err(Error::NoDevice)?;
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
            functions: Mutex::new(HashMap::new()),
        })
    }

    /// Shared memory per block the device allows a kernel that opts in (227 KiB on Hopper).
    pub fn max_shared_memory_per_block(&self) -> u32 {
        self.max_smem_optin
    }

    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    /// The runtime's stream as the driver's handle, what the `_raw` entry points take (they
    /// take any stream of the device's primary context: a framework's too).
    pub fn raw_stream(&self) -> cust::sys::CUstream {
        self.stream.as_inner()
    }

    pub(crate) fn module(&self) -> &Module {
        &self.module
    }

    /// The entry point `name`, allowed `smem` bytes of dynamic shared memory (the caller checked
    /// `smem` against the device). Looked up and opted in once per runtime; a later launch with
    /// more shared memory raises the opt-in.
    pub(crate) fn function(&self, name: &'static str, smem: u32) -> Result<CUfunction> {
        let mut map = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        let entry = match map.entry(name) {
            hash_map::Entry::Occupied(e) => e.into_mut(),
            hash_map::Entry::Vacant(e) => {
                let f = self
                    .module
                    .get_function(name)
                    .map_err(Error::cuda("cuModuleGetFunction"))?;
                e.insert(Entry {
                    function: f.to_raw(),
                    smem_limit: 0,
                })
            }
        };
        // The default limit (48 KiB) needs no opt-in; above it, raise the attribute once.
        if smem > entry.smem_limit.max(48 << 10) {
            use CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES as MAX_DYN;
            // SAFETY: a live function of this runtime's module; `smem` is within the device's
            // opt-in limit (checked by the caller).
            let code =
                unsafe { cust::sys::cuFuncSetAttribute(entry.function, MAX_DYN, smem as i32) };
            Error::check_driver("cuFuncSetAttribute", code)?;
            entry.smem_limit = smem;
        }
        Ok(entry.function)
    }

    /// What the driver's compiler made of entry point `name` of the module: registers per
    /// thread and local memory per thread (spills and stack; 0 is the norm for every tfla
    /// kernel). The driver compiles the PTX itself at load time, so these can differ from a
    /// local `ptxas` report (`cargo xtask build-ptx`).
    pub fn kernel_resources(&self, name: &str) -> Result<KernelResources> {
        use cust::function::FunctionAttribute as A;
        let f = self
            .module
            .get_function(name)
            .map_err(Error::cuda("cuModuleGetFunction"))?;
        let get = |a| {
            f.get_attribute(a)
                .map(|v| v as u32)
                .map_err(Error::cuda("cuFuncGetAttribute"))
        };
        Ok(KernelResources {
            registers: get(A::NumRegisters)?,
            local_bytes: get(A::LocalSizeBytes)?,
        })
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
    Error::check_driver("cuDeviceGetAttribute", code)?;
    Ok(value as u32)
}
