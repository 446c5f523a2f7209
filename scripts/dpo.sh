#!/usr/bin/env bash
# Step 2 (alternative): DPO and relatives. Defaults train the demo SFT model on the demo's
# preference pairs; any flag you pass overrides them, e.g.
#   bash scripts/dpo.sh --model_name_or_path out/sft --data_path /data/pairs --output_dir out/dpo --beta 0.1
#   bash scripts/dpo.sh ... --loss_type simpo --beta 2.0 --simpo_gamma 0.5
#   bash scripts/dpo.sh ... --loss_type kto      (unpaired prompt, completion, label rows, or pairs)
#   bash scripts/dpo.sh ... --loss_type rrhf     (prompt, responses, scores rows, or pairs)
# Its defaults are paths and sizes only (learning rates and epochs sized for the demo model);
# every algorithm setting is the config default (--help), the demo adds --rpo_alpha 0.3 (scripts/demo.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch training.step2_dpo.main \
  --model_name_or_path output/demo/sft \
  --data_path examples/demo/data/preference \
  --output_dir output/dpo \
  --max_seq_len 64 \
  --per_device_train_batch_size 16 \
  --per_device_eval_batch_size 64 \
  --learning_rate 5e-4 \
  --num_warmup_steps 10 \
  --num_train_epochs 2 \
  --logging_steps 20 \
  "$@"
