//! tfla-wgmma-probe: runs the `wgmma` probe kernel (`kernels/src/probe.rs`: one warpgroup,
//! C = A·B for 64 × 64 × 64 bf16) in each of its operand forms on random inputs and compares C
//! with a CPU product, one line per form. Needs a build for sm_90a (`TFLA_ARCH=sm_90a cargo
//! build --release --bin tfla-wgmma-probe`) and a Hopper GPU. Exit status 0 when the K-major
//! forms match and, for each layout, one reading of the MN-major descriptor does.
use cust::module::Module;
use cust::prelude::*;
use half::bf16;
use rand::Rng;
use std::process::ExitCode;
use tfla::{Runtime, Tensor};

const T: usize = 64;

const MODES: [&str; 11] = [
    "SS, B K-major",
    "SS, B MN-major, LBO along K",
    "SS, B MN-major, LBO along N",
    "RS, B K-major",
    "RS, B MN-major, LBO along K",
    "RS, B MN-major, LBO along N",
    "SS, 128-byte swizzle, B K-major",
    "SS, 128-byte swizzle, B MN-major, SBO between 8-row atoms along K",
    "RS, 128-byte swizzle, B MN-major, SBO between 8-row atoms along K",
    "SS, 128-byte swizzle, B MN-major, LBO between 8-row atoms along K",
    "RS, 128-byte swizzle, B MN-major, LBO between 8-row atoms along K",
];

/// The worst relative error of C in each mode (infinite where C has a NaN).
fn run() -> Result<Vec<f64>, String> {
    if tfla::runtime::PTX_ARCH != "sm_90a" {
        return Err(format!(
            "this build's kernels are for {}: build with TFLA_ARCH=sm_90a",
            tfla::runtime::PTX_ARCH
        ));
    }
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let rt = Runtime::new().map_err(|x| e(&x))?;
    let module = Module::from_ptx(tfla::runtime::PTX, &[]).map_err(|x| e(&x))?;
    let f = module
        .get_function("tfla_probe_wgmma_bf16")
        .map_err(|x| e(&x))?;
    let mut rng = rand::thread_rng();
    let mut draw = || -> Vec<bf16> {
        (0..T * T)
            .map(|_| bf16::from_f32(rng.gen_range(-1.0f32..1.0)))
            .collect()
    };
    let (a, b) = (draw(), draw());
    let bt: Vec<bf16> = (0..T * T).map(|i| b[(i % T) * T + i / T]).collect();
    let da = Tensor::from_bf16(&rt, &a, &[T, T]).map_err(|x| e(&x))?;
    let db = Tensor::from_bf16(&rt, &b, &[T, T]).map_err(|x| e(&x))?;
    let dbt = Tensor::from_bf16(&rt, &bt, &[T, T]).map_err(|x| e(&x))?;
    let mut dc = Tensor::zeros(&rt, tfla::Dtype::F32, &[T, T]).map_err(|x| e(&x))?;
    let stream = rt.stream();
    let smem = (3 * T * (T + 8) * 2 + 1024) as u32;
    let mut worst = Vec::new();
    for mode in 0..MODES.len() as u32 {
        dc.fill_nan().map_err(|x| e(&x))?;
        // SAFETY: the buffers hold the matrices the kernel reads and writes; one block of 128
        // threads with the shared memory it documents.
        unsafe {
            launch!(f<<<1, 128, smem, stream>>>(
                da.device_ptr(),
                db.device_ptr(),
                dbt.device_ptr(),
                dc.device_ptr(),
                mode
            ))
            .map_err(|x| e(&x))?;
        }
        stream.synchronize().map_err(|x| e(&x))?;
        let c = dc.to_f32_vec().map_err(|x| e(&x))?;
        let mut w = 0f64;
        for r in 0..T {
            for n in 0..T {
                let want: f64 = (0..T)
                    .map(|k| a[r * T + k].to_f64() * b[k * T + n].to_f64())
                    .sum();
                let got = c[r * T + n] as f64;
                let err = if got.is_nan() {
                    f64::INFINITY
                } else {
                    (got - want).abs() / (1.0 + want.abs())
                };
                w = w.max(err);
            }
        }
        worst.push(w);
    }
    Ok(worst)
}

fn main() -> ExitCode {
    match run() {
        Ok(worst) => {
            let ok: Vec<bool> = worst.iter().map(|&w| w < 1e-4).collect();
            for (i, (name, w)) in MODES.iter().zip(&worst).enumerate() {
                let verdict = if ok[i] { "matches" } else { "MISMATCH" };
                println!("mode {i} ({name}): {verdict}, worst relative error {w:.2e}");
            }
            let unswizzled = ok[0] && ok[3] && (ok[1] || ok[2]) && (ok[4] || ok[5]);
            let swizzled = ok[6] && ((ok[7] && ok[8]) || (ok[9] && ok[10]));
            if unswizzled && swizzled {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("wgmma probe: {e}");
            ExitCode::from(2)
        }
    }
}
