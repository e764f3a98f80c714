//! tfla's developer tasks.
//!
//! - `cargo xtask build-ptx [--arch sm_80|sm_90|sm_90a] [--out PATH]`: builds the device crate into
//!   PTX, checks it for unresolved externs and the instructions the kernels are meant to use,
//!   and prints each kernel's registers, stack and spills from ptxas (failing on spills or a
//!   stack frame; ptxas is fetched into target/ where the machine has none).
//! - `cargo xtask bundle [--out DIR] [--gzip | --xz]`: builds the test binaries and the
//!   benchmark in release mode plus the PTX into one folder with `run.sh`, for GPU machines
//!   that have the CUDA driver but no Rust toolchain. `--gzip` compresses the binaries (each
//!   embeds the PTX: ~5× smaller), `--xz` about 6× more (the PTX repeats at long range; slower
//!   to build); `run.sh` unpacks either into a temporary folder.
//! - `cargo xtask bench [--grid quick|paper|smoke|long]`: the main job on a GPU machine: builds
//!   the benchmark, times tfla, sets up the pinned reference kernels (when python3 has torch)
//!   and times them on the same card, then prints one merged table with the ratios. The
//!   default grid (`quick`, B = 8, S = 8192) takes a few minutes; `--grid paper` is the paper's
//!   four (B, S) points. Results go to `target/bench/results/`.
//! - `cargo xtask report --tfla TFLA.json [--rows OUT.json] REFS.json…`: that merged table from
//!   saved results (e.g. `benches/results/`); `--rows` also writes its rows as JSON (FLOPs,
//!   bytes and floor of each call, for `benches/compare/plot_roofline.py`).
//! - `cargo xtask sass [--kernel SUBSTR] [--dump]`: each kernel's SASS instruction mix (ptxas
//!   and cuobjdump, no GPU needed); `--dump` writes the listings to `target/sass/`.
mod report;
mod sass;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use tfla_ptx_build::{Arch, build_ptx, ptxas_report};

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
        Some("bundle") => cmd_bundle(opt("--out"), Compress::from_args(&args)),
        Some("bench") => cmd_bench(opt("--grid").as_deref().unwrap_or("quick")),
        Some("sass") => sass::cmd_sass(
            opt("--kernel").as_deref(),
            args.iter().any(|a| a == "--dump"),
        ),
        Some("report") => match opt("--tfla") {
            Some(tfla) => {
                let rows = opt("--rows");
                let refs: Vec<String> = args
                    .iter()
                    .skip(1)
                    .filter(|a| a.ends_with(".json") && **a != tfla && Some(*a) != rows.as_ref())
                    .cloned()
                    .collect();
                report::report(Path::new(&tfla), &refs, rows.as_deref().map(Path::new))
            }
            None => Err("usage: cargo xtask report --tfla TFLA.json [--rows OUT.json] REFS.json...".into()),
        },
        _ => Err("usage: cargo xtask build-ptx [--arch sm_80|sm_90|sm_90a] [--out PATH] | bundle [--out DIR] | bench [--grid quick|paper|smoke|long] | report --tfla TFLA.json [--rows OUT.json] REFS.json... | sass [--kernel SUBSTR] [--dump]".into()),
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
    let ptxas = tfla_ptx_build::ptxas().map_err(|e| e.to_string())?;
    let report = ptxas_report(&ptxas, &ptx, arch.name()).map_err(|e| e.to_string())?;
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

/// How `bundle` compresses its binaries (`run.sh` and `benches/device_call.sh` unpack each).
#[derive(Clone, Copy)]
enum Compress {
    None,
    /// `gzip -9`: `NAME.gz`.
    Gzip,
    /// `xz -9`: `NAME.xz`.
    Xz,
}

impl Compress {
    fn from_args(args: &[String]) -> Self {
        if args.iter().any(|a| a == "--xz") {
            Compress::Xz
        } else if args.iter().any(|a| a == "--gzip") {
            Compress::Gzip
        } else {
            Compress::None
        }
    }
}

/// Builds with `cargo <args> --release --message-format=json` and copies each executable into
/// `bin` as `<prefix>-<target name>` (compressed as `compress` says); returns the file names.
fn build_into(
    bin: &Path,
    prefix: &str,
    args: &[&str],
    compress: Compress,
) -> Result<Vec<String>, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let json = run(Command::new(&cargo)
        .current_dir(root())
        .args(args)
        .args(["--release", "--message-format=json"]))?;
    let mut names = Vec::new();
    for (name, exe) in executables(&json) {
        let file = format!("{prefix}-{name}");
        std::fs::copy(&exe, bin.join(&file)).map_err(|e| format!("{}: {e}", exe.display()))?;
        let packer = match compress {
            Compress::None => None,
            Compress::Gzip => Some(("gzip", &["-9", "-f"][..])),
            Compress::Xz => Some(("xz", &["-9", "-T0", "-f"][..])),
        };
        if let Some((tool, flags)) = packer {
            run(Command::new(tool).args(flags).arg(bin.join(&file)))?;
        }
        names.push(file);
    }
    Ok(names)
}

