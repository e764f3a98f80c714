#!/usr/bin/env bash
# Prepared in session 26 (232 s of device time left: too little to start a machine). t/ = the
# bundle of the commit that adds `Runtime::trace_launches` and `tfla-bench --trace` (the kernels
# are b4e9665's). Questions, in order of the steps:
#  1. the trace itself: its GPU test;
#  2. why the no-norm forward at 512/512, L = 256 runs 0.5-0.6 ms over its kernels' ncu times
#     (session 26, call 4), and whether session 17's sig slow mode is the same thing: every
#     kernel back to back with the gaps between them (--trace), clocks and power sampled every
#     100 ms beside it, start and end of each step stamped;
#  3. FLA's chunk_simple_gla forward at 128/128 against the no-norm forward in one call (cut from
#     session 26's grid by its time limit);
#  4. the session-26 paper grid's roofline picture (matplotlib is on the GPU machine);
#  5. bwd_chunk at 128/128 under ncu's stall sections (the 128/128 backward's largest kernel,
#     1.81 ms at 1.37 TB/s), for its redesign.
# Run (a copy as devcall/go.sh): run(command="END=480 bash devcall/go.sh", carry=["devcall"]). Session 27 added step 2b (the no-norm cell alone, then after exp, in processes of their own).
set -u
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."
. benches/device_call.sh
call_begin "${END:-420}" "$here/whl"
unpack $here/t t=bench-tfla-bench gpu_forward=test-gpu_forward
run trace_test 60 /tmp/gpu_forward launch_trace --include-ignored --test-threads=1
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv -lms 100 > $W/smi.txt 2>&1 &
smi=$!
nvidia-smi --query-gpu=timestamp,clocks_event_reasons.active --format=csv -lms 100 > $W/smi_reasons.txt 2>&1 &
smi2=$!
stamp() { echo "$1 $(date +%Y/%m/%d\ %H:%M:%S.%N)" >> $W/stamps.txt; }
for h in 8:512:512 8:256:512; do
  stamp "trace_$h begin"
  run trace_${h//:/_} 90 /tmp/t --heads $h --points 8:8192 --chunks 128,256 --reps 10 --no-step --trace --json $W/trace_${h//:/_}.json
  stamp "trace_$h end"
done
# 2b. the no-norm cell in processes of its own: alone, then after exp's (which ran slower in
#     the grid's order only if the slow mode follows the process's history; the bench runs the variants in its own order).
for v in sig_nonorm exp,sig_nonorm; do
  stamp "solo_$v begin"
  run solo_${v//,/_} 40 /tmp/t --heads 8:512:512 --points 8:8192 --chunks 256 --variants $v --reps 20 --no-step --trace --json $W/solo_${v//,/_}.json
  stamp "solo_$v end"
done
kill $smi $smi2
wait  # the reference wheels
run fla 120 env PYTHONPATH=/tmp/ref-site python3 benches/compare/compare.py --grid paper --heads 16:128:128 \
  --only fla:simple_gla --no-ceilings --dtype bf16 --json $W/fla.json
run plot 30 python3 benches/compare/plot_roofline.py benches/results/s26/call3/rows_r1.json --out $W/roofline_paper.png
run ncu_bwd_chunk 60 ncu --clock-control none --kernel-name regex:bwd_chunk --launch-count 1 \
  --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section Occupancy \
  --section LaunchStats --section MemoryWorkloadAnalysis \
  /tmp/t --heads 16:128:128 --points 8:8192 --chunks 128 --variants exp --reps 1 --no-step
cat $W/summary.txt
