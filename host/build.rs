//! Builds the device crate into PTX (through `tfla-ptx-build`, the same builder `cargo xtask
//! build-ptx` uses) and leaves it in OUT_DIR for `include_str!`. `TFLA_ARCH=sm_90a` selects
//! the arch-specific target.
fn main() {
    for path in tfla_ptx_build::inputs() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    println!("cargo:rerun-if-env-changed=TFLA_ARCH");
    let arch = std::env::var("TFLA_ARCH").unwrap_or_else(|_| "sm_90".into());
    let arch = tfla_ptx_build::Arch::parse(&arch).unwrap_or_else(|e| fail(&e));
    let ptx = tfla_ptx_build::build_ptx(arch).unwrap_or_else(|e| fail(&e));
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("tfla_kernels.ptx"), ptx).unwrap_or_else(|e| fail(&e));
    println!("cargo:rustc-env=TFLA_PTX_ARCH={}", arch.name());
}

fn fail(e: &dyn std::fmt::Display) -> ! {
    eprintln!("error: building tfla's kernels: {e}");
    std::process::exit(1)
}
