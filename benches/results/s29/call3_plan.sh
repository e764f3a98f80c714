#!/usr/bin/env bash
# Call 3, the session's last 244 s of device time: where bwd_chunk_wg (main, 5ce122d) spends its
# time, for the next step on it (issue the next tile's scores while the gating runs, or merge
# the dv and dk passes, or neither). ncu's warp-state (stall reasons), scheduler and compute
# sections over one launch at 16/128/128, (8, 8192), exp.
# Run: run(command="END=135 bash devcall/go.sh", carry=["devcall"]), go.sh = this file.
set -u
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."
. benches/device_call.sh
call_begin "${END:-135}" "$here/whl"
unpack $here/n n=bench-tfla-bench
# (The driver's compile of the module, ~45 s, lands in the cache here.)
run warm 80 /tmp/n --heads 16:128:128 --points 8:8192 --chunks 128 --variants exp --reps 3 --no-step
run ncu_chunk_wg 60 ncu --clock-control none --section WarpStateStats --section SchedulerStats \
  --section ComputeWorkloadAnalysis --print-details all -k regex:bwd_chunk_wg -c 1 \
  /tmp/n --heads 16:128:128 --points 8:8192 --chunks 128 --variants exp --reps 1 --no-step
cat $W/summary.txt
