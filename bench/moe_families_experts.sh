#!/usr/bin/env bash
# DWF and MORE end to end at smoke size on a CIFAR-10 subset: every expert pre-trained as an ordinary plain run,
# then DWF's joint training and MORE's stage 2 on those runs, then one evaluation of each. Smoke-size numbers show
# that the pipeline trains and is measured like every other model; they are NOT the papers' numbers (resnet_micro
# experts, a few hundred images, two epochs).
#
#   bash bench/moe_families_experts.sh [OUT_DIR]     (needs ROME_BENCH_DATA or ../shared/data/cifar10-jpeg.tar.gz)
#
#   DWF:  1 clean + 4 dwf-fgsm (ε ~ U{0.01..0.09} per batch) + 4 dwf-pgd (iterations ~ U{1..5}: dwf-smoke's grid)
#         experts (seeds 0..8), then --family dwf --method dwf with model.options.experts = those nine runs;
#   MORE: clean, l1-at, l2-at, linf-at experts, then --family more --method more (stage 2: gate + heads).
#
# Environment: TRAIN_SIZE (512), EPOCHS (2), SUITE (seen-pgd), N_EXAMPLES (100), QUICK=1 (the short variant:
# TRAIN_SIZE 128, EPOCHS 1, N_EXAMPLES 20), DWF_OUT / MORE_OUT (the final runs; default OUT_DIR/dwf, OUT_DIR/more),
# STORE (OUT_DIR/results.sqlite). Finished runs are skipped and interrupted ones resumed, so a rerun continues.
set -euo pipefail
OUT=${1:-runs/moe-families}
DATA=${ROME_BENCH_DATA:-../shared/data/cifar10-jpeg.tar.gz}
if [ "${QUICK:-0}" = 1 ]; then TRAIN_SIZE=${TRAIN_SIZE:-128}; EPOCHS=${EPOCHS:-1}; N_EXAMPLES=${N_EXAMPLES:-20}; fi
SUITE=${SUITE:-seen-pgd}
N=${N_EXAMPLES:-100}
DWF_OUT=${DWF_OUT:-$OUT/dwf}
MORE_OUT=${MORE_OUT:-$OUT/more}
STORE=${STORE:-$OUT/results.sqlite}
RB=${RB:-rome-bench}
COMMON=(--dataset cifar10 --data-dir "$DATA" --train-size "${TRAIN_SIZE:-512}" --epochs "${EPOCHS:-2}" --no-progress)
mkdir -p "$OUT"

train() {  # train RUN_DIR [flags...]: skip a finished run, resume an interrupted one
  local run=$1; shift
  if [ -f "$run/model.json" ]; then return; fi
  local resume=()
  if [ -f "$run/config.json" ]; then resume=(--resume); fi
  "$RB" train "${COMMON[@]}" --out "$run" "${resume[@]}" "$@"
}

json_list() {  # json_list DIR...: a JSON list of the directories, for model.options.experts
  local items=() dir
  for dir in "$@"; do items+=("\"$dir\""); done
  local IFS=,
  echo "[${items[*]}]"
}

# DWF: the benign expert has no attack options (the preset's train.options are the dwf recipes')
dwf_experts=("$OUT/dwf-e0")
train "$OUT/dwf-e0" --preset dwf-smoke --family plain --method clean --seed 0 --set 'train.options={}'
for seed in 1 2 3 4; do
  train "$OUT/dwf-e$seed" --preset dwf-smoke --family plain --method dwf-fgsm --seed "$seed"
  dwf_experts+=("$OUT/dwf-e$seed")
done
for seed in 5 6 7 8; do
  train "$OUT/dwf-e$seed" --preset dwf-smoke --family plain --method dwf-pgd --seed "$seed"
  dwf_experts+=("$OUT/dwf-e$seed")
done
train "$DWF_OUT" --preset dwf-smoke --set "model.options.experts=$(json_list "${dwf_experts[@]}")"

# MORE: one expert per threat, then stage 2 against the whole mixture
more_experts=()
for method in clean l1-at l2-at linf-at; do
  train "$OUT/more-$method" --preset more-smoke --family plain --method "$method"
  more_experts+=("$OUT/more-$method")
done
train "$MORE_OUT" --preset more-smoke --set "model.options.experts=$(json_list "${more_experts[@]}")"

for run in "$DWF_OUT" "$MORE_OUT"; do
  "$RB" eval --run "$run" --suite "$SUITE" --n-examples "$N" --store "$STORE" --data-dir "$DATA" --no-progress \
    > /dev/null
done
"$RB" eval --run "$DWF_OUT" --suite dwf --n-examples "$N" --store "$STORE" --data-dir "$DATA" --no-progress \
  > /dev/null
"$RB" leaderboard --suite "$SUITE" --store "$STORE" --costs
"$RB" leaderboard --suite dwf --store "$STORE" --reference dwf-paper
