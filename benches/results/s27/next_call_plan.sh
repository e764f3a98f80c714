#!/usr/bin/env bash
# Prepared in session 27 (its device time was spent): the first GPU run of
# benches/results/s27/fused128.patch (four commits of branch wip/fused-128): `chunk_fused`
# with a second value tile, a whole 128-wide head per block (S = Q·Kᵀ once per head instead of
# once per 64-column block; Q single-staged, 209 KB), taken where a head wider than 64 has more
# than fused::NARROW_MAX_HEADS = 66 heads (the narrow tile's two blocks per head then need a
# second wave of an H100); below, the 64-column tile as on main (its PTX differs from main's
# in address arithmetic only; 244-255 registers against main's 240-255). ptxas 13.0: no spill
# on either module. Not run on a GPU yet. Build here first (about 4 min each):
#   cargo xtask bundle --out devcall/m --gzip                     # main
#   git switch -c wip/fused-128 && git am benches/results/s27/fused128.patch
#   cargo xtask bundle --out devcall/f --gzip && git switch main
# then prune m to bin/bench-tfla-bench.gz, f to bin/{bench-tfla-bench, test-gpu_forward,
# test-gpu_varlen, test-gpu_kernels, bench-tfla-sanitize}.gz and run.sh (carry holds 64 MiB),
# and copy this file to devcall/go.sh, the reference wheels to devcall/whl. Questions, in order:
#  1. correct: the forward GPU tests (the wide tile at 68 and 67 heads, every variant and
#     dtype, ragged S and DHV), the packed-batch tests (narrow tile only: their 16 heads), and
#     the driver's own compile of every entry (gpu_kernels: no local memory);
#  2. faster: main (m) against the patch (f) at 16/128/128 over the paper grid, L = 128,
#     forward+backward (whose forward is chunk_fused) and a forward alone, two rounds each,
#     alternating. Predicted: the forward 10–18% faster at 512, 256 and 128 heads ((32, 2048),
#     (16, 4096), (8, 8192): the wide tile, 7 instead of 8.5 units of per-chunk work per head,
#     Q's load less hidden), unchanged at 64 heads ((4, 16384): the narrow tile);
#  3. clean: compute-sanitizer's four tools over chunk_fused (sm_90a; tfla-sanitize runs 67
#     heads of 32/96 for the wide tile).
# If the wide tile wins, NARROW_MAX_HEADS wants a sweep (`tfla-bench --grid chooser --heads
# 16:128:128 --chunks 128`) and the chooser's FEW_HEADS rule a look; if it loses, drop it.
# Run: run(command="END=540 bash devcall/go.sh", carry=["devcall"]).
set -u
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."
. benches/device_call.sh
call_begin "${END:-540}" "$here/whl"
unpack $here/m m=bench-tfla-bench
unpack $here/f f=bench-tfla-bench gpu_forward=test-gpu_forward gpu_varlen=test-gpu_varlen gpu_kernels=test-gpu_kernels
run forward_tests 150 /tmp/gpu_forward --include-ignored --test-threads=1
run varlen_tests 60 /tmp/gpu_varlen --include-ignored --test-threads=1
run kernels_test 120 /tmp/gpu_kernels --include-ignored --test-threads=1
AB="--heads 16:128:128 --grid paper --chunks 128 --variants exp,sig_nonorm --reps 20 --no-step"
for r in 1 2; do ab m f; done
# A forward alone under names of its own (ab_report keys rows by name; a forward that a
# backward follows stores the chunk states, one alone does not).
ln -sf /tmp/m /tmp/m1; ln -sf /tmp/f /tmp/f1
AB="$AB --no-bwd"
for r in 3 4; do ab m1 f1; done
run sanitize 150 bash $here/f/run.sh sanitize sm_90a chunk_fused
{ python3 benches/ab_report.py $W m f; python3 benches/ab_report.py $W m1 f1; } > $W/ab.txt 2>&1
cat $W/summary.txt $W/ab.txt
