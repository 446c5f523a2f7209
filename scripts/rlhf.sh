#!/usr/bin/env bash
# Step 3: RLHF with PPO. Defaults train the demo SFT model against the demo reward model on
# the demo prompts; any flag you pass overrides them, e.g.
#   bash scripts/rlhf.sh --actor_model_name_or_path out/sft --critic_model_name_or_path out/rm \
#       --data_path /data/rlhf --output_dir out/ppo --max_answer_seq_len 256
#   NUM_GPUS=8 bash scripts/rlhf.sh --actor_zero_stage 3 --critic_zero_stage 3 --enable_hybrid_engine ...
# Its defaults are paths and sizes only (learning rates and epochs sized for the demo model);
# every algorithm setting is the config default (--help), the demo adds --kl_ctl 0.3 (scripts/demo.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch training.step3_rlhf.main \
  --actor_model_name_or_path output/demo/sft \
  --critic_model_name_or_path output/demo/reward \
  --data_path examples/demo/data/rlhf \
  --output_dir output/rlhf \
  --max_prompt_seq_len 32 \
  --max_answer_seq_len 8 \
  --per_device_generation_batch_size 32 \
  --per_device_training_batch_size 16 \
  --actor_learning_rate 2e-4 \
  --critic_learning_rate 1e-3 \
  --num_train_epochs 2 \
  "$@"
