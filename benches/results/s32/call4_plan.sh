#!/usr/bin/env bash
# Call 4: FMA contraction (branch wip/fma, d5066fa: `-Cllvm-args=-nvptx-fma-level=2` in
# ptx-build; bundle devcall/fma) against main (7040b71, devcall/n2). ncu in call 3 counted 126 M
# non-fused FP32 instructions of bwd_chunk_wg's 424 M and 0.13 M fused: rustc's NVPTX output
# writes `mul.rn`/`add.rn`, which ptxas may not fuse. The flag turns 986 mul + 675 add of that
# kernel's PTX into 617 mul + 290 add + 385 fma (the rest fusable by ptxas); registers within
# ±10, no spill. A/B at 16/128/128 (8, 8192), L = 128, every variant, and 8/512/512 at L = 256
# (exp), two rounds; then the fma build's backward GPU tests as far as the deadline allows.
# Run: run(command="END=200 bash benches/results/s32/call4_plan.sh", carry=["devcall/fma", "devcall/n2", "devcall/whl"]).
set -u
cd "$(dirname "$0")/../../.."
. benches/device_call.sh
call_begin "${END:-200}" devcall/whl
unpack devcall/fma fma=bench-tfla-bench gpu_backward=test-gpu_backward
unpack devcall/n2 m=bench-tfla-bench
A="--heads 16:128:128 --points 8:8192 --chunks 128 --reps 20 --no-step --cool-ms 200"
Wd="--heads 8:512:512 --points 8:8192 --chunks 256 --variants exp --reps 10 --no-step --cool-ms 500"
for r in 1 2; do
  for b in m fma; do
    run "${b}_r$r" 70 /tmp/$b $A --json $W/${b}_r$r.json
    run "${b}_wide_r$r" 30 /tmp/$b $Wd --json $W/${b}_wide_r$r.json
  done
done
run backward_tests_fma 200 /tmp/gpu_backward --include-ignored --test-threads=1
cat $W/summary.txt
