//! Every kernel of the module as the GPU's driver compiled it: no local memory (no register
//! spills, no stack). `tests/ptx.rs` checks the same with a local `ptxas`, but the driver
//! compiles the PTX itself at load time with its own compiler version, and at the 255-register
//! limit the two can differ: a kernel reported spill-free here spilled there (ncu: 28 M local
//! requests, 2.6× slower) before its register demand was brought down.
//!
//! Checks the module the runtime loaded (sm_90a on Hopper; `TFLA_PORTABLE=1` for the sm_80
//! one). Needs an NVIDIA GPU: `#[ignore]`d so a machine without one reports it as ignored;
//! run it with `cargo test -- --include-ignored` (the bundle does).
mod common;

use common::runtime;
use tfla_ptx_build::entry_points;

#[test]
#[ignore = "needs an NVIDIA GPU (compute capability 8.0 or later); run with --include-ignored"]
fn no_kernel_uses_local_memory_as_the_driver_compiled_it() {
    let rt = runtime();
    let entries = entry_points(rt.arch().ptx());
    assert!(!entries.is_empty());
    let mut bad = Vec::new();
    for name in &entries {
        let r = rt.kernel_resources(name).unwrap();
        eprintln!(
            "{name}: {} registers, {} B local",
            r.registers, r.local_bytes
        );
        if r.local_bytes != 0 {
            bad.push(format!(
                "{name}: {} B local ({} registers)",
                r.local_bytes, r.registers
            ));
        }
    }
    assert!(bad.is_empty(), "kernels with local memory: {bad:?}");
}
