#!/usr/bin/env bash
# One call for two questions (device starts are scarce: this session's first three were
# refused), in order of what they are worth:
#  A. bwd_chunk_wg, the chunk gradients on `wgmma` (heads up to 128 at L = 128, sm_90a), first
#     run on a GPU: bundle n = the tree with it, m = main before it (117d9b0's kernels). bwd_chunk
#     was 55% of the 128/128 exp forward+backward (1.81 of 3.28 ms, session 28's trace),
#     latency-bound on mma.sync. n's backward GPU tests and driver-compile test (and bwd_chunk's
#     small-head test through the sm_80 module, where it still runs); m against n,
#     forward+backward at 16/128/128 (8, 8192), three variants, two rounds; n's launch trace;
#     compute-sanitizer over bwd_chunk_wg.
#  B. session 28's prepared question (s28/call2_plan.sh), cut to what decides the merge: which
#     narrow chunk_fused tile goes with the wide one. m, g, h forwards alone at 64 heads (narrow
#     tile) and 128 (wide), three variants, two rounds; the better of g and h (x) through the
#     forward GPU tests and compute-sanitizer over chunk_fused. (Triton's grid: a later call.)
# Run: run(command="END=570 bash devcall/go.sh", carry=["devcall"]), go.sh = this file.
set -u
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."
. benches/device_call.sh
call_begin "${END:-570}" "$here/whl"
unpack $here/m m=bench-tfla-bench
unpack $here/n n=bench-tfla-bench gpu_backward=test-gpu_backward gpu_kernels_n=test-gpu_kernels
unpack $here/g g=bench-tfla-bench
unpack $here/h h=bench-tfla-bench
run backward_tests 200 /tmp/gpu_backward --include-ignored --test-threads=1
run kernels_test_n 90 /tmp/gpu_kernels_n --include-ignored --test-threads=1
# bwd_chunk (mma.sync) now runs only from the sm_80 module: its small-head test through it.
run backward_chunk_portable 90 env TFLA_PORTABLE=1 /tmp/gpu_backward --include-ignored --test-threads=1 \
  backward_chunk_kernel_small_head_shapes
AB="--heads 16:128:128 --points 8:8192 --chunks 128 --variants exp,sig,sig_nonorm --reps 20 --no-step"
for r in 1 2; do ab m n; done
run trace_n 60 /tmp/n --heads 16:128:128 --points 8:8192 --chunks 128 --variants exp,sig_nonorm \
  --reps 10 --no-step --trace --json $W/trace_n.json
ln -sf /tmp/m /tmp/mf
AB="--heads 16:128:128 --points 4:8192,8:8192 --chunks 128 --variants exp,sig,sig_nonorm --reps 20 --no-step --no-bwd"
for r in 3 4; do ab mf g h; done
x=$(python3 - "$W" <<'PY'
import glob, json, statistics, sys
def total(n):
    cells = {}
    for f in glob.glob(f"{sys.argv[1]}/{n}_r*.json"):
        for r in json.load(open(f)):
            cells.setdefault((r["variant"], r["B"]), []).append(r["fwd_ms"])
    return sum(statistics.median(v) for v in cells.values())
print(min("gh", key=total))
PY
)
echo "chosen: $x" | tee $W/chosen.txt
unpack $here/$x gpu_forward=test-gpu_forward gpu_varlen=test-gpu_varlen
run forward_tests_x 150 /tmp/gpu_forward --include-ignored --test-threads=1
run varlen_tests_x 60 /tmp/gpu_varlen --include-ignored --test-threads=1
run sanitize_n 80 bash $here/n/run.sh sanitize sm_90a chunk_wg
run sanitize_x 80 bash $here/$x/run.sh sanitize sm_90a chunk_fused
{ python3 benches/ab_report.py $W m n; python3 benches/ab_report.py $W mf g h; } > $W/ab.txt 2>&1
cat $W/summary.txt $W/chosen.txt $W/ab.txt
