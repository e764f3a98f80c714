#!/usr/bin/env bash
# NOT RUN (session 30's device time went to refused starts): the next session's first call.
# Call 2 (cut twice to fit the device time left after five refused starts): main with y merged
# (bundle f = wip/y-s30: bafe1b4 + s29/chunk_wg_no_barrier.patch, whose kernels are main's
# after the merge, 300ec8b) over the paper grid at 16/128/128, L = 128 (the best L of every
# 128/128 cell in sessions 26 and 27), in one call with the reference kernels at their fair
# best (compare.py: Triton TFLA's exp kernel without LLVM optimizations, which it needs to
# compile, sig and no-norm with them; FLA left out: its autotuning takes minutes, and the
# forward it is compared with did not change), tfla in two rounds around them;
# then as many of f's backward GPU tests as the deadline leaves (call 1 ran all 13 on z: this
# change plus an L2 prefetch hint).
# Run: run(command="END=235 bash devcall/go.sh", carry=["devcall"]).
set -u
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."
. benches/device_call.sh
call_begin "${END:-235}" "$here/whl"
unpack $here/f f=bench-tfla-bench gpu_kernels=test-gpu_kernels gpu_backward=test-gpu_backward
# The driver's compile of f's module lands in the cache; no entry uses local memory.
run kernels_test_f 70 /tmp/gpu_kernels --include-ignored --test-threads=1
P=32:2048,16:4096,8:8192,4:16384
run tfla_r1 40 /tmp/f --heads 16:128:128 --points $P --chunks 128 --reps 10 --no-step --cool-ms 200 --json $W/tfla_r1.json
wait  # the reference wheels
run refs 150 env PYTHONPATH=/tmp/ref-site python3 benches/compare/compare.py --grid paper --heads 16:128:128 \
  --chunks 128 --only tfla:exp,tfla:sig,tfla:sig_nonorm --dtype bf16 --json $W/refs.json
run tfla_r2 40 /tmp/f --heads 16:128:128 --points $P --chunks 128 --reps 10 --no-step --cool-ms 200 --json $W/tfla_r2.json
run backward_tests_f 200 /tmp/gpu_backward --include-ignored --test-threads=1
cat $W/summary.txt
