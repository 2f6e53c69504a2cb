#!/usr/bin/env bash
# Where broadening pays off (issue 18, DESIGN §3a): drift and blind-spot scenarios next to i.i.d. data, with
# the fair control (Stat-AL on the snapshot refit with the recent batch), K = 8 paired repeats.
# Usage: benchmarks/run_scenarios.sh [OUT_ROOT] [DATASET ...]   (datasets: clickbait ag_news mnist)
# SCENARIOS="drift blindspot iid" (the default) picks the scenarios run for each dataset; EXTRA_ARGS are
# added to every simulate call (e.g. EXTRA_ARGS="--auto-floor 0.02").
# Each run holds $LOCK (default /tmp/broaden-heavy.lock) and is resumable (finished repeats are reused).
# The --strategy auto benchmark (issue 20) is the same runs over 4 rounds with the Auto group:
#   ROUNDS=4 GROUPS_ARG="Stat-AL,Stat-AL (refit),Stat-AL+LSB-LT,Stat-AL+LSB-LT@0.5,Auto (refit)" \
#     benchmarks/run_scenarios.sh runs/auto
# Runs are deterministic, so a new group can run alone beside the reference group and be compared with
# groups run before: ROUNDS=4 GROUPS_ARG="Stat-AL,Auto (refit)" benchmarks/run_scenarios.sh runs/auto2, then
#   python benchmarks/summarize_scenarios.py runs/auto2 --also runs/auto   (checks Stat-AL is identical;
#   add --skip-also "Auto (refit)" when runs/auto2 holds a new version of a group runs/auto also has)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_ROOT=${1:-runs/scenarios}
shift || true
DATASETS=("$@")
[ ${#DATASETS[@]} -eq 0 ] && DATASETS=(clickbait ag_news mnist)
BROADEN=${BROADEN:-.venv/bin/broaden}
export BROADEN_DATA_DIR=${BROADEN_DATA_DIR:-$(cd .. && pwd)/shared/data}  # as the Makefile: ../shared/data
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
LOCK=${LOCK:-/tmp/broaden-heavy.lock}  # another lock file lets two runs share a machine with free cores
REPEATS=${REPEATS:-8}
SCENARIOS=${SCENARIOS:-drift blindspot iid}
for sc in $SCENARIOS; do  # a typo fails before the first run, not after hours of them
  case $sc in drift|blindspot|iid) ;; *) echo "unknown scenario $sc (drift blindspot iid)" >&2; exit 2 ;; esac
done
ROUNDS=${ROUNDS:-1}
GROUPS_ARG=${GROUPS_ARG:-"Random,Stat-AL,Stat-AL (refit),Stat-AL+LSB-LT,Stat-AL+LSB-LT@0.5"}
COMMON=(--budget 500 --initial 1000 --recent 300 --k 10 --lookalike-threshold 0.5 --lsb-fill
        --rounds "$ROUNDS" --repeats "$REPEATS" --groups "$GROUPS_ARG")
read -r -a EXTRA <<< "${EXTRA_ARGS:-}"
COMMON+=("${EXTRA[@]}")

sim() {  # sim NAME ARGS... : one timed, locked, resumable run into OUT_ROOT/NAME
  local name=$1; shift
  echo "== $name: broaden simulate $* --out $OUT_ROOT/$name"
  /usr/bin/time -f "$name: %e s wall, %U s user, %M KB peak RSS" \
    flock "$LOCK" "$BROADEN" simulate "$@" "${COMMON[@]}" --out "$OUT_ROOT/$name"
}

for ds in "${DATASETS[@]}"; do
  case $ds in
    clickbait)  # S: the quiz/personality cluster of clickbait headlines (k-means of class 1, cluster 7 of 8)
      S=(--dataset clickbait --subpop kmeans:1:8:7); DRIFT_TO=0; DATA=(--dataset clickbait) ;;
    ag_news)    # S: space and astronomy stories of Sci/Tech; drift moves them to World
      S=(--dataset ag_news --subpop 'keyword:Tech:\b(nasa|space|mars|moon|orbit\w*|astronaut\w*|shuttle|planet\w*|telescope|spacecraft|rocket\w*|comet|asteroid|saturn|cassini)\b')
      DRIFT_TO=World; DATA=(--dataset ag_news) ;;
    mnist)      # 0-4 vs 5-9 (binary); S: the digit 4, which drift moves to the 5-9 side
      S=(--dataset mnist --class-groups 0,1,2,3,4:5,6,7,8,9 --subpop column:orig_label=4); DRIFT_TO=1
      DATA=(--dataset mnist --class-groups 0,1,2,3,4:5,6,7,8,9) ;;
    *) echo "unknown dataset $ds (clickbait ag_news mnist)" >&2; exit 2 ;;
  esac
  for sc in $SCENARIOS; do
    case $sc in
      drift) sim "$ds-drift" "${S[@]}" --scenario drift --relabel-to "$DRIFT_TO" --recent-subpop 20 ;;
      blindspot) sim "$ds-blindspot" "${S[@]}" --scenario blindspot --recent-subpop 20 ;;
      iid) sim "$ds-iid" "${DATA[@]}" --scenario iid ;;
    esac
  done
done
