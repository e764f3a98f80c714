#!/usr/bin/env bash
# A call for the wgmma one-kernel forward (built in session 34, not run: no device was lent).
#   m = main's kernels (2d41bb6): devcall/m34 (`bench-tfla-bench` of `cargo xtask bundle --xz`).
#   w = branch wip/fused-wg: main (3802143) + `chunk_fused_wg`, the 128/128 forward on `wgmma`
#       with one block per head (S = Q·Kᵀ once per head and chunk) where there are more than
#       66 heads; main's `chunk_fused` (two 64-column `mma.sync` blocks per head) elsewhere,
#       PTX identical up to label numbering. Full bundle in devcall/w35 (`cargo xtask bundle --out
#       devcall/w35 --xz` on the branch, ~5 min).
# Reading the A/B: (32, 2048), (16, 4096), (8, 8192) are 512, 256, 128 heads of 16 and take
# `chunk_fused_wg`; (5, 16384), 80 heads, too; (4, 16384), 64 heads, runs the same kernel in
# both builds (a control: its rows must agree within noise). The forward+backward rows move by
# the forward's change only (the backward is main's).
# Order: the forward GPU tests (float64 reference; the fused test covers 67 and 68 heads, every
# variant and dtype) before any timing is believed, then the A/B, two rounds; `PART=2`, if w
# wins, the grid against Triton TFLA; `PART=3` compute-sanitizer over chunk_fused* (sm_90a),
# then its four tools over every entry of both modules (session 33's gap). Merge only after
# parts 1 and 3 pass.
# Run: run(command="END=590 bash benches/results/s34/fused_wg_call_plan.sh",
#   carry=["devcall/m34", "devcall/w35", "devcall/whl"])
set -u
cd "$(dirname "$0")/../../.."
. benches/device_call.sh
call_begin "${END:-590}" devcall/whl
unpack devcall/m34 m=bench-tfla-bench
unpack devcall/w35 w=bench-tfla-bench wfwd=test-gpu_forward
if [ "${PART:-1}" = 1 ]; then
  # The test binary's first kernel call waits for the driver's compile of w's module; m's
  # first row for m's (40-65 s each; the later processes load them from the cache).
  run tests_fwd 230 /tmp/wfwd --include-ignored --test-threads=1
  P="--heads 16:128:128 --points 32:2048,16:4096,8:8192,5:16384,4:16384 --chunks 128 --reps 10 --no-step --cool-ms 200"
  run m_r1 110 /tmp/m $P --json $W/m_r1.json
  run w_r1 70 /tmp/w $P --json $W/w_r1.json
  run m_r2 70 /tmp/m $P --json $W/m_r2.json
  run w_r2 70 /tmp/w $P --json $W/w_r2.json
elif [ "$PART" = 2 ]; then
  grid w 16:128:128 128
else
  run sanitize_fused 120 bash devcall/w35/run.sh sanitize sm_90a chunk_fused
  # Session 33's gap: FMA contraction (8c07c5e) changed every kernel, and memcheck, racecheck
  # and synccheck have run only over `bwd_chunk*` since (initcheck over all). Every entry, both
  # modules (with w: main's kernels plus chunk_fused_wg).
  run sanitize_all 420 bash devcall/w35/run.sh sanitize both
fi
cat $W/summary.txt