/// A folder `dir` with `bin/` (this xtask, for `report`, and what `build` puts there), the
/// reference script and `run.sh`.
fn lay_out(
    dir: &Path,
    build: impl FnOnce(&Path) -> Result<Vec<String>, String>,
) -> Result<Vec<String>, String> {
    let bin = dir.join("bin");
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(&bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    let mut names = build(&bin)?;
    let xtask = std::env::current_exe().map_err(|e| e.to_string())?;
    std::fs::copy(&xtask, bin.join("xtask")).map_err(|e| format!("{}: {e}", xtask.display()))?;
    names.push("xtask".into());
    let compare = root().join("benches/compare/compare.py");
    std::fs::copy(&compare, dir.join("compare.py"))
        .map_err(|e| format!("{}: {e}", compare.display()))?;
    write_run_script(dir)?;
    Ok(names)
}

fn cmd_bundle(out: Option<String>, compress: Compress) -> Result<(), String> {
    let dir = out
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("bundle"));
    let names = lay_out(&dir, |bin| {
        let mut names = build_into(bin, "test", &["test", "--workspace", "--no-run"], compress)?;
        names.extend(build_into(
            bin,
            "bench",
            &["build", "-p", "tfla-benches", "--bins"],
            compress,
        )?);
        Ok(names)
    })?;
    // The two modules the binaries embed, for ncu and cuobjdump on the GPU machine.
    for arch in [Arch::DEFAULT, Arch::PORTABLE] {
        let ptx = build_ptx(arch).map_err(|e| e.to_string())?;
        let file = dir.join(format!("tfla_kernels_{}.ptx", arch.name()));
        std::fs::write(&file, ptx).map_err(|e| format!("{}: {e}", file.display()))?;
    }
    println!("bundle in {}: {}", dir.display(), names.join(", "));
    Ok(())
}

