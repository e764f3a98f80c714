#!/usr/bin/env bash
# Call 1: correctness and A/Bs of three candidate changes against main, one H100.
#  m = main (bafe1b4)
#  x = main + s29/fused128_v3.patch: chunk_fused's wide tile (a whole 128-wide head per block
#      beyond 66 heads) and the hybrid narrow tile. Merge only if every narrow cell (64 heads,
#      (4, 16384)) is within 1% of m's.
#  y = main + s29/chunk_wg_no_barrier.patch: bwd_chunk_wg without the block barrier between
#      its dq and its dv/dk passes.
#  z = y + each bwd_chunk_wg block asks the L2 for the inputs of the block one wave
#      (%nsmid blocks) after it (cp.async.bulk.prefetch.L2). Why: one block per SM stages
#      196 KB, then computes; its DRAM loads (8.6 µs at 1/132 of 3 TB/s) and its products (about
#      13 µs) do not overlap, which is what 1.36 ms = 62 waves × 22 µs says. Prediction: the
#      kernel 1.36 → 1.0–1.1 ms, fwd+bwd at (8, 8192) 2.93 → 2.6–2.7 ms (exp).
# Steps: x's forward and varlen tests; m's module compiled (a tiny run: the first run of a
# binary includes the driver's compile, about 45 s); m vs x forward alone at 64 and 128 heads,
# two rounds; compute-sanitizer over x's chunk_fused; z's backward tests; compute-sanitizer
# over z's bwd_chunk; m vs y vs z forward+backward at (8, 8192), two rounds; per-kernel times
# and DRAM bytes (ncu) of z's and m's backward at (8, 8192).
# Run: run(command="END=570 bash devcall/go.sh", carry=["devcall"]).
set -u
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."
. benches/device_call.sh
call_begin "${END:-570}" "$here/whl"
unpack $here/m m=bench-tfla-bench
unpack $here/x x=bench-tfla-bench gpu_forward=test-gpu_forward gpu_varlen=test-gpu_varlen
unpack $here/y y=bench-tfla-bench
unpack $here/z z=bench-tfla-bench gpu_backward_z=test-gpu_backward
run forward_tests_x 150 /tmp/gpu_forward --include-ignored --test-threads=1
run varlen_tests_x 60 /tmp/gpu_varlen --include-ignored --test-threads=1
run warm_m 90 /tmp/m --heads 16:128:128 --points 1:1024 --chunks 128 --variants exp --reps 1 --no-step
AB="--heads 16:128:128 --points 4:8192,8:8192 --chunks 128 --variants exp,sig,sig_nonorm --reps 20 --no-step --no-bwd"
for r in 1 2; do ab m x; done
python3 benches/ab_report.py $W m x > $W/ab_x.txt 2>&1
run sanitize_x 80 bash $here/x/run.sh sanitize sm_90a chunk_fused
run backward_tests_z 200 /tmp/gpu_backward_z --include-ignored --test-threads=1
run sanitize_z 80 bash $here/z/run.sh sanitize sm_90a bwd_chunk
run warm_y 90 /tmp/y --heads 16:128:128 --points 1:1024 --chunks 128 --variants exp --reps 1 --no-step
AB="--heads 16:128:128 --points 8:8192 --chunks 128 --variants exp,sig,sig_nonorm --reps 20 --no-step"
ln -sf /tmp/m /tmp/mb
for r in 3 4; do ab mb y z; done
python3 benches/ab_report.py $W mb y z > $W/ab_yz.txt 2>&1
nc ncu_z z 16:128:128 128 exp
nc ncu_m mb 16:128:128 128 exp
cat $W/summary.txt; cat $W/ab_x.txt $W/ab_yz.txt
