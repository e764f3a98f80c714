//! tfla-wgmma-probe: runs the `wgmma` probe kernel (`kernels/src/probe.rs`: one warpgroup,
//! C = A·B for 64 × 64 × 64 bf16 with both operands in shared memory) on random inputs and
//! compares C with a CPU product. Needs a build for sm_90a (`TFLA_ARCH=sm_90a cargo build
//! --release --bin tfla-wgmma-probe`) and a Hopper GPU; exits 0 only if C matches.
use cust::module::Module;
use cust::prelude::*;
use half::bf16;
use rand::Rng;
use std::process::ExitCode;
use tfla::{Runtime, Tensor};

const T: usize = 64;

fn run() -> Result<f64, String> {
    if tfla::runtime::PTX_ARCH != "sm_90a" {
        return Err(format!(
            "this build's kernels are for {}: build with TFLA_ARCH=sm_90a",
            tfla::runtime::PTX_ARCH
        ));
    }
    let rt = Runtime::new().map_err(|e| e.to_string())?;
    let module = Module::from_ptx(tfla::runtime::PTX, &[]).map_err(|e| e.to_string())?;
    let f = module
        .get_function("tfla_probe_wgmma_bf16")
        .map_err(|e| e.to_string())?;
    let mut rng = rand::thread_rng();
    let mut draw = || -> Vec<bf16> {
        (0..T * T)
            .map(|_| bf16::from_f32(rng.gen_range(-1.0f32..1.0)))
            .collect()
    };
    let (a, bt) = (draw(), draw());
    let da = Tensor::from_bf16(&rt, &a, &[T, T]).map_err(|e| e.to_string())?;
    let db = Tensor::from_bf16(&rt, &bt, &[T, T]).map_err(|e| e.to_string())?;
    let mut dc = Tensor::zeros(&rt, tfla::Dtype::F32, &[T, T]).map_err(|e| e.to_string())?;
    dc.fill_nan().map_err(|e| e.to_string())?;
    let stream = rt.stream();
    let smem = (2 * T * T * 2) as u32;
    // SAFETY: the three buffers hold the matrices the kernel reads and writes; one block of
    // 128 threads with the shared memory it documents.
    unsafe {
        launch!(f<<<1, 128, smem, stream>>>(da.device_ptr(), db.device_ptr(), dc.device_ptr()))
            .map_err(|e| e.to_string())?;
    }
    stream.synchronize().map_err(|e| e.to_string())?;
    let c = dc.to_f32_vec().map_err(|e| e.to_string())?;
    let mut worst = 0f64;
    for r in 0..T {
        for n in 0..T {
            let want: f64 = (0..T)
                .map(|k| a[r * T + k].to_f64() * bt[n * T + k].to_f64())
                .sum();
            let got = c[r * T + n] as f64;
            let err = if got.is_nan() {
                f64::INFINITY
            } else {
                (got - want).abs() / (1.0 + want.abs())
            };
            worst = worst.max(err);
        }
    }
    Ok(worst)
}

fn main() -> ExitCode {
    match run() {
        Ok(err) if err < 1e-4 => {
            println!("wgmma probe: C matches the CPU product (worst relative error {err:.2e})");
            ExitCode::SUCCESS
        }
        Ok(err) => {
            println!("wgmma probe: MISMATCH (worst relative error {err:.2e})");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("wgmma probe: {e}");
            ExitCode::from(2)
        }
    }
}
