#!/usr/bin/env bash
# RRHF recipe: rank several scored answers per prompt (rows prompt, responses, scores) or
# preference pairs, plus SFT on the best answer; no reference model. Point the variables at
# your own model and data; every flag after them can be changed or extended.
#   SFT_MODEL=out/sft DATA=/data/ranked OUT=out/rrhf bash examples/rrhf/train.sh [--rrhf_weight 10 ...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
SFT_MODEL="${SFT_MODEL:-output/demo/sft}"
DATA="${DATA:-examples/demo/data/preference}"
OUT="${OUT:-output/rrhf}"
exec bash scripts/dpo.sh \
  --model_name_or_path "$SFT_MODEL" \
  --data_path "$DATA" \
  --output_dir "$OUT" \
  --loss_type rrhf \
  --rrhf_weight 1.0 \
  "$@"
