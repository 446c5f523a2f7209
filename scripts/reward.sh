#!/usr/bin/env bash
# Step 2: reward model. Defaults train on the demo's preference pairs from the demo SFT model;
# any flag you pass overrides them, e.g.
#   bash scripts/reward.sh --model_name_or_path out/sft --data_path /data/pairs --output_dir out/rm
#   bash scripts/reward.sh ... --gpt_annotated_score            # MSE to chosen/rejected_gpt_score
# Its defaults are paths and sizes only (learning rates and epochs sized for the demo model);
# every algorithm setting is the config default (--help).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch training.step2_reward.main \
  --model_name_or_path output/demo/sft \
  --data_path examples/demo/data/preference \
  --output_dir output/reward \
  --max_seq_len 64 \
  --per_device_train_batch_size 16 \
  --per_device_eval_batch_size 64 \
  --learning_rate 1e-3 \
  --num_warmup_steps 10 \
  --num_train_epochs 2 \
  --logging_steps 20 \
  "$@"
