#!/usr/bin/env bash
# Session 27, call 4. t/ = tfla-bench of dd1704a (--cool-ms, the MHz columns). The wide heads'
# paper-grid table with both sides at the card's full clock, in one call:
#  1. tfla, the card idle 1 s before each timed row (every row at 1980 MHz in call 3);
#  2. Triton TFLA (mlstm-kernels 2.0.6, L = 128, LLVM's optimizations on wherever its kernels
#     compile with them), with the matmul and copy ceilings; nvidia-smi samples the clock and
#     its reasons every 100 ms beside both, to show whether either side ran into the power cap.
# Run (a copy as devcall/go.sh): run(command="END=560 bash devcall/go.sh", carry=["devcall"]).
set -u
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."
. benches/device_call.sh
call_begin "${END:-560}" "$here/whl"
unpack $here/t t=bench-tfla-bench
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,clocks_event_reasons.active --format=csv -lms 100 > $W/smi.txt 2>&1 &
smi=$!
stamp() { echo "$1 $(date +%Y/%m/%d\ %H:%M:%S.%N)" >> $W/stamps.txt; }
stamp tfla; run tfla 230 /tmp/t --heads 8:512:512,8:256:512 --grid paper --chunks 128,256 --reps 10 --no-step --cool-ms 1000 --json $W/tfla.json
for p in $(jobs -p); do [ "$p" != "$smi" ] && wait "$p"; done  # the reference wheels, not the sampler
stamp refs; run refs 320 env PYTHONPATH=/tmp/ref-site python3 benches/compare/compare.py --grid paper --heads 8:512:512,8:256:512 \
  --chunks 128 --only tfla:exp,tfla:sig,tfla:sig_nonorm --dtype bf16 --json $W/refs.json
stamp end
kill $smi
cat $W/summary.txt
