#!/usr/bin/env bash
# Superseded by s32/call2_plan.sh (run in session 32 on the next main). NOT RUN in session 31 (see call1_plan.sh). Session 30's unrun call 2 on main's own build
# (517ea40, bundle in devcall/m: `cargo xtask bundle --xz` on main): the paper grid at
# 16/128/128, L = 128, in one call with Triton TFLA at its fair best (compare.py: the exp
# kernel without LLVM optimizations, which it needs to compile, sig and no-norm with them; FLA
# left out: its autotuning takes minutes, and the forward it is compared with did not change),
# tfla in two rounds around it; then main's backward GPU tests (their last run was on session
# 30's build z, main's kernels plus an L2 prefetch). Table: `cargo xtask report --tfla
# tfla_rN.json --rows rows_rN.json refs.json`, then s30/table.py.
# Run: run(command="END=520 bash benches/results/s31/call2_plan.sh", carry=["devcall"]).
set -u
cd "$(dirname "$0")/../../.."
. benches/device_call.sh
call_begin "${END:-520}" devcall/whl
unpack devcall/m f=bench-tfla-bench gpu_kernels=test-gpu_kernels gpu_backward=test-gpu_backward
# The driver's compile of the module lands in the cache; no entry uses local memory.
run kernels_test 90 /tmp/gpu_kernels --include-ignored --test-threads=1
P=32:2048,16:4096,8:8192,4:16384
run tfla_r1 40 /tmp/f --heads 16:128:128 --points $P --chunks 128 --reps 10 --no-step --cool-ms 200 --json $W/tfla_r1.json
wait  # the reference wheels
run refs 150 env PYTHONPATH=/tmp/ref-site python3 benches/compare/compare.py --grid paper --heads 16:128:128 \
  --chunks 128 --only tfla:exp,tfla:sig,tfla:sig_nonorm --dtype bf16 --json $W/refs.json
run tfla_r2 40 /tmp/f --heads 16:128:128 --points $P --chunks 128 --reps 10 --no-step --cool-ms 200 --json $W/tfla_r2.json
run backward_tests 200 /tmp/gpu_backward --include-ignored --test-threads=1
cat $W/summary.txt
