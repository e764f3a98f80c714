#!/usr/bin/env bash
# Prepared in session 27 (its device time was spent): the first GPU run of
# benches/results/s27/fused128.patch, `chunk_fused` owning a whole 128-wide head (S = Q·Kᵀ once
# per head instead of once per 64-column block; Q single-staged; ptxas 13.0: 255 registers, no
# spill on either module). Not run on a GPU yet. Build here first (about 4 min each):
#   cargo xtask bundle --out devcall/m --gzip                     # main
#   git switch -c wip/fused-128 && git am benches/results/s27/fused128.patch
#   cargo xtask bundle --out devcall/f --gzip && git switch main
# then prune m to bin/bench-tfla-bench.gz, f to bin/{bench-tfla-bench, test-gpu_forward,
# test-gpu_varlen, test-gpu_kernels, bench-tfla-sanitize}.gz and run.sh (carry holds 64 MiB),
# and copy this file to
# devcall/go.sh, the reference wheels to devcall/whl. Questions, in order:
#  1. correct: the forward and packed-batch GPU tests, and the driver's own compile of every
#     entry (gpu_kernels: no local memory), with the patch;
#  2. faster: main (m) against the patch (f) at 16/128/128 over the paper grid, L = 128,
#     forward+backward (whose forward is chunk_fused) and a forward alone, two rounds each,
#     alternating. Predicted: 10–18% off the forward at 128 and 512 heads ((8, 8192),
#     (32, 2048)); slower at 64 heads ((4, 16384): 64 blocks on 132 SMs where main runs 128),
#     which is why a kept version needs both tiles (64 columns up to ~66 heads, 128 above);
#  3. clean: compute-sanitizer's four tools over chunk_fused (sm_90a).
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
