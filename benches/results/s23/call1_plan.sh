#!/usr/bin/env bash
# Session 23, call 1: b/ = s23-scores-wg = s22-prefetch (0a1450e row dots from staged rows;
# 79d773b D2; 1dd2a5c the state-gradient walks' L2 prefetch) + bwd_scores_wg (the wide heads'
# score matrices on wgmma, 128 x 128 blocks). pf = s22-prefetch's tfla-bench, new2 = 0a1450e's,
# base = 72d8c8a's (PTX = e060fbe's). Tests and sanitizers (every backward kernel,
# chunk_output_wg) on b/, A/B of forward and forward+backward of the four, per-kernel times
# (ncu), Triton TFLA at the wide heads in the same call, then the sm_80 module's backward test.
set -u
W=$OUT/w; mkdir -p $W
here=$(cd "$(dirname "$0")" && pwd)
gunzip -c $here/base-bench.gz > /tmp/base; chmod +x /tmp/base
gunzip -c $here/pf-bench.gz > /tmp/pf; chmod +x /tmp/pf
gunzip -c $here/b/bin/bench-tfla-bench.gz > /tmp/s23; chmod +x /tmp/s23
gunzip -c $here/rowdots-bench.gz > /tmp/new2; chmod +x /tmp/new2
for t in gpu_forward gpu_backward gpu_kernels gpu_varlen; do
  gunzip -c $here/b/bin/test-$t.gz > /tmp/$t; chmod +x /tmp/$t
done
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.memory,driver_version --format=csv > $W/card.txt
T0=$(date +%s); END=${END:-560}
run() {
  local name=$1 t=$2; shift 2
  local left=$(( END - ($(date +%s)-T0) ))
  if [ $left -lt 15 ]; then echo "$name skipped (deadline)" >> $W/summary.txt; return; fi
  [ $t -gt $left ] && t=$left
  local s=$(date +%s); timeout $t "$@" > $W/$name.txt 2>&1; echo "$name rc=$? $(( $(date +%s)-s ))s" >> $W/summary.txt
}
pack() { echo "total $(( $(date +%s)-T0 ))s" >> $W/summary.txt; tar czf $OUT/out.tgz -C $OUT w; }
trap pack EXIT
cd $here/..
( python3 -m pip install --quiet --disable-pip-version-check --no-deps --target /tmp/ref-site \
    --no-index --find-links $here/whl mlstm-kernels==2.0.6 fla-core==0.6.0 einops > $W/pip.txt 2>&1 ) &
export CUDA_CACHE_MAXSIZE=4294967296
( for b in s23 pf new2 base; do /tmp/$b --heads 8:256:512 --points 1:256 --chunks 128 --reps 1 --no-step > $W/warm_$b.txt 2>&1; done ) &
run gpu_backward 150 /tmp/gpu_backward --include-ignored --test-threads=1 &
run gpu_forward 100 /tmp/gpu_forward --include-ignored --test-threads=1 &
run gpu_varlen 60 /tmp/gpu_varlen --include-ignored --test-threads=1 &
wait
run gpu_kernels 30 /tmp/gpu_kernels --include-ignored --test-threads=1
AB="--heads 8:256:512,8:512:512,16:128:128 --points 8:8192 --chunks 128,256 --reps 10 --no-step"
ab() { for b in "$@"; do run ${b}_r$r 60 /tmp/$b $AB --json $W/${b}_r$r.json; done; }
r=1; AB=${AB1:-$AB}; ab s23 pf new2 base; AB="--heads 8:256:512,8:512:512,16:128:128 --points 8:8192 --chunks 128,256 --reps 10 --no-step"
nc() { local name=$1 bin=$2 h=$3 l=$4 v=$5
  run $name 40 ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base \
    /tmp/$bin --heads $h --points 8:8192 --chunks $l --variants $v --reps 1 --no-step; }
run sanitize_bwd 150 bash $here/b/run.sh sanitize sm_90a bwd_
nc ncu_8_512_512 s23 8:512:512 256 exp
nc ncu_pf_8_512_512 pf 8:512:512 256 exp
r=2; ab base new2 pf s23
run sanitize_output_wg 60 bash $here/b/run.sh sanitize sm_90a output_wg
nc ncu_8_256_512 s23 8:256:512 256 exp
run triton 120 env PYTHONPATH=/tmp/ref-site python3 benches/compare/compare.py --points 8x8192 \
  --heads 8:512:512,8:256:512 --chunks 128 --no-step --no-ceilings \
  --only tfla:exp,tfla:sig,tfla:sig_nonorm --dtype bf16 --json $W/triton.json
r=3; ab pf s23 base new2
nc ncu_l128_8_512_512 s23 8:512:512 128 exp,sig_nonorm
run portable_gpu_backward 120 env TFLA_PORTABLE=1 /tmp/gpu_backward --include-ignored --test-threads=1
cat $W/summary.txt
