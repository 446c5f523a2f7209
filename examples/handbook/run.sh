#!/usr/bin/env bash
# Alignment-handbook recipes (this folder) on the tiny demo model, offline, on CPU or GPU:
# continued pretraining -> SFT -> DPO, and ORPO from the continued-pretrained model; prints the
# held-out accuracy of each model on the demo task.
#   bash examples/handbook/run.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/common.sh"
HERE=examples/handbook
TINY=output/demo/tiny-llama

if [[ ! -f "$TINY/model.safetensors" ]]; then
  python -m examples.demo.build_model --output_dir "$TINY"
fi

acc() { python -m examples.demo.evaluate --model "$1" --json 2>/dev/null | tail -n 1; }
field() { python -c "import json,sys; print(f\"{json.loads(sys.argv[1])['$2']:.3f}\")" "$1"; }

declare -A result took
run() {  # run <name> <module>: the recipe $HERE/<name>.yaml, whose output_dir is output/handbook/<name>
  local t=$SECONDS
  launch "$2" "$HERE/$1.yaml" --disable_tqdm
  took[$1]=$(( SECONDS - t ))
  result[$1]="$(acc "output/handbook/$1")"
}

result[untrained]="$(acc "$TINY")"
run cpt training.step1_sft.main
run sft training.step1_sft.main
run dpo training.step2_dpo.main
run orpo training.step2_dpo.main

echo
echo "== handbook recipes: held-out accuracy on 'repeat after me' (200 unseen prompts, greedy) =="
printf '%-10s %8s %16s %14s %8s\n' model accuracy "animal-first" "colour-first" "time"
for name in untrained cpt sft dpo orpo; do
  r="${result[$name]}"
  printf '%-10s %8s %16s %14s %8s\n' "$name" "$(field "$r" accuracy)" "$(field "$r" subset_accuracy)" \
    "$(field "$r" other_accuracy)" "${took[$name]:--}${took[$name]:+s}"
done
