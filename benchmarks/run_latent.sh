#!/usr/bin/env bash
# The LSB latent in the paper's own condition (issue 16): every repeat fine-tunes all-MiniLM-L6-v2 on its
# initial labelled set (Adam 4e-5, max length 64, <= 3 epochs, early stop) and the whole repeat runs on the
# fine-tuned [CLS] states: Stat-AL+LSB-LT broadens on those states (the paper's latent) and
# Stat-AL+LSB-LT[tuned] on the classifier's hidden layer over them. The frozen-encoder runs of the same
# protocol (same seeds, so the same initial sets) are the "main" section of run_simulations.sh.
# Usage: benchmarks/run_latent.sh [OUT_ROOT] [DATASET ...]  (default: ag_news crowdflower_search_relevance)
# Holds $LOCK (default /tmp/broaden-heavy.lock) per run; resumable (finished repeats are reused).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_ROOT=${1:-runs/latent}
shift || true
DATASETS=("$@")
[ ${#DATASETS[@]} -eq 0 ] && DATASETS=(ag_news crowdflower_search_relevance)
BROADEN=${BROADEN:-.venv/bin/broaden}
LOCK=${LOCK:-/tmp/broaden-heavy.lock}
REPEATS=${REPEATS:-5}
export BROADEN_DATA_DIR=${BROADEN_DATA_DIR:-$(cd .. && pwd)/shared/data}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
for ds in "${DATASETS[@]}"; do
  echo "== $ds-finetuned"
  /usr/bin/time -f "$ds-finetuned: %e s wall, %U s user, %M KB peak RSS" \
    flock "$LOCK" "$BROADEN" simulate --dataset "$ds" --latent finetuned --budget 1000 --initial 1000 \
      --repeats "$REPEATS" --groups "Stat-AL,Stat-AL+LSB-LT" --variants tuned --out "$OUT_ROOT/$ds-finetuned"
done
