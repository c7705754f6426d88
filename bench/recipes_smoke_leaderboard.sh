#!/usr/bin/env bash
# Every recipe of issue 11 at smoke size on a CIFAR-10 subset, evaluated on one suite, on one leaderboard with
# training costs. Smoke-size numbers show that each recipe trains and is measured the same way; they are NOT the
# paper's numbers (a 4-block width-64 ViT, a few hundred images, two epochs).
#
#   bash bench/recipes_smoke_leaderboard.sh [OUT_DIR]     (needs ROME_BENCH_DATA or ../shared/data/cifar10-jpeg.tar.gz)
#
# Environment: SUITE (seen-apgd), N_EXAMPLES (100), TRAIN_SIZE (640), EPOCHS (2).
set -euo pipefail
OUT=${1:-runs/recipes-smoke}
DATA=${ROME_BENCH_DATA:-../shared/data/cifar10-jpeg.tar.gz}
SUITE=${SUITE:-seen-apgd}
N=${N_EXAMPLES:-100}
COMMON=(--preset smoke --dataset cifar10 --data-dir "$DATA" --train-size "${TRAIN_SIZE:-640}"
        --epochs "${EPOCHS:-2}" --no-progress)
STORE="$OUT/results.sqlite"
mkdir -p "$OUT"

train() {  # train NAME [flags...]: skip a finished run, resume an interrupted one
  local name=$1; shift
  if [ -f "$OUT/$name/model.json" ]; then return; fi
  local resume=()
  if [ -f "$OUT/$name/config.json" ]; then resume=(--resume); fi
  rome-bench train "${COMMON[@]}" --out "$OUT/$name" "${resume[@]}" "$@"
}

train random --method random
train avg --method avg
train max --method max
train max-apgd --method max --train-attack apgd
train msd --method msd --set train.options.steps=10       # smoke: 10 of MSD's 50 iterations
train e-at --method e-at
train ramp --method ramp
train ramp-apgd --method ramp --train-attack apgd
train trades --method trades
train pat --method pat
train rome-max --method rome+max
train rome-ramp --method rome+ramp
train linf-at --method linf-at
train max-finetuned --method max --train-attack apgd --init "$OUT/linf-at" --set threats.apgd_steps.l1=10 \
  --set threats.apgd_steps.l2=10 --set threats.apgd_steps.linf=10

for run in "$OUT"/*/; do
  name=$(basename "$run")
  rome-bench eval --run "$run" --suite "$SUITE" --n-examples "$N" --store "$STORE" --data-dir "$DATA" \
    --label "$name" --no-progress > /dev/null
done
rome-bench leaderboard --suite "$SUITE" --store "$STORE" --costs
