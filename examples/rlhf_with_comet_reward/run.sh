#!/usr/bin/env bash
# Translation-style RLHF with a COMET reward, offline, on CPU or GPU: build a tiny Llama and a
# tiny COMET model (trained on the bundled quality judgements), fine-tune on careless
# translations, then PPO against COMET, against chrF (sacrebleu) and against both; print
# held-out chrF, exact match and adjective recall (greedy, 200 unseen sources).
#   bash examples/rlhf_with_comet_reward/run.sh            # output in output/comet_example
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/common.sh"
OUT="${COMET_EXAMPLE_DIR:-output/comet_example}"
DATA=examples/rlhf_with_comet_reward/data
start=$SECONDS

python -m examples.rlhf_with_comet_reward.build_models --output_dir "$OUT"

declare -A took
run() { local name="$1"; shift; local t=$SECONDS; "$@"; took[$name]=$(( SECONDS - t )); }

run sft bash scripts/sft.sh --model_name_or_path "$OUT/tiny-llama" --data_path "$DATA/sft" \
  --output_dir "$OUT/sft" --overwrite_output_dir --disable_tqdm

ppo() {
  local name="$1"; shift
  run "$name" bash scripts/rlhf.sh --actor_model_name_or_path "$OUT/sft" --critic_model_name_or_path "$OUT/sft" \
    --data_path "$DATA/rlhf" --output_dir "$OUT/$name" --overwrite_output_dir --max_prompt_seq_len 48 --max_answer_seq_len 16 \
    --kl_ctl 0.05 --reward_normalization batch --num_train_epochs 1 --disable_tqdm "$@"
}
ppo ppo_comet --use_comet_model --comet_model_path "$OUT/comet-regression" --comet_model_batch_size 32
ppo ppo_chrf --use_reward_model false --reward_functions examples.rlhf_with_comet_reward.chrf:reward
ppo ppo_comet_chrf --use_comet_model --comet_model_path "$OUT/comet-regression" --comet_model_batch_size 32 \
  --reward_functions examples.rlhf_with_comet_reward.chrf:reward --reward_function_weights 0.5 \
  --weights_comet_model 0.5

row() {  # row NAME MODEL TIME
  python -m examples.row examples.rlhf_with_comet_reward.evaluate "$@" chrf:8.1f exact:8.3f adjective_recall:12.3f \
    --name_width 22
}
echo
echo "== held-out translation quality (200 unseen sources, greedy) =="
printf '%-22s %8s %8s %12s %7s\n' model chrF exact "adj. recall" time
row "sft" "$OUT/sft" "${took[sft]}s"
row "sft+ppo (COMET)" "$OUT/ppo_comet/actor" "${took[ppo_comet]}s"
row "sft+ppo (chrF)" "$OUT/ppo_chrf/actor" "${took[ppo_chrf]}s"
row "sft+ppo (COMET+chrF)" "$OUT/ppo_comet_chrf/actor" "${took[ppo_comet_chrf]}s"
echo "total: $(( SECONDS - start ))s"
