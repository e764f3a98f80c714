//! The device, its context, the loaded PTX module and a stream.
use crate::error::{Error, Result};
use crate::trace::{LaunchTime, Trace};
use cust::context::{Context, CurrentContext};
use cust::device::{Device, DeviceAttribute};
use cust::module::Module;
use cust::stream::{Stream, StreamFlags};
use cust::sys::{CUfunction, CUfunction_attribute_enum, CUstream};
use std::collections::{HashMap, hash_map};
use std::sync::Mutex;

/// The PTX of every tfla kernel for Hopper (sm_90a: with the `wgmma` kernels), built from
/// `kernels/` by the build script.
pub const PTX_HOPPER: &str = include_str!(concat!(env!("OUT_DIR"), "/tfla_kernels_hopper.ptx"));
/// The PTX for every card from Ampere on (sm_80: the `mma.sync` kernels; the driver compiles
/// it for whatever later card runs it).
pub const PTX_PORTABLE: &str = include_str!(concat!(env!("OUT_DIR"), "/tfla_kernels_portable.ptx"));

/// Which of the two embedded PTX modules a runtime runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PtxArch {
    /// sm_90a, on compute capability 9.0 (H100, H200).
    Sm90a,
    /// sm_80, on every other card from compute capability 8.0 on, and on Hopper when the
    /// portable path is forced.
    Sm80,
}

impl PtxArch {
    pub fn name(self) -> &'static str {
        match self {
            PtxArch::Sm90a => "sm_90a",
            PtxArch::Sm80 => "sm_80",
        }
    }

    /// The module's text.
    pub fn ptx(self) -> &'static str {
        match self {
            PtxArch::Sm90a => PTX_HOPPER,
            PtxArch::Sm80 => PTX_PORTABLE,
        }
    }
}

/// How a [`Runtime`] picks its module and plans its launches; [`RuntimeOptions::from_env`] is
/// what [`Runtime::new`] uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// Run the portable sm_80 module on a Hopper card too (to test and compare that path).
    pub portable: bool,
    /// Plan for at most this much shared memory per block (bytes) instead of what the device
    /// allows: the tile plans of a smaller card, on this one. Implies `portable` (the sm_90a
    /// module's `wgmma` kernels need Hopper's 227 KB).
    pub smem_limit: Option<u32>,
}

impl RuntimeOptions {
    /// `TFLA_PORTABLE=1` sets `portable`; `TFLA_SMEM_LIMIT_KB=99` sets `smem_limit` (99 KB).
    pub fn from_env() -> Result<Self> {
        let portable = std::env::var("TFLA_PORTABLE").is_ok_and(|v| !v.is_empty() && v != "0");
        let smem_limit = match std::env::var("TFLA_SMEM_LIMIT_KB") {
            Ok(v) => Some(
                v.trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|&kb| kb > 0)
                    .ok_or(Error::Invalid {
                        arg: "TFLA_SMEM_LIMIT_KB",
                        value: v.clone(),
                        reason: "expected a positive number of kilobytes, e.g. 99 or 163",
                    })?
                    * 1024,
            ),
            Err(_) => None,
        };
        Ok(RuntimeOptions {
            portable,
            smem_limit,
        })
    }
}

/// A CUDA device with tfla's module loaded and a stream to launch on. Kernels launched through
/// one `Runtime` run in order on its stream.
pub struct Runtime {
    // Field order is drop order: the trace's events, the module and the stream go before the
    // context they live in.
    /// The launches timed since [`Runtime::trace_launches`], while tracing is on.
    trace: Mutex<Option<Trace>>,
    module: Module,
    stream: Stream,
    device: Device,
    _ctx: Context,
    /// The module loaded.
    arch: PtxArch,
    /// What the launch plan knows of the device (shared memory per block, `wgmma`).
    plan: tfla_params::Device,
    /// Shared memory per block the device allows once a kernel opts in (or the forced limit).
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

    /// The device with this ordinal, with the options of the environment
    /// ([`RuntimeOptions::from_env`]).
    pub fn with_device(ordinal: u32) -> Result<Self> {
        Self::with_options(ordinal, RuntimeOptions::from_env()?)
    }

