#!/usr/bin/env bash
# Step 1: supervised fine-tuning. Defaults train the demo's tiny model on the demo task;
# any flag you pass overrides them, e.g.
#   bash scripts/sft.sh --model_name_or_path meta-llama/Llama-3.2-1B --data_path my/sft --output_dir out/sft
#   NUM_GPUS=8 bash scripts/sft.sh --zero_stage 3 --dtype bf16 ...
# Its defaults are paths and sizes only (learning rates and epochs sized for the demo model);
# every algorithm setting is the config default (--help).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch training.step1_sft.main \
  --model_name_or_path output/demo/tiny-llama \
  --data_path examples/demo/data/sft \
  --output_dir output/sft \
  --max_seq_len 64 \
  --per_device_train_batch_size 16 \
  --per_device_eval_batch_size 64 \
  --learning_rate 3e-3 \
  --num_warmup_steps 20 \
  --num_train_epochs 2 \
  --logging_steps 50 \
  "$@"
