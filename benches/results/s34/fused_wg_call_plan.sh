#!/usr/bin/env bash
# A call for the wgmma one-kernel forward (built in session 34, not run: no device was lent).
#   m = main's kernels (2d41bb6): devcall/m34 (`bench-tfla-bench` of `cargo xtask bundle --xz`).
#   w = branch wip/fused-wg: main (3802143) + `chunk_fused_wg`, the 128/128 forward on `wgmma`
#       with one block per head (S = Q·Kᵀ once per head and chunk) where there are more than
#       66 heads; main's `chunk_fused` (two 64-column `mma.sync` blocks per head) elsewhere,
#       byte-identical PTX. Full bundle in devcall/w35 (`cargo xtask bundle --out
#       devcall/w35 --xz` on the branch, ~5 min).
# Reading the A/B: (32, 2048), (16, 4096), (8, 8192) are 512, 256, 128 heads of 16 and take
# `chunk_fused_wg`; (5, 16384), 80 heads, too; (4, 16384), 64 heads, runs the same kernel in
# both builds (a control: its rows must agree within noise). The forward+backward rows move by
# the forward's change only (the backward is main's).
# Order: the first row of w on an empty cache (the driver compiles the whole module: give it
# time); the forward GPU tests (float64 reference; the fused test covers 67 and 68 heads, every
# variant and dtype) and compute-sanitizer over chunk_fused* in the sm_90a module BEFORE any
# timing is believed; then the A/B, two rounds; then, if w wins, the grid against Triton TFLA.
# Run: run(command="END=560 bash benches/results/s34/fused_wg_call_plan.sh",
#   carry=["devcall/m34", "devcall/w35", "devcall/whl"])
set -u
cd "$(dirname "$0")/../../.."
. benches/device_call.sh
call_begin "${END:-560}" devcall/whl
unpack devcall/m34 m=bench-tfla-bench
unpack devcall/w35 w=bench-tfla-bench wfwd=test-gpu_forward
if [ "${PART:-1}" = 1 ]; then
  run jit_w 150 /tmp/w --heads 16:128:128 --points 5:1024 --chunks 128 --reps 1 --no-step
  run tests_fwd 200 /tmp/wfwd --include-ignored --test-threads=1
  run sanitize_fused 120 bash devcall/w35/run.sh sanitize sm_90a chunk_fused
  P="--heads 16:128:128 --points 32:2048,16:4096,8:8192,5:16384,4:16384 --chunks 128 --reps 10 --no-step --cool-ms 200"
  for r in 1 2; do
    run m_r$r 70 /tmp/m $P --json $W/m_r$r.json
    run w_r$r 70 /tmp/w $P --json $W/w_r$r.json
  done
else
  grid w 16:128:128 128
fi
cat $W/summary.txt
