#!/usr/bin/env bash
# PPO towards positive sentiment with a classifier reward (open-chatgpt's and TRL's sentiment
# example), offline, on CPU or GPU: build a tiny Llama and a tiny sentiment classifier from the
# bundled imdb stand-in (examples/sentiment/task.py), fine-tune the Llama to continue review
# openings (half the reviews praise, half complain), then GRPO with the classifier's POSITIVE
# logit as the reward; print the held-out mean P(positive) before and after.
#   bash examples/sentiment/run.sh            # output in output/sentiment_example
# With the real data: --data_path imdb and a hub classifier such as lvwerra/distilbert-imdb
# (--reward_classifier lvwerra/distilbert-imdb --reward_classifier_label POSITIVE).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/common.sh"
OUT="${SENTIMENT_EXAMPLE_DIR:-output/sentiment_example}"
DATA=examples/sentiment/data/imdb
start=$SECONDS

python -m examples.sentiment.build_models --output_dir "$OUT"

t=$SECONDS
bash scripts/sft.sh --model_name_or_path "$OUT/tiny-llama" --data_path "$DATA" --output_dir "$OUT/sft" --overwrite_output_dir \
  --max_seq_len 48 --num_train_epochs 2 --disable_tqdm
sft_time=$(( SECONDS - t ))

t=$SECONDS
bash scripts/rlhf.sh --actor_model_name_or_path "$OUT/sft" --data_path "$DATA" --output_dir "$OUT/ppo" --overwrite_output_dir \
  --reward_classifier "$OUT/sentiment" --reward_classifier_label POSITIVE \
  --advantage_estimator grpo --num_samples_per_prompt 4 --per_device_generation_batch_size 16 \
  --max_prompt_seq_len 16 --max_answer_seq_len 20 --kl_ctl 0.05 --num_train_epochs 1 --max_steps 60 --disable_tqdm
ppo_time=$(( SECONDS - t ))

row() {  # row NAME MODEL TIME
  python -m examples.row examples.sentiment.evaluate "$@" positive_sampled:18.3f positive_greedy:16.3f \
    -- --classifier "$OUT/sentiment"
}
echo
echo "== held-out mean P(positive) of continuations (200 unseen review openings) =="
printf '%-12s %18s %16s %7s\n' model "sampled (4 each)" greedy time
row sft "$OUT/sft" "${sft_time}s"
row "sft+grpo" "$OUT/ppo/actor" "${ppo_time}s"
echo "total: $(( SECONDS - start ))s"
