#!/usr/bin/env bash
# Every mixture-of-experts defence of issue 12 beside RoME+MAX and MAX, at smoke size on one CIFAR-10 subset, on one
# `seen` leaderboard with training costs, the GMA leaderboard (suite gma-pgd), and the sparse MoE's fixed-expert rows.
# Smoke-size numbers show that each family trains and is measured the same way; they are NOT the papers' numbers
# (micro/smoke backbones, about a thousand training images, a few epochs).
#
#   bash bench/moe_families_smoke_leaderboard.sh [OUT_DIR]   (needs ROME_BENCH_DATA or ../shared/data/cifar10-jpeg.tar.gz)
#
# Environment: TRAIN_SIZE (1000), EPOCHS (3), SUITE (seen), N_EXAMPLES (100), RB (rome-bench). Finished runs are
# skipped and interrupted ones resumed; stored results are reused, so a rerun only adds what is missing.
set -euo pipefail
OUT=${1:-runs/moe-families-smoke}
DATA=${ROME_BENCH_DATA:-../shared/data/cifar10-jpeg.tar.gz}
SUITE=${SUITE:-seen}
N=${N_EXAMPLES:-100}
RB=${RB:-rome-bench}
export TRAIN_SIZE=${TRAIN_SIZE:-1000} EPOCHS=${EPOCHS:-3}
COMMON=(--dataset cifar10 --data-dir "$DATA" --train-size "$TRAIN_SIZE" --epochs "$EPOCHS" --no-progress)
STORE="$OUT/results.sqlite"
mkdir -p "$OUT"

train() {  # train NAME [flags...]: skip a finished run, resume an interrupted one
  local name=$1; shift
  if [ -f "$OUT/$name/model.json" ]; then return; fi
  local resume=()
  if [ -f "$OUT/$name/config.json" ]; then resume=(--resume); fi
  "$RB" train "${COMMON[@]}" --out "$OUT/$name" "${resume[@]}" "$@"
}

train rome-max --preset smoke --method rome+max
train max --preset smoke --method max
train moe-ffn --preset smoke --family moe-ffn --method max
train sparse-moe --preset sparse-moe-smoke
train remoe --preset remoe-smoke
# DWF's nine experts and MORE's four, then DWF's joint training and MORE's stage 2 (evaluated there on seen-pgd)
DWF_OUT="$OUT/dwf" MORE_OUT="$OUT/more" STORE="$OUT/experts.sqlite" SUITE=seen-pgd N_EXAMPLES="$N" RB="$RB" \
  bash "$(dirname "$0")/moe_families_experts.sh" "$OUT/experts" > /dev/null

for name in rome-max max moe-ffn sparse-moe remoe dwf more; do
  for suite in "$SUITE" gma-pgd; do
    "$RB" eval --run "$OUT/$name" --suite "$suite" --n-examples "$N" --store "$STORE" --data-dir "$DATA" \
      --label "$name" --no-progress > /dev/null
  done
done
"$RB" eval --run "$OUT/sparse-moe" --suite "$SUITE" --n-examples "$N" --store "$STORE" --data-dir "$DATA" \
  --label sparse-moe --route-to-expert all --no-progress > /dev/null

echo "## suite $SUITE, $N CIFAR-10 test images, with training costs"
"$RB" leaderboard --suite "$SUITE" --store "$STORE" --costs
echo
echo "## gma-pgd: PGD, GMA and their per-example worst case (n/a: a model without gates)"
"$RB" leaderboard --suite gma-pgd --store "$STORE"
