//! Builds the device crate into PTX twice (through `tfla-ptx-build`, the same builder `cargo
//! xtask build-ptx` uses), for Hopper (sm_90a, with the `wgmma` kernels) and for every card
//! from Ampere on (sm_80, the `mma.sync` kernels), and leaves both in OUT_DIR for
//! `include_str!`: the runtime loads the one that fits the device.
fn main() {
    for path in tfla_ptx_build::inputs() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for (arch, file) in [
        (tfla_ptx_build::Arch::DEFAULT, "tfla_kernels_hopper.ptx"),
        (tfla_ptx_build::Arch::PORTABLE, "tfla_kernels_portable.ptx"),
    ] {
        let ptx = tfla_ptx_build::build_ptx(arch).unwrap_or_else(|e| fail(&e));
        std::fs::write(out.join(file), ptx).unwrap_or_else(|e| fail(&e));
    }
}

fn fail(e: &dyn std::fmt::Display) -> ! {
    eprintln!("error: building tfla's kernels: {e}");
    std::process::exit(1)
}
