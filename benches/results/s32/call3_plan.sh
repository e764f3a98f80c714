#!/usr/bin/env bash
# Call 3 (the session's last device time): why the stagger of call 1 changed nothing, and why
# the 128/128 forward+backward of call 2 is 4-8% slower at (16, 4096) and (4, 16384) than at
# (8, 8192) and (32, 2048) with the same tokens and heads × tokens. Launch traces of the exp
# forward+backward at the four points (which kernel differs); ncu's full set over one
# bwd_chunk_wg launch at (8, 8192) (stall reasons, DRAM throughput per SM, after the barrier's
# removal; session 29's profile was before it). Build: devcall/n (7040b71).
# Run: run(command="END=170 bash benches/results/s32/call3_plan.sh", carry=["devcall/n", "devcall/whl"]).
set -u
cd "$(dirname "$0")/../../.."
. benches/device_call.sh
call_begin "${END:-170}" devcall/whl
unpack devcall/n f=bench-tfla-bench
run trace 90 /tmp/f --heads 16:128:128 --points 32:2048,16:4096,8:8192,4:16384 --chunks 128 --variants exp \
  --reps 10 --no-step --cool-ms 200 --trace
run ncu_chunk_wg 70 ncu --set full -k regex:bwd_chunk_wg -c 1 /tmp/f --heads 16:128:128 --points 8:8192 \
  --chunks 128 --variants exp --reps 1 --no-step
cat $W/summary.txt
