//! tfla-fwd: the forward pass on a `.safetensors` file (see `tfla::io` for the file layout),
//! and the backward pass too when the file holds `dh`.
//!
//! tfla-fwd --in INPUT.safetensors --out OUTPUT.safetensors [--kernel chunkwise--tfla-exp]
//!          [--chunk L] [--dtype bf16|f16|f32] [--eps EPS] [--grad-mode exact|detached]
use std::path::PathBuf;
use std::process::ExitCode;
use tfla::{Dtype, GradMode, MlstmConfig, Runtime, registry};

const USAGE: &str = "usage: tfla-fwd --in INPUT.safetensors --out OUTPUT.safetensors \
    [--kernel NAME] [--chunk L] [--dtype bf16|f16|f32] [--eps EPS] \
    [--grad-mode exact|detached] (with `dh` in the input: also the backward pass)";

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let input = PathBuf::from(opt("--in").ok_or(USAGE)?);
    let output = PathBuf::from(opt("--out").ok_or(USAGE)?);
    let kernel = registry::lookup(&opt("--kernel").unwrap_or_else(|| "chunkwise--tfla-exp".into()))
        .map_err(|e| e.to_string())?;
    let mut cfg = MlstmConfig::new(kernel.variant);
    if let Some(c) = opt("--chunk") {
        cfg.chunk_size = Some(
            c.parse()
                .map_err(|_| format!("--chunk: `{c}` is not a number"))?,
        );
    }
    if let Some(e) = opt("--eps") {
        cfg.eps = e
            .parse()
            .map_err(|_| format!("--eps: `{e}` is not a number"))?;
    }
    let dtype = match opt("--dtype").as_deref() {
        None | Some("bf16") => Dtype::Bf16,
        Some("f16") | Some("fp16") => Dtype::F16,
        Some("f32") | Some("fp32") => Dtype::F32,
        Some(other) => {
            return Err(format!(
                "--dtype: `{other}` is not supported (bf16, f16 or f32)"
            ));
        }
    };
    let mode = match opt("--grad-mode") {
        None => GradMode::default(),
        Some(m) => GradMode::parse(&m)
            .ok_or_else(|| format!("--grad-mode: `{m}` is not supported (exact or detached)"))?,
    };
    let rt = Runtime::new().map_err(|e| e.to_string())?;
    tfla::io::run_file(&rt, &input, &output, dtype, &cfg, mode).map_err(|e| e.to_string())?;
    println!("wrote {}", output.display());
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tfla-fwd: {e}");
            ExitCode::FAILURE
        }
    }
}
