//! Builds the device crate into PTX (through `tfla-ptx-build`, the same builder `cargo xtask
//! build-ptx` uses) and leaves it in OUT_DIR for `include_str!`. `TFLA_ARCH=sm_90` selects the
//! portable target (no `wgmma` kernels) instead of the default sm_90a.
fn main() {
    for path in tfla_ptx_build::inputs() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    println!("cargo:rerun-if-env-changed=TFLA_ARCH");
    let arch = match std::env::var("TFLA_ARCH") {
        Ok(a) => tfla_ptx_build::Arch::parse(&a).unwrap_or_else(|e| fail(&e)),
        Err(_) => tfla_ptx_build::Arch::DEFAULT,
    };
    let ptx = tfla_ptx_build::build_ptx(arch).unwrap_or_else(|e| fail(&e));
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("tfla_kernels.ptx"), ptx).unwrap_or_else(|e| fail(&e));
    println!("cargo:rustc-env=TFLA_PTX_ARCH={}", arch.name());
    // The `wgmma` kernels exist in sm_90a builds only.
    println!("cargo::rustc-check-cfg=cfg(tfla_wgmma)");
    if arch == tfla_ptx_build::Arch::Sm90a {
        println!("cargo:rustc-cfg=tfla_wgmma");
    }
}

fn fail(e: &dyn std::fmt::Display) -> ! {
    eprintln!("error: building tfla's kernels: {e}");
    std::process::exit(1)
}
