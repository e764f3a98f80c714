#!/usr/bin/env bash
# Call 2: main with the chunk-gradient passes written once (7040b71; bundle in devcall/n:
# `cargo xtask bundle --xz` on that commit, bench-tfla-bench, bench-tfla-sanitize,
# test-gpu_kernels, xtask and run.sh copied from it). The 16/128/128 paper grid, L = 128, in one
# call with Triton TFLA at its fair best (compare.py: the exp kernel without LLVM
# optimizations, which it needs to compile, sig and no-norm with them; FLA left out, its
# autotuning takes minutes), tfla in two rounds around it; compute-sanitizer over the
# bwd_chunk kernels the refactor changed. Its backward GPU tests ran in call 1 on the same
# arithmetic (branch wip/d1-stag, the stagger switch off). Table: `cargo xtask report --tfla
# tfla_rN.json --rows rows_rN.json refs.json`, then s30/table.py.
# Run: run(command="END=330 bash benches/results/s32/call2_plan.sh", carry=["devcall/n", "devcall/whl"]).
set -u
cd "$(dirname "$0")/../../.."
. benches/device_call.sh
call_begin "${END:-330}" devcall/whl
unpack devcall/n f=bench-tfla-bench gpu_kernels=test-gpu_kernels
# The driver's compile of the module lands in the cache; no entry uses local memory.
run kernels_test 90 /tmp/gpu_kernels --include-ignored --test-threads=1
P=32:2048,16:4096,8:8192,4:16384
run tfla_r1 40 /tmp/f --heads 16:128:128 --points $P --chunks 128 --reps 10 --no-step --cool-ms 200 --json $W/tfla_r1.json
wait  # the reference wheels
run refs 150 env PYTHONPATH=/tmp/ref-site python3 benches/compare/compare.py --grid paper --heads 16:128:128 \
  --chunks 128 --only tfla:exp,tfla:sig,tfla:sig_nonorm --dtype bf16 --json $W/refs.json
run tfla_r2 40 /tmp/f --heads 16:128:128 --points $P --chunks 128 --reps 10 --no-step --cool-ms 200 --json $W/tfla_r2.json
run sanitize 60 bash devcall/n/run.sh sanitize sm_90a bwd_chunk
cat $W/summary.txt
