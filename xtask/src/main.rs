//! tfla's developer tasks.
//!
//! - `cargo xtask build-ptx [--arch sm_90|sm_90a] [--out PATH]`: builds the device crate into
//!   PTX, checks it for unresolved externs and the instructions the kernels are meant to use,
//!   and, when ptxas is found, prints each kernel's registers, stack and spills (failing on
//!   spills or a stack frame).
//! - `cargo xtask bundle [--out DIR] [--gzip]`: builds the test binaries and the benchmark in
//!   release mode plus the PTX into one folder with `run.sh`, for GPU machines that have the
//!   CUDA driver but no Rust toolchain. `--gzip` compresses the binaries (each embeds the PTX:
//!   ~5× smaller), which `run.sh` unpacks into a temporary folder.
//! - `cargo xtask bench [--grid paper|quick|smoke]`: the main job on a GPU machine: bundle,
//!   then run the benchmark table (and the reference comparison when Python + PyTorch exist),
//!   then print one merged table with the ratios.
//! - `cargo xtask report --tfla TFLA.json REFS.json…`: that merged table from saved results
//!   (e.g. `benches/results/`).
//! - `cargo xtask sass [--kernel SUBSTR] [--dump]`: each kernel's SASS instruction mix (ptxas
//!   and cuobjdump, no GPU needed); `--dump` writes the listings to `target/sass/`.
mod report;
mod sass;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use tfla_ptx_build::{Arch, build_ptx, find_ptxas, ptxas_report};

