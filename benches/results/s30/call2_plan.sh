#!/usr/bin/env bash
# Call 2 (cut to fit the device time left after five refused starts): main with y merged
# (bundle f = wip/y-s30: bafe1b4 + s29/chunk_wg_no_barrier.patch, whose kernels are main's
# after the merge, 300ec8b) over the paper grid at 16/128/128, L = 128 (the best L of every
# 128/128 cell in sessions 26 and 27), in one call with the reference kernels at their fair
# best (compare.py: Triton TFLA's exp kernel without LLVM optimizations, which it needs to
# compile, sig and no-norm with them; FLA's chunk_simple_gla), tfla in two rounds around them;
# then f's backward GPU tests (call 1 ran them on z: this change plus an L2 prefetch hint) and
# f's per-kernel trace.
# Run: run(command="END=420 bash devcall/go.sh", carry=["devcall"]).
set -u
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."
. benches/device_call.sh
call_begin "${END:-420}" "$here/whl"
unpack $here/f f=bench-tfla-bench gpu_kernels=test-gpu_kernels gpu_backward=test-gpu_backward
# The driver's compile of f's module lands in the cache; no entry uses local memory.
run kernels_test_f 90 /tmp/gpu_kernels --include-ignored --test-threads=1
P=32:2048,16:4096,8:8192,4:16384
run tfla_r1 60 /tmp/f --heads 16:128:128 --points $P --chunks 128 --reps 10 --no-step --cool-ms 200 --json $W/tfla_r1.json
wait  # the reference wheels
run refs 200 env PYTHONPATH=/tmp/ref-site python3 benches/compare/compare.py --grid paper --heads 16:128:128 \
  --chunks 128 --only tfla:exp,tfla:sig,tfla:sig_nonorm,fla:simple_gla --dtype bf16 --json $W/refs.json
run tfla_r2 60 /tmp/f --heads 16:128:128 --points $P --chunks 128 --reps 10 --no-step --cool-ms 200 --json $W/tfla_r2.json
run backward_tests_f 200 /tmp/gpu_backward --include-ignored --test-threads=1
run trace_f 30 /tmp/f --heads 16:128:128 --points 8:8192 --chunks 128 --variants exp,sig_nonorm --reps 10 --no-step --trace
cat $W/summary.txt