    /// The device with this ordinal: the sm_90a module on compute capability 9.0, the sm_80
    /// module on every other card from 8.0 on (or with `options.portable`); an older card is
    /// an [`Error::NoDevice`] naming its compute capability.
    pub fn with_options(ordinal: u32, options: RuntimeOptions) -> Result<Self> {
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
        // cust 0.3's `Context::new` retains the device's primary context, the one PyTorch and the CUDA
        // runtime use, so memory and streams of either are valid here.
        let ctx = Context::new(device).map_err(Error::cuda("cuDevicePrimaryCtxRetain"))?;
        let attr = |a| {
            device
                .get_attribute(a)
                .map_err(Error::cuda("cuDeviceGetAttribute"))
        };
        let (major, minor) = (
            attr(DeviceAttribute::ComputeCapabilityMajor)?,
            attr(DeviceAttribute::ComputeCapabilityMinor)?,
        );
        if major < 8 {
            return Err(Error::NoDevice(format!(
                "device {ordinal} has compute capability {major}.{minor}; tfla needs 8.0 or later \
                 (Ampere, Ada, Hopper, Blackwell)"
            )));
        }
        let device_smem = smem_optin(device)?;
        let max_smem_optin = options
            .smem_limit
            .map_or(device_smem, |l| l.min(device_smem));
        let portable = options.portable || options.smem_limit.is_some();
        let arch = if (major, minor) == (9, 0) && !portable {
            PtxArch::Sm90a
        } else {
            PtxArch::Sm80
        };
        let module = Module::from_ptx(arch.ptx(), &[]).map_err(Error::cuda("cuModuleLoadData"))?;
        let stream =
            Stream::new(StreamFlags::NON_BLOCKING, None).map_err(Error::cuda("cuStreamCreate"))?;
        Ok(Runtime {
            trace: Mutex::new(None),
            module,
            stream,
            device,
            _ctx: ctx,
            arch,
            plan: tfla_params::Device::new(max_smem_optin, arch == PtxArch::Sm90a),
            max_smem_optin,
            functions: Mutex::new(HashMap::new()),
        })
    }

    /// The module this runtime runs (`sm_90a` on Hopper, else `sm_80`).
    pub fn arch(&self) -> PtxArch {
        self.arch
    }

    /// What the launch plan knows of this device.
    pub fn plan_device(&self) -> tfla_params::Device {
        self.plan
    }

    /// Whether the launch plan may take entry `name` on this device: every entry of the module
    /// but, where it has `wgmma`, the `mma.sync` kernels whose `wgmma` twins run instead
    /// (`tfla_params::entries::mma_only`).
    pub fn plan_reaches(&self, name: &str) -> bool {
        !(self.plan.wgmma && tfla_params::entries::mma_only(name))
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

    /// The entry points this runtime has launched (looked up) so far: what a coverage check
    /// (the sanitizer run, `tfla-sanitize`) compares with the module's entries.
    pub fn launched_entries(&self) -> Vec<&'static str> {
        let map = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<_> = map.keys().copied().collect();
        names.sort_unstable();
        names
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

    /// From now on, time every kernel this runtime launches on the GPU (an event before and
    /// after each, on the launch's stream; `crate::trace`), until [`Runtime::take_launch_trace`].
    /// Starts a new trace if one is running.
    pub fn trace_launches(&self) -> Result<()> {
        // A trace replaced here destroys its events, which needs the context.
        self.make_current()?;
        *self.trace.lock().unwrap_or_else(|e| e.into_inner()) = Some(Trace::default());
        Ok(())
    }

    /// The launches timed since [`Runtime::trace_launches`] in launch order, after waiting for
    /// the last of them; tracing stops. Empty when tracing was off.
    pub fn take_launch_trace(&self) -> Result<Vec<LaunchTime>> {
        let trace = self.trace.lock().unwrap_or_else(|e| e.into_inner()).take();
        match trace {
            Some(t) => {
                self.make_current()?;
                t.times()
            }
            None => Ok(Vec::new()),
        }
    }

    /// Runs `launch` (one kernel launch on `stream`), between two events of the trace while
    /// tracing is on. The trace's lock is held only for the launch it times, so passes of
    /// several threads sharing this runtime interleave as they do untraced.
    pub(crate) fn launch_traced(
        &self,
        name: &'static str,
        stream: CUstream,
        launch: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let mut trace = self.trace.lock().unwrap_or_else(|e| e.into_inner());
        match trace.as_mut() {
            Some(t) => t.around(name, stream, launch),
            None => {
                drop(trace);
                launch()
            }
        }
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