const MEANT_TO_USE: [&str; 3] = [
    "mma.sync.aligned.m16n8k16",
    "ldmatrix.sync.aligned",
    "cp.async.cg.shared.global",
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let result = match args.first().map(String::as_str) {
        Some("build-ptx") => cmd_build_ptx(opt("--arch").as_deref(), opt("--out")),
        Some("bundle") => {
            cmd_bundle(opt("--out"), args.iter().any(|a| a == "--gzip")).map(|_| ())
        }
        Some("bench") => cmd_bench(opt("--grid").as_deref().unwrap_or("paper")),
        Some("sass") => sass::cmd_sass(
            opt("--kernel").as_deref(),
            args.iter().any(|a| a == "--dump"),
        ),
        Some("report") => match opt("--tfla") {
            Some(tfla) => {
                let refs: Vec<String> = args.iter().skip(1).filter(|a| a.ends_with(".json") && **a != tfla).cloned().collect();
                report::report(Path::new(&tfla), &refs)
            }
            None => Err("usage: cargo xtask report --tfla TFLA.json REFS.json...".into()),
        },
        _ => Err("usage: cargo xtask build-ptx [--arch sm_90|sm_90a] [--out PATH] | bundle [--out DIR] | bench [--grid paper|quick|smoke] | report --tfla TFLA.json REFS.json... | sass [--kernel SUBSTR] [--dump]".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    tfla_ptx_build::workspace_root()
}

/// Builds the PTX for `arch` and writes it to `out` (default `target/tfla_kernels.ptx`).
fn write_ptx(arch: Arch, out: Option<String>) -> Result<(PathBuf, String), String> {
    let ptx = build_ptx(arch).map_err(|e| e.to_string())?;
    let out = out
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/tfla_kernels.ptx"));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(&out, &ptx).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok((out, ptx))
}

fn cmd_build_ptx(arch: Option<&str>, out: Option<String>) -> Result<(), String> {
    let arch = match arch {
        Some(a) => Arch::parse(a).map_err(|e| e.to_string())?,
        None => Arch::DEFAULT,
    };
    let (out, ptx) = write_ptx(arch, out)?;
    println!(
        "wrote {} ({} bytes, {} entry points)",
        out.display(),
        ptx.len(),
        tfla_ptx_build::entry_points(&ptx).len()
    );
    for instr in MEANT_TO_USE {
        if !ptx.contains(instr) {
            return Err(format!(
                "the PTX lacks `{instr}`, which the kernels are meant to use"
            ));
        }
    }
    let Some(ptxas) = find_ptxas() else {
        println!("ptxas not found (PATH, CUDA_PATH): resource report skipped");
        return Ok(());
    };
    let report = ptxas_report(&ptxas, &ptx, arch).map_err(|e| e.to_string())?;
    println!(
        "{:<40} {:>5} {:>7} {:>7}",
        "kernel", "regs", "stack B", "spill B"
    );
    let mut bad = Vec::new();
    for k in &report {
        println!(
            "{:<40} {:>5} {:>7} {:>7}",
            k.name,
            k.registers,
            k.stack_bytes,
            k.spill_store_bytes + k.spill_load_bytes
        );
        if k.stack_bytes > 0 || k.spill_store_bytes + k.spill_load_bytes > 0 {
            bad.push(k.name.clone());
        }
    }
    if !bad.is_empty() {
        return Err(format!(
            "kernels with spills or a stack frame: {}",
            bad.join(", ")
        ));
    }
    Ok(())
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Paths of the executables a `cargo ... --message-format=json` build produced, with the
/// target names they belong to.
fn executables(json: &str) -> Vec<(String, PathBuf)> {
    let field = |line: &str, key: &str| -> Option<String> {
        let start = line.find(key)? + key.len();
        let end = line[start..].find('"')? + start;
        Some(line[start..end].to_string())
    };
    json.lines()
        .filter_map(|l| {
            let exe = field(l, "\"executable\":\"")?;
            let name = field(l, "\"target\":{\"kind\":[")
                .and(field(l, "\"name\":\""))
                .unwrap_or_else(|| "unnamed".into());
            Some((name, PathBuf::from(exe)))
        })
        .collect()
}

fn cmd_bundle(out: Option<String>, gzip: bool) -> Result<PathBuf, String> {
    let dir = out
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("bundle"));
    let bin = dir.join("bin");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let tests = run(Command::new(&cargo).current_dir(root()).args([
        "test",
        "--release",
        "--workspace",
        "--no-run",
        "--message-format=json",
    ]))?;
    let benches = run(Command::new(&cargo).current_dir(root()).args([
        "build",
        "--release",
        "-p",
        "tfla-benches",
        "--bins",
        "--message-format=json",
    ]))?;
    let mut names = Vec::new();
    for (kind, json) in [("test", &tests), ("bench", &benches)] {
        for (name, exe) in executables(json) {
            let file = format!("{kind}-{name}");
            std::fs::copy(&exe, bin.join(&file)).map_err(|e| format!("{}: {e}", exe.display()))?;
            if gzip {
                run(Command::new("gzip").args(["-9", "-f"]).arg(bin.join(&file)))?;
            }
            names.push(file);
        }
    }
    let ptx = build_ptx(Arch::Sm90).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("tfla_kernels.ptx"), ptx).map_err(|e| e.to_string())?;
    let compare = root().join("benches/compare/compare.py");
    if compare.exists() {
        std::fs::copy(&compare, dir.join("compare.py")).map_err(|e| e.to_string())?;
    }
    write_run_script(&dir)?;
    println!("bundle in {}: {}", dir.display(), names.join(", "));
    Ok(dir)
}

fn write_run_script(dir: &Path) -> Result<(), String> {
    let script = r#"#!/usr/bin/env bash
# Runs tfla's tests (GPU tests included) and the benchmark on a machine with the CUDA driver
# and no Rust toolchain.
#   bash run.sh [tests|bench|all] [GRID] [JSON_OUT]
#   bash run.sh kernels [NH:DQK:DHV] [VARIANT]  per-kernel times (ncu) of one forward+backward
#   bash run.sh ab DIR...   this bundle's benchmark against those of other bundles (A/B of a
#                           change on one machine: quick grid, L = 128, alternated twice)
set -u
here=$(cd "$(dirname "$0")" && pwd)
# The binaries of a bundle made with --gzip are unpacked into a temporary folder.
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
bindir() {
  if ls "$1"/bin/*.gz > /dev/null 2>&1; then
    local d; d=$(mktemp -d -p "$work")
    for f in "$1"/bin/*.gz; do gunzip -c "$f" > "$d/$(basename "$f" .gz)"; chmod +x "$d/$(basename "$f" .gz)"; done
    echo "$d"
  else
    echo "$1/bin"
  fi
}
bin=$(bindir "$here")
what=${1:-all}
pass=0; fail=0
case "$what" in
tests|bench|all)
  grid=${2:-quick}
  json=${3:-}
  if [ "$what" != bench ]; then
    for t in "$bin"/test-*; do
      echo "=== $(basename "$t")"
      if "$t" --include-ignored --test-threads=1 2>&1; then pass=$((pass+1)); else fail=$((fail+1)); fi
    done
    echo "test binaries: $pass passed, $fail failed"
  fi
  if [ "$what" != tests ]; then
    "$bin"/bench-tfla-bench --grid "$grid" ${json:+--json "$json"} || fail=$((fail+1))
  fi
  ;;
kernels)
  heads=${2:-8:512:512}
  variant=${3:-exp}
  csv=$(mktemp)
  ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base \
    "$bin"/bench-tfla-bench --heads "$heads" --chunks 128 --variants "$variant" --reps 1 --no-step > "$csv" 2>/dev/null || fail=1
  python3 - "$csv" <<'PY' || fail=1
import collections, csv, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
head = rows[0]
name, value = head.index("Kernel Name"), head.index("Metric Value")
times = collections.defaultdict(list)
for r in rows[1:]:
    try:
        times[r[name]].append(float(r[value].replace(",", "")) / 1e6)  # ns -> ms
    except ValueError:
        pass
for k, v in times.items():
    v.sort()
    print(f"{k:45s} {v[len(v) // 2]:8.3f} ms  (median of {len(v)})")
PY
  ;;
ab)
  shift
  bins=("$bin"); labels=("$here")
  for d in "$@"; do d=$(cd "$d" && pwd); bins+=("$(bindir "$d")"); labels+=("$d"); done
  for round in 1 2; do
    for i in "${!bins[@]}"; do
      echo "== ${labels[$i]} (round $round)"
      "${bins[$i]}"/bench-tfla-bench --grid quick --chunks 128 --no-step --reps 10 2>&1 | grep -E '^(exp|sig)' || fail=1
    done
  done
  ;;
*) echo "usage: bash run.sh [tests|bench|all] [GRID] [JSON_OUT] | kernels [NH:DQK:DHV] [VARIANT] | ab DIR..."; fail=1 ;;
esac
[ "$fail" = 0 ]
"#;
    let path = dir.join("run.sh");
    std::fs::write(&path, script).map_err(|e| e.to_string())
}

fn cmd_bench(grid: &str) -> Result<(), String> {
    let dir = cmd_bundle(None, false)?;
    let status = Command::new("bash")
        .arg(dir.join("run.sh"))
        .args(["bench", grid, &dir.join("tfla.json").display().to_string()])
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err("the benchmark failed".into());
    }
    let compare = dir.join("compare.py");
    let has_torch = Command::new("python3")
        .args(["-c", "import torch"])
        .status()
        .is_ok_and(|s| s.success());
    if compare.exists() && has_torch {
        let status = Command::new("python3")
            .arg(&compare)
            .args(["--grid", grid, "--dtype", "bf16", "--json"])
            .arg(dir.join("refs.json"))
            .status()
            .map_err(|e| e.to_string())?;
        if !status.success() {
            return Err("the reference comparison failed".into());
        }
        let refs = [dir.join("refs.json").display().to_string()];
        report::report(&dir.join("tfla.json"), &refs)?;
    } else {
        println!(
            "reference comparison skipped (needs benches/compare/compare.py and python3 with torch)"
        );
    }
    Ok(())
}
