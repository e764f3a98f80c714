#!/usr/bin/env bash
# Prepared in session 28, not run (its device time ran out in refused starts): which narrow
# chunk_fused tile goes with the wide one, then that build checked and timed against Triton
# TFLA and FLA at 16/128/128 over the paper grid.
#
# Why: session 28's call 1 (benches/results/s28/call1/) ran the wide tile of s27/fused128.patch:
# correct (GPU tests, sanitizers) and 12-13% off the 128/128 forward at 80 to 512 heads, but the
# patch's narrow tile (≤ 66 heads, and every head of ≤ 64 value columns) ran the exp forward
# 10% slower than main's (0.874-0.880 ms against 0.790-0.800 at 64 heads), from PTX that
# differs from main's in the order of address arithmetic only: ptxas at 255 registers.
# Bundles, built here from benches/results/s28/fused128_v2.patch (six commits; `git am` on main):
#   m = main;  g = the patch's fifth commit (the narrow tile's stages addressed as on main; its
#   PTX still differs from main's);  h = the sixth (Q's fragments read per product in both
#   tiles: the narrow exp kernel at 243 registers instead of 255, sig 237, no-norm 255).
#   cargo xtask bundle --out devcall/m --xz; git switch -c wip/fused-128 && git am
#   benches/results/s28/fused128_v2.patch; git checkout HEAD~1 && cargo xtask bundle --out
#   devcall/g --xz; git checkout wip/fused-128 && cargo xtask bundle --out devcall/h --xz
# then keep bin/{bench-tfla-bench} of m, bin/{bench-tfla-bench, bench-tfla-sanitize,
# test-gpu_forward, test-gpu_varlen, test-gpu_kernels, xtask} and run.sh of g and h (about
# 15 MB in all with --xz, 70 with --gzip), the wheels in devcall/whl, this file as
# devcall/go.sh.
# Questions, in order:
#  1. m, g, h forwards alone at 64 heads (narrow tile) and 128 (wide), three variants, two
#     rounds; the build with the lower sum of medians is taken (x). Merge x only if its narrow
#     forward is within noise (1%) of m's; else neither;
#  2. x's GPU tests, and compute-sanitizer over chunk_fused, twice (call 1's racecheck run saw
#     one non-finite dq in an f16 exp case of the wide tile, and no hazard);
#  3. x over the paper grid at 16/128/128 (L = 128, 256), two rounds around Triton TFLA's
#     three variants (compare.py, fair anchors) and FLA's chunk_simple_gla.
# Run: run(command="END=580 bash devcall/go.sh", carry=["devcall"]).
set -u
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."
. benches/device_call.sh
call_begin "${END:-580}" "$here/whl"
unpack $here/m m=bench-tfla-bench
unpack $here/g g=bench-tfla-bench
unpack $here/h h=bench-tfla-bench
AB="--heads 16:128:128 --points 4:8192,8:8192 --chunks 128 --variants exp,sig,sig_nonorm --reps 20 --no-step --no-bwd"
for r in 1 2; do ab m g h; done
python3 benches/ab_report.py $W m g h > $W/ab.txt 2>&1
x=$(python3 - "$W" <<'PY'
import glob, json, statistics, sys
def total(n):
    cells = {}
    for f in glob.glob(f"{sys.argv[1]}/{n}_r*.json"):
        for r in json.load(open(f)):
            cells.setdefault((r["variant"], r["B"]), []).append(r["fwd_ms"])
    return sum(statistics.median(v) for v in cells.values())
print(min("gh", key=total))
PY
)
echo "chosen: $x" | tee $W/chosen.txt
unpack $here/$x x=bench-tfla-bench gpu_forward=test-gpu_forward gpu_varlen=test-gpu_varlen gpu_kernels=test-gpu_kernels
run forward_tests 150 /tmp/gpu_forward --include-ignored --test-threads=1
run varlen_tests 60 /tmp/gpu_varlen --include-ignored --test-threads=1
run kernels_test 60 /tmp/gpu_kernels --include-ignored --test-threads=1
run sanitize_1 80 bash $here/$x/run.sh sanitize sm_90a chunk_fused
P=32:2048,16:4096,8:8192,4:16384
run tfla_r1 90 /tmp/x --heads 16:128:128 --points $P --chunks 128,256 --reps 10 --no-step --cool-ms 200 --json $W/tfla_r1.json
wait  # the reference wheels
run refs 200 env PYTHONPATH=/tmp/ref-site python3 benches/compare/compare.py --grid paper --heads 16:128:128 \
  --chunks 128 --only tfla:exp,tfla:sig,tfla:sig_nonorm,fla:simple_gla --dtype bf16 --json $W/refs.json
run tfla_r2 90 /tmp/x --heads 16:128:128 --points $P --chunks 128,256 --reps 10 --no-step --cool-ms 200 --json $W/tfla_r2.json
run sanitize_2 80 bash $here/$x/run.sh sanitize sm_90a chunk_fused
cat $W/summary.txt $W/chosen.txt $W/ab.txt
