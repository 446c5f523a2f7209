#!/usr/bin/env bash
# KTO recipe: train a policy from an SFT model on unpaired feedback (rows prompt, completion,
# label) or on preference pairs, each split into a desirable and an undesirable answer. Point
# the variables at your own model and data; every flag after them can be changed or extended.
#   SFT_MODEL=out/sft DATA=/data/feedback OUT=out/kto bash examples/kto/train.sh [--desirable_weight 1.33 ...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
SFT_MODEL="${SFT_MODEL:-output/demo/sft}"
DATA="${DATA:-examples/demo/data/preference}"
OUT="${OUT:-output/kto}"
exec bash scripts/dpo.sh \
  --model_name_or_path "$SFT_MODEL" \
  --data_path "$DATA" \
  --output_dir "$OUT" \
  --loss_type kto \
  --beta 0.1 \
  --desirable_weight 1.0 \
  --undesirable_weight 1.0 \
  "$@"
