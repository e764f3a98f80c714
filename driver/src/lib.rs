//! The CUDA driver library (`libcuda.so.1`), loaded when it is first used instead of linked.
//!
//! `cust` declares the driver API as `extern "C"` functions and its build script links
//! `libcuda`. Linked, the library has to exist twice: at build time (a CUDA installation, which
//! a machine that only runs the CPU tests does not have) and when any binary starts (so a test
//! binary cannot even list its tests without an NVIDIA driver). tfla replaces the linking: the
//! workspace patches `find_cuda_helper` (the crate cust's build scripts call) with a stand-in
//! that emits no link line (`driver/find-cuda-helper`), and this crate defines every function
//! cust's bindings declare, each as one jump through a table of addresses.
//!
//! The table starts out pointing at stand-ins that return a `CUresult` error. `cuInit`, the
//! call every CUDA program begins with, loads the library (`dlopen`) and fills the table
//! (`dlsym`) first; [`load`] does the same and says why it failed. A function the installed
//! driver does not export keeps a stand-in that returns `CUDA_ERROR_NOT_SUPPORTED`.
//!
//! The jumps leave the argument registers and the stack untouched, so one stand-in per function
//! serves whatever its signature is: this list holds names only, and no signature can be
//! restated wrongly here. Every driver function returns a `CUresult` (an `int`), which is all a
//! stand-in produces.
use std::ffi::{c_int, c_uint};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicPtr, Ordering};

/// `CUDA_ERROR_NOT_INITIALIZED`: the library is not loaded (or failed to load).
const NOT_INITIALIZED: c_int = 3;
/// `CUDA_ERROR_NOT_SUPPORTED`: the installed driver does not export the function.
const NOT_SUPPORTED: c_int = 801;
/// `CUDA_ERROR_NO_DEVICE`: what `cuInit` returns when there is no driver to load.
const NO_DEVICE: c_int = 100;

extern "C" fn not_loaded() -> c_int {
    NOT_INITIALIZED
}

extern "C" fn not_exported() -> c_int {
    NOT_SUPPORTED
}

/// `cuInit` before the library is loaded: load it, then call the real `cuInit`.
extern "C" fn init_on_first_use(flags: c_uint) -> c_int {
    if load().is_err() {
        return NO_DEVICE;
    }
    let real = TABLE[Slot::cuInit as usize].load(Ordering::Acquire);
    // SAFETY: `load` put libcuda's `cuInit` (`CUresult cuInit(unsigned int)`) in this slot; or,
    // where the driver lacks it, `not_exported`, which takes no arguments and ignores `flags`.
    let real: extern "C" fn(c_uint) -> c_int = unsafe { std::mem::transmute(real) };
    real(flags)
}

