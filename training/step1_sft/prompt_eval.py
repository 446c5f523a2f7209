"""Compare a baseline and a tuned model's answers side by side (greedy and sampled).

    python -m training.step1_sft.prompt_eval --model_name_or_path_baseline output/demo/tiny-llama \\
        --model_name_or_path_finetune output/demo/sft --prompts "User: Repeat after me: fox red owl\\nAssistant: "
    python -m training.step1_sft.prompt_eval ... --prompt_file prompts.txt  # one prompt per line, or SFT jsonl

Any two causal-LM folders (or hub names) work, e.g. SFT vs DPO or SFT vs PPO actor.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from utils.run import typed_escapes


def read_prompts(args) -> list[str]:
    prompts = [typed_escapes(p) for p in (args.prompts or [])]
    if args.prompt_file:
        for line in Path(args.prompt_file).read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            if line.lstrip().startswith("{"):
                from utils.data.readers import Record
                from utils.data.sft import sft_prompt

                prompts.append(sft_prompt(Record(args.prompt_file, "", json.loads(line))))
            else:
                prompts.append(typed_escapes(line))
    return prompts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model_name_or_path_baseline", required=True)
    ap.add_argument("--model_name_or_path_finetune", required=True)
    ap.add_argument("--prompts", nargs="*", help=r"prompts (\n escapes allowed)")
    ap.add_argument("--prompt_file")
    ap.add_argument("--max_new_tokens", type=int, default=64)
    ap.add_argument("--num_samples", type=int, default=2, help="sampled answers per prompt")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top_p", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trust_remote_code", action="store_true")
    a = ap.parse_args()
    prompts = read_prompts(a)
    if not prompts:
        ap.error("give --prompts or --prompt_file")

    from transformers import AutoModelForCausalLM

    from utils.generation import generate_answers
    from utils.models import load_tokenizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    answers = {}
    for name, path in (("baseline", a.model_name_or_path_baseline), ("finetune", a.model_name_or_path_finetune)):
        tok = load_tokenizer(path, trust_remote_code=a.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=a.trust_remote_code).to(device)
        torch.manual_seed(a.seed)
        greedy = generate_answers(model, tok, prompts, max_new_tokens=a.max_new_tokens)
        sampled = [generate_answers(model, tok, prompts, max_new_tokens=a.max_new_tokens, do_sample=True,
                                    temperature=a.temperature, top_p=a.top_p) for _ in range(a.num_samples)]
        answers[name] = (greedy, sampled)
        del model
    for i, p in enumerate(prompts):
        print("=" * 80)
        print(f"prompt: {p!r}")
        for name in ("baseline", "finetune"):
            greedy, sampled = answers[name]
            print(f"  {name:8s} greedy : {greedy[i]!r}")
            for k, s in enumerate(sampled):
                print(f"  {name:8s} sample{k}: {s[i]!r}")


if __name__ == "__main__":
    main()
