#!/usr/bin/env bash
# Call 2: main with y merged (bundle f = wip/y-s30: bafe1b4 + s29/chunk_wg_no_barrier.patch,
# whose kernels are main's after the merge) over the paper grid at 16/128/128 in one call with
# the reference kernels at their fair best (compare.py: Triton TFLA's exp kernel without LLVM
# optimizations, which it needs to compile, sig and no-norm with them; FLA's chunk_simple_gla),
# tfla in two rounds around them; f's per-kernel trace; ncu's stall and memory sections over
# f's bwd_chunk_wg (where the next step is); and z2 against f: call 1's z prefetched the whole
# next wave's inputs to L2 and thrashed it (DRAM bytes of bwd_chunk_wg 2.48 -> 4.01 GB), z2
# prefetches only the first group (dH, C̃_k, row vectors: 64 KB a block, what a block waits
# for before it multiplies) half a wave ahead. Prediction: DRAM bytes back to about 2.5 GB,
# the kernel 0–8% faster.
# f's backward tests come first: call 1 ran them on z (this change plus the prefetch hint).
# Run: run(command="END=570 bash devcall/go.sh", carry=["devcall"]).
set -u
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."
. benches/device_call.sh
call_begin "${END:-570}" "$here/whl"
unpack $here/f f=bench-tfla-bench gpu_kernels=test-gpu_kernels gpu_backward=test-gpu_backward
unpack $here/z2 z2=bench-tfla-bench
# The merged kernel's own build against the float64 reference (call 1 ran these on z); the
# driver's compile of f's module lands in the cache; no entry uses local memory.
run backward_tests_f 200 /tmp/gpu_backward --include-ignored --test-threads=1
run kernels_test_f 60 /tmp/gpu_kernels --include-ignored --test-threads=1
P=32:2048,16:4096,8:8192,4:16384
run tfla_r1 90 /tmp/f --heads 16:128:128 --points $P --chunks 128,256 --reps 10 --no-step --cool-ms 200 --json $W/tfla_r1.json
wait  # the reference wheels
run refs 240 env PYTHONPATH=/tmp/ref-site python3 benches/compare/compare.py --grid paper --heads 16:128:128 \
  --chunks 128 --only tfla:exp,tfla:sig,tfla:sig_nonorm,fla:simple_gla --dtype bf16 --json $W/refs.json
run tfla_r2 90 /tmp/f --heads 16:128:128 --points $P --chunks 128,256 --reps 10 --no-step --cool-ms 200 --json $W/tfla_r2.json
run trace_f 30 /tmp/f --heads 16:128:128 --points 8:8192 --chunks 128 --variants exp,sig_nonorm --reps 10 --no-step --trace
run warm_z2 90 /tmp/z2 --heads 16:128:128 --points 1:1024 --chunks 128 --variants exp --reps 1 --no-step
AB="--heads 16:128:128 --points 8:8192 --chunks 128 --variants exp,sig,sig_nonorm --reps 20 --no-step"
for r in 5 6; do ab f z2; done
python3 benches/ab_report.py $W f z2 > $W/ab_z2.txt 2>&1
nc ncu_z2 z2 16:128:128 128 exp
run ncu_f_detail 60 ncu --clock-control none --kernel-name regex:bwd_chunk_wg --launch-count 1 \
  --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section SchedulerStats \
  --section Occupancy /tmp/f --heads 16:128:128 --points 8:8192 --chunks 128 --variants exp --reps 1 --no-step
cat $W/summary.txt; cat $W/ab_z2.txt
