#!/usr/bin/env bash
# The first GPU run of the wide chunk_fused tile (branch wip/fused-128, from
# benches/results/s27/fused128.patch): a whole 128-wide head per block where a head wider than
# 64 has more than fused::NARROW_MAX_HEADS = 66 heads. Bundles: m = main (117d9b0), f = the
# patch. Questions, in order:
#  1. correct: the forward GPU tests (the wide tile at 68 and 67 heads), the packed-batch tests
#     (narrow tile), the driver's compile of every entry (no local memory);
#  2. faster: m against f at 16/128/128 over the paper grid, L = 128, forward+backward (rounds
#     1-2) and a forward alone (rounds 3-4, as m1/f1). Predicted: forward 10-18% faster at 128,
#     256 and 512 heads, unchanged at 64; the threshold: 80 and 96 heads (5 and 6 × 8192), where
#     the narrow tile needs two waves;
#  3. clean: compute-sanitizer's four tools over chunk_fused;
#  4. the no-norm forward against FLA's chunk_simple_gla over the paper grid, between f1's
#     rounds 3 and 4 (target ≤ 0.6×);
#  5. a trace of the 128/128 forward+backward, kernel by kernel; 6. bwd_chunk's stall reasons.
# Run: run(command="END=560 bash devcall/go.sh", carry=["devcall"]).
set -u
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."
. benches/device_call.sh
call_begin "${END:-560}" "$here/whl"
unpack $here/m m=bench-tfla-bench
unpack $here/f f=bench-tfla-bench gpu_forward=test-gpu_forward gpu_varlen=test-gpu_varlen gpu_kernels=test-gpu_kernels
run forward_tests 150 /tmp/gpu_forward --include-ignored --test-threads=1
run varlen_tests 60 /tmp/gpu_varlen --include-ignored --test-threads=1
run kernels_test 120 /tmp/gpu_kernels --include-ignored --test-threads=1
AB="--heads 16:128:128 --grid paper --chunks 128 --variants exp,sig_nonorm --reps 20 --no-step"
for r in 1 2; do ab m f; done
run sanitize 150 bash $here/f/run.sh sanitize sm_90a chunk_fused
# A forward alone under names of its own (ab_report keys rows by name; a forward that a
# backward follows stores the chunk states, one alone does not).
ln -sf /tmp/m /tmp/m1; ln -sf /tmp/f /tmp/f1
AB="$AB --no-bwd"
r=3; ab m1 f1
wait  # the reference wheels
run fla 150 env PYTHONPATH=/tmp/ref-site python3 benches/compare/compare.py --grid paper --heads 16:128:128 \
  --only fla:simple_gla --no-ceilings --dtype bf16 --json $W/fla.json
r=4; ab m1 f1
# The threshold: 64, 80 and 96 heads of 128/128.
ln -sf /tmp/m /tmp/m2; ln -sf /tmp/f /tmp/f2
AB="--heads 16:128:128 --points 4:8192,5:8192,6:8192 --chunks 128 --variants exp --reps 20 --no-step --no-bwd"
for r in 5 6; do ab m2 f2; done
# 5. Where the 128/128 forward+backward's time goes, kernel by kernel (none traced before).
run trace_128 60 /tmp/f --heads 16:128:128 --points 8:8192 --chunks 128 --variants exp,sig_nonorm \
  --reps 10 --no-step --trace --json $W/trace_128.json
# 6. Why bwd_chunk (1.80 ms at 16/128/128, 8 × 8192, latency-bound) waits: its warp stall reasons.
run ncu_bwd_chunk_stalls 60 ncu --clock-control none --section WarpStateStats --section SchedulerStats \
  --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis -k regex:bwd_chunk -c 1 \
  /tmp/f --heads 16:128:128 --points 8:8192 --chunks 128 --variants exp --reps 1 --no-step
{ for pair in "m f" "m1 f1" "m2 f2"; do python3 benches/ab_report.py $W $pair; done; } > $W/ab.txt 2>&1
cat $W/summary.txt $W/ab.txt