macro_rules! driver_api {
    ($($name:ident)*) => {
        /// Slot indices, one per driver function.
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        #[repr(usize)]
        enum Slot { $($name),* }

        const NAMES: &[&str] = &[$(stringify!($name)),*];

        /// The address each function jumps to: a stand-in until [`load`] succeeds.
        static TABLE: [AtomicPtr<()>; NAMES.len()] = {
            let mut table = [const { AtomicPtr::new(not_loaded as *mut ()) }; NAMES.len()];
            table[Slot::cuInit as usize] = AtomicPtr::new(init_on_first_use as *mut ());
            table
        };

        $(
            #[unsafe(naked)]
            #[unsafe(no_mangle)]
            #[allow(non_snake_case)]
            #[doc = concat!("`", stringify!($name), "`: a jump to the loaded driver's function.")]
            ///
            /// # Safety
            /// Called only through cust's declaration of the driver function, with its
            /// arguments: the jump passes them on untouched.
            pub unsafe extern "C" fn $name() {
                core::arch::naked_asm!(
                    "jmp qword ptr [rip + {table} + {offset}]",
                    table = sym TABLE,
                    offset = const Slot::$name as usize * size_of::<AtomicPtr<()>>(),
                )
            }
        )*
    };
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
compile_error!("tfla-driver's jumps are written for x86-64 Linux");

include!("api.rs");

/// The loaded library, or why it could not be loaded. Kept for the life of the process: the
/// table points into it.
static LIBRARY: OnceLock<Result<libloading::Library, String>> = OnceLock::new();

/// The driver library's file name (its soname, what the NVIDIA driver installs), found on the
/// dynamic loader's search path.
pub const LIBRARY_NAME: &str = "libcuda.so.1";

/// An environment variable naming the driver library's path instead (a driver outside the
/// loader's search path; the tests' stand-in driver).
pub const LIBRARY_ENV: &str = "TFLA_LIBCUDA";

/// Loads `libcuda.so.1` and points every function at it, once per process; later calls return
/// the first call's outcome. The error says why the library could not be loaded (no NVIDIA
/// driver installed, or not on the loader's search path).
pub fn load() -> Result<(), String> {
    let loaded = LIBRARY.get_or_init(|| {
        let path = std::env::var_os(LIBRARY_ENV).unwrap_or_else(|| LIBRARY_NAME.into());
        // SAFETY: libcuda's initializers are the driver's own; loading it has no other effect.
        let lib = unsafe { libloading::Library::new(&path) }.map_err(|e| {
            format!(
                "no NVIDIA driver: cannot load {} ({e})",
                path.to_string_lossy()
            )
        })?;
        for (slot, name) in TABLE.iter().zip(NAMES) {
            // SAFETY: only the symbol's address is taken; it is called through the jumps,
            // with the signature cust declares for it.
            let address = unsafe { lib.get::<*mut ()>(name.as_bytes()) }
                .map(|symbol| *symbol)
                .unwrap_or(not_exported as *mut ());
            slot.store(address, Ordering::Release);
        }
        Ok(lib)
    });
    loaded.as_ref().map(|_| ()).map_err(Clone::clone)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The driver functions the tests call, declared as cust_raw declares them (the symbols
    // are this crate's jumps).
    unsafe extern "C" {
        #[link_name = "cuInit"]
        fn cu_init(flags: c_uint) -> c_int;
        #[link_name = "cuDriverGetVersion"]
        fn driver_get_version(version: *mut c_int) -> c_int;
        #[link_name = "cuLaunchKernel"]
        #[allow(clippy::too_many_arguments)]
        fn launch(
            f: usize,
            gx: u32,
            gy: u32,
            gz: u32,
            bx: u32,
            by: u32,
            bz: u32,
            smem: u32,
            stream: usize,
            params: usize,
            extra: usize,
        ) -> c_int;
    }

    #[test]
    fn every_name_has_its_own_slot() {
        assert_eq!(NAMES.len(), TABLE.len());
        assert_eq!(NAMES[Slot::cuInit as usize], "cuInit");
        assert_eq!(NAMES[Slot::cuLaunchKernel as usize], "cuLaunchKernel");
        let mut sorted = NAMES.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), NAMES.len(), "a driver function listed twice");
    }

    /// The jumps reach the stand-ins with the caller's arguments intact, and `cuInit` loads the
    /// library: before it, `cuDriverGetVersion` returns NOT_INITIALIZED and leaves its output
    /// alone; after it, the version is real where a driver is installed, and where none is, both
    /// `cuInit` (NO_DEVICE) and `load` (naming the library) say so. One test, because loading is
    /// once per process.
    #[test]
    fn functions_fail_cleanly_until_cu_init_loads_the_driver() {
        let mut version = -1;
        // SAFETY: the jump ends in `not_loaded`, which ignores its arguments.
        let code = unsafe { driver_get_version(&mut version) };
        assert_eq!((code, version), (NOT_INITIALIZED, -1));

        // SAFETY: cuInit(0) is valid with or without a device.
        let code = unsafe { cu_init(0) };
        match load() {
            Ok(()) => {
                // SAFETY: writes one int.
                assert_eq!(unsafe { driver_get_version(&mut version) }, 0);
                assert!(version >= 11000, "driver version {version}");
            }
            Err(why) => {
                assert_eq!(code, NO_DEVICE);
                assert!(why.contains(LIBRARY_NAME), "{why}");
                // SAFETY: still the stand-in.
                assert_eq!(unsafe { driver_get_version(&mut version) }, NOT_INITIALIZED);
            }
        }
    }

    /// A stand-in libcuda.so.1 (C, built with the system's `cc`, which the Rust toolchain
    /// links with) that checks what arrives: the jumps must hand every argument through, the
    /// six in registers and cuLaunchKernel's five on the stack, and return its results.
    const STUB: &str = r#"
#include <stdint.h>
int cuInit(unsigned flags) { return flags == 0 ? 0 : 1; }
int cuDriverGetVersion(int *v) { *v = 13000; return 0; }
int cuLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                   unsigned bz, unsigned smem, void *stream, void **params, void **extra) {
  return (uintptr_t)f == 1 && gx == 2 && gy == 3 && gz == 4 && bx == 5 && by == 6 && bz == 7
      && smem == 8 && (uintptr_t)stream == 9 && (uintptr_t)params == 10
      && (uintptr_t)extra == 11 ? 0 : 999;
}
"#;

    /// Runs in a child process of this test binary (loading is once per process) with
    /// `TFLA_LIBCUDA` naming the stand-in.
    #[test]
    fn jumps_hand_every_argument_to_the_loaded_library() {
        const CHILD: &str = "TFLA_DRIVER_STUB_CHILD";
        if std::env::var_os(CHILD).is_some() {
            // SAFETY: the stand-in's functions, with the arguments they take.
            unsafe {
                assert_eq!(cu_init(0), 0);
                let mut version = 0;
                assert_eq!(driver_get_version(&mut version), 0);
                assert_eq!(version, 13000);
                assert_eq!(launch(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11), 0);
                assert_eq!(launch(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12), 999);
            }
            // A function the stand-in does not export keeps a stand-in of its own.
            let slot = TABLE[Slot::cuCtxSynchronize as usize].load(Ordering::Acquire);
            assert_eq!(slot, not_exported as *mut (), "cuCtxSynchronize");
            return;
        }
        let dir = std::env::temp_dir().join(format!("tfla-driver-stub-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (src, lib) = (dir.join("stub.c"), dir.join("libcuda.so.1"));
        std::fs::write(&src, STUB).unwrap();
        let cc = std::process::Command::new("cc")
            .args(["-shared", "-fPIC", "-O1", "-o"])
            .arg(&lib)
            .arg(&src)
            .status()
            .expect("cc (the C compiler the Rust toolchain links with)");
        assert!(cc.success(), "building the stand-in driver failed");
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "tests::jumps_hand_every_argument_to_the_loaded_library",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .env(LIBRARY_ENV, &lib)
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let out = String::from_utf8_lossy(&child.stdout).into_owned()
            + &String::from_utf8_lossy(&child.stderr);
        assert!(child.status.success(), "child failed:\n{out}");
        assert!(out.contains("1 passed"), "the child ran no test:\n{out}");
    }
}