fn write_run_script(dir: &Path) -> Result<(), String> {
    let script = r#"#!/usr/bin/env bash
# Runs tfla's tests (GPU tests included) and the benchmark on a machine with the CUDA driver
# and no Rust toolchain (`cargo xtask bench` runs its `bench` mode too).
#   bash run.sh [tests|bench|all] [GRID] [RESULTS_DIR]
#       bench: tfla-bench's table (RESULTS_DIR/tfla.json), then the pinned reference kernels
#       (set up with pip into $TFLA_REF_SITE, default ./ref-site, when python3 has torch) on
#       the same card (RESULTS_DIR/refs.json), then the merged table. GRID: quick (default),
#       paper, smoke, long (B = 1, S = 16k … 256k). Offline, the wheels come from a folder
#       instead: TFLA_REF_WHEELS=DIR.
#   bash run.sh portable [KB]  the GPU tests through the sm_80 module under each smaller card's
#                           shared memory (or KB only: 227, 163, 99), and (without KB) the
#                           quick table with each module
#   bash run.sh sanitize [sm_90a|sm_80|both] [NAME]  memcheck, racecheck, initcheck and
#                           synccheck over every kernel entry, with both modules or the one
#                           named; with NAME only the kernels whose names contain it are
#                           checked by memcheck, racecheck and synccheck (e.g. bwd_state after a
#                           change to those; the others run unchecked, and every entry must
#                           still be launched); initcheck always checks every kernel
#   bash run.sh kernels [NH:DQK:DHV] [VARIANT]  per-kernel times (ncu) of one forward+backward
#   bash run.sh ab DIR...   this bundle's benchmark against those of other bundles (A/B of a
#                           change on one machine: quick grid, L = 128, alternated twice)
set -u
here=$(cd "$(dirname "$0")" && pwd)
# The binaries of a bundle made with --gzip or --xz are unpacked into a temporary folder (xz
# through python3's lzma: the GPU machine may have no xz).
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
# Each test binary's and sanitizer run's log, written as it runs: TFLA_LOGS=DIR keeps them
# (for a run that may be cut off by a time limit).
logs=${TFLA_LOGS:-$work}; mkdir -p "$logs"
bindir() {
  if compgen -G "$1/bin/*.[gx]z" > /dev/null; then
    local d f x; d=$(mktemp -d -p "$work")
    for f in "$1"/bin/*.gz "$1"/bin/*.xz; do
      [ -f "$f" ] || continue
      x=$d/$(basename "${f%.*}")
      case $f in
        *.gz) gunzip -c "$f" > "$x" ;;
        *.xz) python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' "$f" > "$x" ;;
      esac
      chmod +x "$x"
    done
    cp "$1/bin/xtask" "$d/"
    echo "$d"
  else
    echo "$1/bin"
  fi
}
bin=$(bindir "$here")
what=${1:-all}
pass=0; fail=0
# The reference kernels' pinned versions (benches/compare/README.md).
REF_PACKAGES="mlstm-kernels==2.0.6 fla-core==0.6.0"
# Sets PYTHONPATH so that python3 imports the pinned references, installing them (pure-Python
# wheels, no dependencies pulled: torch and triton stay the machine's) into $TFLA_REF_SITE
# first where needed; says what is missing and returns 1 where that cannot be done.
refs_ready() {
  if ! python3 -c "import torch, triton; assert torch.cuda.is_available()" 2> /dev/null; then
    echo "reference comparison skipped: it needs python3 with a CUDA build of torch and triton"
    echo "  (python3 -m pip install torch), then run again: the reference kernels themselves"
    echo "  ($REF_PACKAGES) are installed under target/ by this command."
    return 1
  fi
  local site=${TFLA_REF_SITE:-$here/ref-site}
  export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
  local have='from importlib import metadata as m
assert m.version("mlstm-kernels") == "2.0.6" and m.version("fla-core") == "0.6.0"
import einops'
  python3 -c "$have" 2> /dev/null && return 0
  local want=$REF_PACKAGES log
  python3 -c "import einops" 2> /dev/null || want="$want einops"
  echo "== installing the reference kernels into $site: $want"
  log=$(python3 -m pip install --quiet --disable-pip-version-check --no-deps --upgrade \
        --target "$site" ${TFLA_REF_WHEELS:+--no-index --find-links "$TFLA_REF_WHEELS"} $want 2>&1)
  if [ $? != 0 ] || ! python3 -c "$have" 2> /dev/null; then
    echo "$log" | tail -5
    echo "reference comparison skipped: could not install $want (offline? put the wheels in a"
    echo "  folder and set TFLA_REF_WHEELS=DIR, or: python3 -m pip install $want)"
    return 1
  fi
}
# Runs the test binaries `$bin/$1` (a glob) with the environment $2 (VAR=VALUE words, or
# empty) side by side, each into its own log: their time is mostly the float64 reference on
# the CPU. gpu_concurrency runs alone after them, because it measures the device's free memory
# and exhausts it on purpose. Prints each log whole, in order, and counts passes and failures.
run_suite() {
  local glob=$1 env=$2 label=$3 names=() name
  local tag=${label//[^0-9A-Za-z_]/_}
  log_of() { echo "$logs/$1${tag:+-$tag}.log"; }
  run_one() {
    local start=$SECONDS
    echo "=== $1${label:+ ($label)}"
    env $env "$bin/$1" --include-ignored --test-threads=1 2>&1
    echo "=== rc $? after $((SECONDS - start)) s"
  }
  for t in "$bin"/$glob; do
    name=$(basename "$t"); names+=("$name")
    [ "$name" = test-gpu_concurrency ] || run_one "$name" > "$(log_of "$name")" 2>&1 &
  done
  wait
  if [[ " ${names[*]} " == *" test-gpu_concurrency "* ]]; then
    run_one test-gpu_concurrency > "$(log_of test-gpu_concurrency)" 2>&1
  fi
  for name in "${names[@]}"; do
    cat "$(log_of "$name")"
    if grep -q '^=== rc 0 ' "$(log_of "$name")"; then pass=$((pass+1)); else fail=$((fail+1)); fi
  done
}
case "$what" in
tests|bench|all)
  grid=${2:-quick}
  results=${3:-$here/results}
  if [ "$what" != bench ]; then
    # The PTX test assembles with ptxas: without one on PATH or in CUDA_PATH (and no network
    # to fetch it), use the one the Triton wheel ships.
    if ! command -v ptxas > /dev/null && [ -z "${CUDA_PATH:-}" ]; then
      tb=$(python3 -c "import os, triton; print(os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin'))" 2> /dev/null)
      [ -n "$tb" ] && [ -x "$tb/ptxas" ] && export PATH=$PATH:$tb
    fi
    run_suite "test-*" "" ""
    echo "test binaries: $pass passed, $fail failed"
  fi
  if [ "$what" != tests ]; then
    mkdir -p "$results"
    start=$SECONDS
    if "$bin"/bench-tfla-bench --grid "$grid" --json "$results/tfla.json"; then
      echo "== tfla: $((SECONDS - start)) s"
      if refs_ready; then
        python3 "$here/compare.py" --grid "$grid" --dtype bf16 --json "$results/refs.json" \
          && "$bin"/xtask report --tfla "$results/tfla.json" "$results/refs.json" || fail=$((fail+1))
      fi
      echo "== results in $results ($((SECONDS - start)) s)"
    else
      fail=$((fail+1))
    fi
  fi
  ;;
portable)
  # The sm_80 module on this card: the GPU tests under each smaller card's shared memory
  # (TFLA_SMEM_LIMIT_KB plans for it; 227: B200, 163: A100, 99: A10/L4/RTX), then the quick
  # grid's forward and forward+backward table with the Hopper module and with the sm_80 one.
  kbs=${2:-227 163 99}
  for kb in $kbs; do
    run_suite "test-gpu_*" "TFLA_PORTABLE=1 TFLA_SMEM_LIMIT_KB=$kb" "sm_80 module, $kb KB per block"
  done
  echo "test binaries: $pass passed, $fail failed"
  if [ -z "${2:-}" ]; then
    "$bin"/bench-tfla-bench --grid quick --no-step || fail=$((fail+1))
    TFLA_PORTABLE=1 "$bin"/bench-tfla-bench --grid quick --no-step || fail=$((fail+1))
  fi
  ;;
sanitize)
  # compute-sanitizer's four tools over tfla-sanitize (every kernel entry, edge shapes), with
  # each module (or the one named: sm_90a, sm_80): zero reports, and every reachable entry
  # launched, or this fails. The runs are independent processes and the tools' cost is mostly
  # on the CPU, so they run side by side; each one's report is printed whole, in order.
  case "${2:-both}" in sm_90a) modules="x" ;; sm_80) modules="1" ;; *) modules="x 1" ;; esac
  runs=()
  for portable in $modules; do
    [ "$portable" = x ] && portable=""
    for tool in memcheck racecheck initcheck synccheck; do
      log="$logs/sanitize-$tool${portable:+-sm_80}.log"
      runs+=("$log")
      (
        start=$SECONDS
        # initcheck tracks which bytes were written: a kernel left unchecked writes without
        # being tracked, so what it wrote would read as uninitialized in the kernels checked.
        only=${3:-}
        [ "$tool" = initcheck ] && only=""
        echo "=== compute-sanitizer --tool $tool, ${portable:+sm_80 }module${only:+, kernels named *$only*}"
        TFLA_PORTABLE=$portable compute-sanitizer --tool "$tool" --error-exitcode 1 \
          --print-limit 20 ${only:+--kernel-name "kns=$only"} "$bin"/bench-tfla-sanitize > "$log.out" 2>&1
        rc=$?
        tail -25 "$log.out"
        echo "=== rc $rc after $((SECONDS - start)) s"
      ) > "$log" 2>&1 &
    done
  done
  wait
  for log in "${runs[@]}"; do
    cat "$log"
    if grep -q '^=== rc 0 ' "$log"; then pass=$((pass+1)); else fail=$((fail+1)); fi
  done
  echo "sanitizer runs: $pass passed, $fail failed"
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
*) echo "usage: bash run.sh [tests|bench|all] [GRID] [RESULTS_DIR] | portable [KB] | sanitize [sm_90a|sm_80|both] [NAME] | kernels [NH:DQK:DHV] [VARIANT] | ab DIR..."; fail=1 ;;
esac
[ "$fail" = 0 ]
"#;
    let path = dir.join("run.sh");
    std::fs::write(&path, script).map_err(|e| e.to_string())
}

/// The main job: the benchmark binary and this xtask in `target/bench/`, then `run.sh bench`
/// there (tfla's table, the references' set-up and table, the merged table), the same script a
/// bundle runs on a machine without Rust.
fn cmd_bench(grid: &str) -> Result<(), String> {
    let dir = root().join("target/bench");
    lay_out(&dir, |bin| {
        build_into(
            bin,
            "bench",
            &["build", "-p", "tfla-benches", "--bin", "tfla-bench"],
            Compress::None,
        )
    })?;
    let status = Command::new("bash")
        .arg(dir.join("run.sh"))
        .args(["bench", grid])
        .arg(dir.join("results"))
        // The reference packages go here, outside the folder laid anew each run.
        .env("TFLA_REF_SITE", root().join("target/ref-site"))
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err("the benchmark failed".into());
    }
    Ok(())
}
