#!/usr/bin/env bash
# Call 1: three candidates against main, A/B in one call, every binary in two rounds.
#   m   = main's kernels (7040b71; main's PTX is byte-identical since): devcall/n2.
#   fma = branch wip/fma (d5066fa): FMA contraction in every module (`-Cllvm-args=
#         -nvptx-fma-level=2`); ncu counted 126 M unfused FP32 of bwd_chunk_wg's 424 M
#         instructions. Every variant, and the wide heads (8/512/512 exp, L = 256).
#   st  = branch wip/store-sectors (0e5fe6c): dq, dk, dv stored 8 bytes a lane (full sectors).
#   s64 = branch wip/state-64: bwd_state's tile 64 × 64 instead of 64 × 128 (125 registers
#         instead of 168, 47 KB of shared memory: 4 blocks an SM instead of 3, twice the
#         blocks), for the slow state walk at (16, 4096) and (4, 16384).
# st and s64 change backward kernels that every variant shares: exp only. Each binary's first
# row includes the driver's compile of its module (~45 s).
# Run: run(command="END=540 bash benches/results/s33/call1_plan.sh", carry=["devcall/n2",
#   "devcall/fma", "devcall/st", "devcall/s64", "devcall/whl"]).
set -u
cd "$(dirname "$0")/../../.."
. benches/device_call.sh
call_begin "${END:-540}" devcall/whl
unpack devcall/n2 m=bench-tfla-bench
unpack devcall/fma fma=bench-tfla-bench
unpack devcall/st st=bench-tfla-bench
unpack devcall/s64 s64=bench-tfla-bench
P="--heads 16:128:128 --points 32:2048,16:4096,8:8192,4:16384 --chunks 128 --reps 10 --no-step --cool-ms 200"
Wd="--heads 8:512:512 --points 8:8192 --chunks 256 --variants exp --reps 10 --no-step --cool-ms 500"
for r in 1 2; do
  run m_r$r 90 /tmp/m $P --json $W/m_r$r.json
  run fma_r$r 90 /tmp/fma $P --json $W/fma_r$r.json
  run st_r$r 70 /tmp/st $P --variants exp --json $W/st_r$r.json
  run s64_r$r 70 /tmp/s64 $P --variants exp --json $W/s64_r$r.json
  run m_wide_r$r 30 /tmp/m $Wd --json $W/m_wide_r$r.json
  run fma_wide_r$r 30 /tmp/fma $Wd --json $W/fma_wide_r$r.json
done
cat $W/summary.txt
