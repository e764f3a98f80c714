#!/usr/bin/env bash
# Session 27, call 3. t/ = tfla-bench with --cool-ms. Calls 1 and 2 found the wide heads' rows
# timed in windows where the card holds its clock for power (700 W) depending on what ran
# before them. Questions:
#  1. with the card idle 1 s before each timed row, do all rows run at 1980 MHz, and which L is
#     best in each cell (the chooser's target, measured without the cap)?
#  2. the same rows without the pause, in the same call (what a loop of calls sees);
#  3. the cooled rows at the other three paper points.
# Run (a copy as devcall/go.sh): run(command="END=300 bash devcall/go.sh", carry=["devcall"]).
set -u
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."
. benches/device_call.sh
call_begin "${END:-300}" "$here/whl"
unpack $here/t t=bench-tfla-bench
run cooled 120 /tmp/t --heads 8:512:512,8:256:512 --points 8:8192 --chunks 128,256 --reps 10 --no-step --cool-ms 1000 --json $W/cooled.json
run hot 60 /tmp/t --heads 8:512:512,8:256:512 --points 8:8192 --chunks 128,256 --reps 10 --no-step --json $W/hot.json
run cooled_paper 150 /tmp/t --heads 8:512:512,8:256:512 --points 32:2048,16:4096,4:16384 --chunks 128,256 --reps 10 --no-step --cool-ms 1000 --json $W/cooled_paper.json
cat $W/summary.txt
