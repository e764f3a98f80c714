//! The card's SM clock, and whether the driver holds it down for power, sampled through NVML
//! while the benchmark times.
//!
//! At the wide heads tfla's kernels back to back draw an H100 to its power limit (700 W): the
//! driver lowers the SM clock (far below its 1980 MHz maximum, reason "SW power cap"; the
//! measurements are in BENCHMARKS.md, "Power") and a row timed then runs slower for a reason outside its kernels, which under
//! ncu (one kernel at a time, idle between) never shows. Which rows land in a capped window
//! depends on what ran before them, so the benchmark says it per row. NVML is loaded at run
//! time like libcuda (`tfla-driver`); where it is missing nothing is sampled and the columns
//! say so.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// `nvmlClocksEventReasons` bits: the SM clock held for power (the driver's power cap, the
/// hardware's power brake).
const POWER_REASONS: u64 = 0x4 | 0x80;
/// `NVML_CLOCK_SM`.
const CLOCK_SM: u32 = 1;

#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    sm_mhz: u32,
    power_capped: bool,
}

/// The SM clock over one timed window.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub mean_sm_mhz: f64,
    pub min_sm_mhz: u32,
    /// The fraction of the window's samples in which the clock was held for power.
    pub power_capped: f64,
}

impl Window {
    /// A row's column: the mean MHz, `*` where the clock was held for power in at least a
    /// tenth of the window.
    pub fn column(window: Option<Window>) -> String {
        match window {
            Some(w) => format!("{:.0}{}", w.mean_sm_mhz, if w.capped() { "*" } else { "" }),
            None => "-".into(),
        }
    }

    pub fn capped(&self) -> bool {
        self.power_capped >= 0.1
    }

    /// `, "{key}_sm_mhz": …, "{key}_min_sm_mhz": …, "{key}_power_capped": …` for a JSON row.
    pub fn json(window: Option<Window>, key: &str) -> String {
        window.map_or(String::new(), |w| {
            format!(
                ", \"{key}_sm_mhz\": {:.0}, \"{key}_min_sm_mhz\": {}, \"{key}_power_capped\": {:.2}",
                w.mean_sm_mhz, w.min_sm_mhz, w.power_capped
            )
        })
    }
}

type NvmlDevice = *mut std::ffi::c_void;

/// The card's NVML handle and the two readers the sampler calls.
struct Nvml {
    _lib: libloading::Library,
    dev: NvmlDevice,
    clock: unsafe extern "C" fn(NvmlDevice, u32, *mut u32) -> i32,
    reasons: unsafe extern "C" fn(NvmlDevice, *mut u64) -> i32,
}

// SAFETY: NVML's calls are thread-safe and its device handles valid in any thread; the
// sampler's thread is the only user after `open`.
unsafe impl Send for Nvml {}

impl Nvml {
    fn open(pci_bus_id: &str) -> Result<Self, String> {
        let rc = |name: &str, rc: i32| {
            if rc == 0 {
                Ok(())
            } else {
                Err(format!("NVML {name} returned {rc}"))
            }
        };
        // SAFETY: loading NVML runs its initializers only; the symbols are NVML's C API with
        // the signatures of nvml.h (handles are opaque pointers, results ints).
        unsafe {
            let lib = libloading::Library::new("libnvidia-ml.so.1")
                .map_err(|e| format!("libnvidia-ml.so.1: {e}"))?;
            let symbol = |name: &str| format!("NVML {name} missing");
            let init: unsafe extern "C" fn() -> i32 =
                *lib.get(b"nvmlInit_v2").map_err(|_| symbol("nvmlInit_v2"))?;
            rc("nvmlInit_v2", init())?;
            let by_bus: unsafe extern "C" fn(*const std::ffi::c_char, *mut NvmlDevice) -> i32 =
                *lib.get(b"nvmlDeviceGetHandleByPciBusId_v2")
                    .map_err(|_| symbol("nvmlDeviceGetHandleByPciBusId_v2"))?;
            let bus = std::ffi::CString::new(pci_bus_id).map_err(|e| e.to_string())?;
            let mut dev: NvmlDevice = std::ptr::null_mut();
            rc(
                "nvmlDeviceGetHandleByPciBusId_v2",
                by_bus(bus.as_ptr(), &mut dev),
            )?;
            let clock = *lib
                .get(b"nvmlDeviceGetClockInfo")
                .map_err(|_| symbol("nvmlDeviceGetClockInfo"))?;
            // The reasons' older name is in every driver, the newer one from r535 on.
            let reasons = *lib
                .get(b"nvmlDeviceGetCurrentClocksEventReasons")
                .or_else(|_| lib.get(b"nvmlDeviceGetCurrentClocksThrottleReasons"))
                .map_err(|_| symbol("nvmlDeviceGetCurrentClocksEventReasons"))?;
            let nvml = Nvml {
                _lib: lib,
                dev,
                clock,
                reasons,
            };
            nvml.read()
                .ok_or("NVML could not read the SM clock or its reasons")?;
            Ok(nvml)
        }
    }

    fn read(&self) -> Option<Sample> {
        let (mut mhz, mut r) = (0u32, 0u64);
        // SAFETY: `dev` stays valid while NVML is initialized (never shut down here); both
        // calls write only through the pointers given.
        let ok = unsafe {
            (self.clock)(self.dev, CLOCK_SM, &mut mhz) == 0 && (self.reasons)(self.dev, &mut r) == 0
        };
        ok.then(|| Sample {
            at: Instant::now(),
            sm_mhz: mhz,
            power_capped: r & POWER_REASONS != 0,
        })
    }
}

/// A thread reading the clock every `period` until dropped.
pub struct ClockSampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ClockSampler {
    /// Samples the card at `pci_bus_id` (as `cuDeviceGetPCIBusId` writes it); the error says
    /// why not (no NVML, no such card).
    pub fn start(pci_bus_id: &str, period: Duration) -> Result<Self, String> {
        let nvml = Nvml::open(pci_bus_id)?;
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (samples, stop) = (samples.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(s) = nvml.read() {
                        samples.lock().unwrap().push(s);
                    }
                    std::thread::sleep(period);
                }
            })
        };
        Ok(ClockSampler {
            samples,
            stop,
            thread: Some(thread),
        })
    }

    /// The samples from `from` to now; older ones are dropped (windows are asked in order).
    pub fn window_since(&self, from: Instant) -> Option<Window> {
        let mut samples = self.samples.lock().unwrap();
        samples.retain(|s| s.at >= from);
        let n = samples.len();
        (n > 0).then(|| Window {
            mean_sm_mhz: samples.iter().map(|s| s.sm_mhz as f64).sum::<f64>() / n as f64,
            min_sm_mhz: samples.iter().map(|s| s.sm_mhz).min().unwrap_or(0),
            power_capped: samples.iter().filter(|s| s.power_capped).count() as f64 / n as f64,
        })
    }
}

impl Drop for ClockSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
