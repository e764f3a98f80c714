#!/usr/bin/env bash
# Session 26, call 3: the paper grid for the merged kernels (b4e9665 = 3c49f0b's kernels; the s/
# bundle of devcall/), Triton TFLA and FLA in the same call, then ncu at 128/128 and the varlen
# tests. Run (a copy as devcall/go3.sh): run(command="END=520 bash devcall/go3.sh", carry=["devcall"]).
set -u
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."
. benches/device_call.sh
call_begin "${END:-520}" "$here/whl"
gunzip -c $here/s/bin/bench-tfla-bench.gz > /tmp/s; gunzip -c $here/s/bin/test-gpu_varlen.gz > /tmp/gpu_varlen
chmod +x /tmp/s /tmp/gpu_varlen
P=32:2048,16:4096,8:8192,4:16384
run tfla_r1 120 /tmp/s --heads 8:512:512,8:256:512,16:128:128 --points $P --chunks 128,256 --reps 10 --no-step --json $W/tfla_r1.json
wait  # the reference wheels
run refs 300 env PYTHONPATH=/tmp/ref-site python3 benches/compare/compare.py --grid paper --chunks 128 \
  --only tfla:exp,tfla:sig,tfla:sig_nonorm,fla:simple_gla --dtype bf16 --json $W/refs.json
nc ncu_s_16_128_128 s 16:128:128 128 exp,sig_nonorm
run gpu_varlen 40 /tmp/gpu_varlen --include-ignored --test-threads=1
run tfla_r2 120 /tmp/s --heads 8:512:512,8:256:512,16:128:128 --points $P --chunks 128,256 --reps 10 --no-step --json $W/tfla_r2.json
cat $W/summary.txt
