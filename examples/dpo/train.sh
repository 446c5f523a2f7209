#!/usr/bin/env bash
# DPO recipe: train a policy from an SFT model on preference pairs (parquet folder with
# train.parquet/test.parquet: prompt, chosen, rejected). Point the variables at your own
# model and data; every flag after them can be changed or extended.
#   SFT_MODEL=out/sft DATA=/data/pairs OUT=out/dpo bash examples/dpo/train.sh [--loss_type ipo ...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
SFT_MODEL="${SFT_MODEL:-output/demo/sft}"
DATA="${DATA:-examples/demo/data/preference}"
OUT="${OUT:-output/dpo}"
exec bash scripts/dpo.sh \
  --model_name_or_path "$SFT_MODEL" \
  --data_path "$DATA" \
  --output_dir "$OUT" \
  --loss_type sigmoid \
  --beta 0.1 \
  --reference_zero_stage 0 \
  "$@"
