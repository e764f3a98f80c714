# Helpers for one scripted call on the GPU machine, sourced by a call's plan (benches/results/sN/
# *_plan.sh) from the repository root of the copy the device tool makes. A call is short and
# may be cut off: every step runs under its own limit and a deadline for the whole call, writes
# its output as it goes, and $OUT/out.tgz is packed on exit whatever happened.
#   call_begin END WHEELS  results under $W = $OUT/w, the deadline END seconds from now, the card
#                          in $W/card.txt, the pinned reference kernels installed from the
#                          wheel folder WHEELS into /tmp/ref-site in the background (`wait`);
#                          the folder holds the pinned versions (xtask's REF_PACKAGES owns the
#                          pin), and compare.py records the versions it imported
#   run NAME SECONDS CMD…  CMD, output in $W/NAME.txt, stopped at SECONDS or the deadline
#                          (skipped with under 15 s left); "NAME rc=… Ns" in $W/summary.txt
#   ab BIN…                each /tmp/BIN (a tfla-bench) over $AB, round $r: $W/BIN_r$r.{txt,json}
#   nc NAME BIN HEADS L VARIANTS  ncu: kernel times, L2 and DRAM bytes of /tmp/BIN's calls
#   grid BIN HEADS L       the paper's four (B, S) points of /tmp/BIN (every variant, chunk L)
#                          in two rounds around Triton TFLA at its fair best (compare.py: exp
#                          without LLVM's optimizations, which it needs to compile, sig and
#                          no-norm with them): $W/tfla_r1.json, $W/refs.json, $W/tfla_r2.json
#   unpack BUNDLE AS=FILE…  each BUNDLE/bin/FILE.gz or FILE.xz (a `cargo xtask bundle --gzip`
#                          or `--xz` binary) as the executable /tmp/AS
call_begin() {
  W=$OUT/w; mkdir -p "$W"
  T0=$(date +%s); END=$1
  nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.memory,driver_version --format=csv > "$W/card.txt"
  trap 'echo "total $(( $(date +%s) - T0 ))s" >> "$W/summary.txt"; tar czf "$OUT/out.tgz" -C "$OUT" w' EXIT
  ( python3 -m pip install --quiet --disable-pip-version-check --no-deps --target /tmp/ref-site \
      --no-index --find-links "$2" mlstm-kernels fla-core einops > "$W/pip.txt" 2>&1 ) &
  # The driver compiles each module's PTX once; the cache keeps both builds' modules.
  export CUDA_CACHE_MAXSIZE=4294967296
  export TFLA_LOGS=$W/logs; mkdir -p "$TFLA_LOGS"
}
run() {
  local name=$1 t=$2; shift 2
  local left=$(( END - ($(date +%s) - T0) ))
  if [ $left -lt 15 ]; then echo "$name skipped (deadline)" >> "$W/summary.txt"; return; fi
  [ "$t" -gt $left ] && t=$left
  local s; s=$(date +%s)
  timeout "$t" "$@" > "$W/$name.txt" 2>&1
  echo "$name rc=$? $(( $(date +%s) - s ))s" >> "$W/summary.txt"
}
ab() {
  local b
  for b in "$@"; do run "${b}_r$r" 60 "/tmp/$b" $AB --json "$W/${b}_r$r.json"; done
}
nc() {
  local name=$1 bin=$2 h=$3 l=$4 v=$5
  run "$name" 40 ncu --clock-control none --csv --print-units base \
    --metrics gpu__time_duration.sum,lts__t_bytes.sum,dram__bytes.sum \
    "/tmp/$bin" --heads "$h" --points 8:8192 --chunks "$l" --variants "$v" --reps 1 --no-step
}
grid() {
  local bin=$1 heads=$2 l=$3 p=32:2048,16:4096,8:8192,4:16384
  local tfla="/tmp/$bin --heads $heads --points $p --chunks $l --reps 10 --no-step --cool-ms 200"
  run tfla_r1 45 $tfla --json "$W/tfla_r1.json"
  wait  # the reference wheels
  run refs 150 env PYTHONPATH=/tmp/ref-site python3 benches/compare/compare.py --grid paper \
    --heads "$heads" --chunks "$l" --only tfla:exp,tfla:sig,tfla:sig_nonorm --dtype bf16 \
    --json "$W/refs.json"
  run tfla_r2 45 $tfla --json "$W/tfla_r2.json"
}
unpack() {
  local dir=$1 pair src; shift
  for pair in "$@"; do
    src=$dir/bin/${pair#*=}
    if [ -f "$src.xz" ]; then
      python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' \
        "$src.xz" > "/tmp/${pair%%=*}"
    else
      gunzip -c "$src.gz" > "/tmp/${pair%%=*}"
    fi
    chmod +x "/tmp/${pair%%=*}"
  done
}
