#!/usr/bin/env bash
# The `broaden simulate` runs behind BENCHMARKS.md (paper Tables 1-2 protocol).
# Usage: benchmarks/run_simulations.sh [OUT_ROOT] [SECTION ...]
#   OUT_ROOT defaults to runs/simulate; SECTION is any of: main rounds noise sweep peers annotators (default: all six).
# Every run holds $LOCK (default /tmp/broaden-heavy.lock) so it never overlaps other heavy jobs on a shared machine, and is
# resumable: re-running skips finished repeats. Data: BROADEN_DATA_DIR, else ../shared/data.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_ROOT=${1:-runs/simulate}
shift || true
SECTIONS=("$@")
[ ${#SECTIONS[@]} -eq 0 ] && SECTIONS=(main rounds noise sweep peers annotators)
BROADEN=${BROADEN:-.venv/bin/broaden}
LOCK=${LOCK:-/tmp/broaden-heavy.lock}  # another lock file lets two runs share a machine with free cores
export BROADEN_DATA_DIR=${BROADEN_DATA_DIR:-$(cd .. && pwd)/shared/data}  # as the Makefile: ../shared/data
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

sim() {  # sim NAME ARGS... : one timed, locked, resumable run into OUT_ROOT/NAME
  local name=$1; shift
  echo "== $name: broaden simulate $* --out $OUT_ROOT/$name"
  /usr/bin/time -f "$name: %e s wall, %U s user, %M KB peak RSS" \
    flock "$LOCK" "$BROADEN" simulate "$@" --out "$OUT_ROOT/$name"
}

for section in "${SECTIONS[@]}"; do
  case $section in
    main)  # Tables 1-2: budget 1,000 on 1,000 initial labels (the issue's prototype), K = 5, every variant.
      for ds in clickbait ag_news crowdflower_search_relevance; do
        sim "$ds" --dataset "$ds" --budget 1000 --initial 1000 --lsb-share 0.2 --rounds 1 --repeats 5 --variants all
      done ;;
    rounds)  # Algorithm 1 over several rounds: each group retrains and selects again from its own model.
      sim ag_news-rounds3 --dataset ag_news --budget 500 --initial 1000 --rounds 3 --repeats 3
      sim crowdflower-rounds3 --dataset crowdflower_search_relevance --budget 500 --initial 1000 --rounds 3 --repeats 3 ;;
    noise)  # a noisy annotator (30 % of labels replaced by another class): ambiguous items meet wrong labels.
      sim clickbait-noise30 --dataset clickbait --budget 1000 --initial 1000 --repeats 3 --label-noise 0.3
      sim ag_news-noise30 --dataset ag_news --budget 1000 --initial 1000 --repeats 3 --label-noise 0.3 ;;
    sweep)  # LSB knobs on the multi-class set: k, τ1, τ2, share (Stat-AL vs Stat-AL+LSB-LT only).
      for args in "--k 3" "--k 30" "--seed-threshold 0.3" "--seed-threshold 0.7" \
                  "--lookalike-threshold 0.3" "--lookalike-threshold 0.7" "--lsb-share 0.5"; do
        tag=$(echo "$args" | tr -d '-' | tr ' ' '=')
        sim "ag_news-sweep-$tag" --dataset ag_news --budget 1000 --initial 1000 --repeats 3 \
          --groups Stat-AL,Stat-AL+LSB-LT $args
      done ;;
    peers)  # what the peer libraries ship (issue 17): diverse batches and BALD next to Stat-AL and QBC, K = 5.
      for ds in clickbait ag_news crowdflower_search_relevance; do
        sim "$ds-peers" --dataset "$ds" --budget 1000 --initial 1000 --rounds 1 --repeats 5 \
          --groups "Random,Stat-AL,QBC,BALD,Coreset,BADGE,Cluster-Margin,Diverse(entropy)"
      done ;;
    annotators)  # three noisy annotators (30 % each): ActiveLab relabels or labels new, on CROWDLAB consensus labels.
      for ds in clickbait ag_news; do
        sim "$ds-annotators3" --dataset "$ds" --annotators 3 --label-noise 0.3 --repeats 5 --rounds 3 --budget 500 \
          --initial 1000 --groups "Random,Stat-AL,ActiveLab"
      done ;;
    *) echo "unknown section $section (main rounds noise sweep peers annotators)" >&2; exit 2 ;;
  esac
done
