#!/usr/bin/env bash
# Every GPU measurement vaelab owes, in at most 8 minutes on one GPU (sections in bench/device_check.py), from the
# source tree: no install, no internet, no pip. Each section runs under its own time limit and writes one JSON file
# into $OUT (default bench/results/device); a section cut by its limit leaves a line saying so and the rest go on.
#
#   bash bench/device_check.sh            # the full check (a GPU machine; data in $VAELAB_DATA)
#   bash bench/device_check.sh --dry-run  # tiny sizes on whatever device there is (CI runs this on the CPU)
#
# Data: $VAELAB_DATA must hold fashion-mnist/ and cifar10-lossless-subset/ (the CIFAR-10 stand-in is not needed).
set -uo pipefail
cd "$(dirname "$0")/.."
small=()
limits=(throughput:80 multirun:100 evaluate:50 seed:130 hvae:110)
study_seconds=110
hvae_seconds=75
seed_epochs=2
if [ "${1:-}" = "--dry-run" ]; then
  small=(--small)
  limits=(throughput:240 multirun:240 evaluate:240 seed:300 hvae:240)
  hvae_seconds=5
  seed_epochs=1
  study_seconds=280
fi
out=${OUT:-bench/results/device}
mkdir -p "$out"
logs=$(mktemp -d)  # logs stay out of $OUT: the device tool brings back at most 8 files
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
status=0
start=$(date +%s)
for entry in "${limits[@]}"; do
  section=${entry%%:*}
  limit=${entry##*:}
  t0=$(date +%s)
  timeout --signal=TERM --kill-after=10 "$limit" "$py" bench/device_check.py "$section" --json "$out/$section.json" \
    --seconds "$hvae_seconds" --epochs "$seed_epochs" --study-seconds "$study_seconds" "${small[@]}" >"$logs/$section.log" 2>&1
  rc=$?
  if [ $rc -eq 0 ]; then
    echo "device_check: $section done in $(( $(date +%s) - t0 )) s"
  else
    status=1
    [ $rc -eq 124 ] && why="cut at its limit of $limit s" || why="failed (exit $rc)"
    echo "device_check: $section $why; last lines:"
    tail -n 5 "$logs/$section.log"
  fi
done
echo "device_check: all sections in $(( $(date +%s) - start )) s; JSON in $out"
exit $status
