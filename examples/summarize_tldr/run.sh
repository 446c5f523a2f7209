#!/usr/bin/env bash
# trlx's summarise-from-feedback pipeline, offline, on CPU or GPU, on bundled stand-ins with the
# columns and splits of the public datasets (examples/summarize_tldr/task.py): build a tiny Llama,
# SFT on openai_summarize_tldr (prompt, label), a reward model on openai_summarize_comparisons
# (prompt, chosen, rejected) from the SFT model, then PPO on the tldr prompts against it; print
# held-out ROUGE (rouge-score) of greedy summaries against the reference summaries, before and after.
#   bash examples/summarize_tldr/run.sh            # output in output/summarize_tldr_example
# With the real data: the same commands with --data_path CarperAI/openai_summarize_tldr and
# --data_path CarperAI/openai_summarize_comparisons, a real model, and longer sequences.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/common.sh"
OUT="${SUMMARIZE_EXAMPLE_DIR:-output/summarize_tldr_example}"
DATA=examples/summarize_tldr/data/CarperAI
start=$SECONDS

python -m examples.summarize_tldr.build_models --output_dir "$OUT"

declare -A took
run() { local name="$1"; shift; local t=$SECONDS; "$@"; took[$name]=$(( SECONDS - t )); }

run sft bash scripts/sft.sh --model_name_or_path "$OUT/tiny-llama" --data_path "$DATA/openai_summarize_tldr" \
  --output_dir "$OUT/sft" --overwrite_output_dir --max_seq_len 104 --num_train_epochs 2
run rm bash scripts/reward.sh --model_name_or_path "$OUT/sft" --data_path "$DATA/openai_summarize_comparisons" \
  --output_dir "$OUT/reward" --overwrite_output_dir --max_seq_len 104 --num_train_epochs 2
run ppo bash scripts/rlhf.sh --actor_model_name_or_path "$OUT/sft" --critic_model_name_or_path "$OUT/reward" \
  --data_path "$DATA/openai_summarize_tldr" --output_dir "$OUT/ppo" --overwrite_output_dir --max_prompt_seq_len 80 --max_answer_seq_len 24 \
  --kl_ctl 0.1 --num_train_epochs 1 --max_steps 60

row() {  # row NAME MODEL TIME
  python -m examples.row examples.summarize_tldr.evaluate "$@" rouge1:8.3f rouge2:8.3f rougeL:8.3f objection:10.3f \
    words:6.1f --name_width 9 --time_width 6
}
echo
rm_accuracy="$(python -c "
import json, sys
evals = [r for r in map(json.loads, open(sys.argv[1])) if 'eval/accuracy' in r]
print(f\"{evals[0]['eval/accuracy']:.3f} -> {evals[-1]['eval/accuracy']:.3f}\")" "$OUT/reward/metrics.jsonl")"
echo "== reward model: held-out pairwise accuracy $rm_accuracy (${took[rm]}s) =="
echo "== held-out summaries (200 unseen posts, greedy) against the reference summaries =="
printf '%-9s %8s %8s %8s %10s %6s %6s\n' model ROUGE-1 ROUGE-2 ROUGE-L objection words time
row sft "$OUT/sft" "${took[sft]}s"
row sft+ppo "$OUT/ppo/actor" "${took[ppo]}s"
echo "pictures: $OUT/{sft,reward,ppo}/training_curves.png; total: $(( SECONDS - start ))s"
