#!/usr/bin/env bash
# Session 27, call 2. t/ = tfla-bench of fd76ba6 (the SM clock beside each row). Call 1 found
# the slow modes to be the card's 700 W power cap; questions, in order of the steps:
#  1. does the MHz column see it: the wide heads as call 1 timed them (`*` on the slow rows)?
#  2. what a sustained run sees: one cell timed over 300 calls (seconds of back-to-back work),
#     the wide heads and 128/128, against the 10-call medians of step 1;
#  3. the no-norm forward at 128/128 against FLA's chunk_simple_gla in one call (the four paper
#     points; tfla before and after FLA);
#  4. whether the Triton TFLA kernels run into the cap too (512/512, (8, 8192), with nvidia-smi
#     sampling beside every step).
# Run (a copy as devcall/go.sh): run(command="END=420 bash devcall/go.sh", carry=["devcall"]).
set -u
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."
. benches/device_call.sh
call_begin "${END:-420}" "$here/whl"
unpack $here/t t=bench-tfla-bench
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,clocks_event_reasons.active --format=csv -lms 100 > $W/smi.txt 2>&1 &
smi=$!
stamp() { echo "$1 $(date +%Y/%m/%d\ %H:%M:%S.%N)" >> $W/stamps.txt; }
stamp wide; run wide 90 /tmp/t --heads 8:512:512,8:256:512 --points 8:8192 --chunks 128,256 --reps 10 --no-step --trace --json $W/wide.json
stamp sustained
run sustained_512 60 /tmp/t --heads 8:512:512 --points 8:8192 --chunks 256 --variants exp --reps 300 --no-step --json $W/sustained_512.json
run sustained_128 60 /tmp/t --heads 16:128:128 --points 8:8192 --chunks 128 --variants exp --reps 300 --no-step --json $W/sustained_128.json
stamp nonorm_r1; run nonorm_r1 40 /tmp/t --heads 16:128:128 --grid paper --variants sig_nonorm --chunks 128 --no-bwd --no-step --json $W/nonorm_r1.json
for p in $(jobs -p); do [ "$p" != "$smi" ] && wait "$p"; done  # the reference wheels, not the sampler
stamp fla; run fla 150 env PYTHONPATH=/tmp/ref-site python3 benches/compare/compare.py --grid paper --heads 16:128:128 \
  --only fla:simple_gla --no-ceilings --dtype bf16 --json $W/fla.json
stamp nonorm_r2; run nonorm_r2 40 /tmp/t --heads 16:128:128 --grid paper --variants sig_nonorm --chunks 128 --no-bwd --no-step --json $W/nonorm_r2.json
stamp triton; run triton 120 env PYTHONPATH=/tmp/ref-site python3 benches/compare/compare.py --heads 8:512:512 --points 8x8192 \
  --chunks 128 --only tfla:exp,tfla:sig_nonorm --no-ceilings --no-step --dtype bf16 --json $W/triton.json
stamp end
kill $smi
cat $W/summary.txt
