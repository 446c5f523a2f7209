"""Held-out accuracy of a model folder on the demo task (greedy answers, exact match).

    python -m examples.demo.evaluate --model output/demo/sft [--data examples/demo/data/heldout.txt]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from examples.demo.task import in_subset, is_correct

DEFAULT_DATA = Path(__file__).parent / "data" / "heldout.txt"


def accuracy(model_dir: str, data: str | Path = DEFAULT_DATA, limit: int | None = None) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from utils.generation import generate_answers

    torch.manual_seed(0)
    prompts = [json.loads(line)["instruction"] for line in Path(data).read_text().splitlines() if line.strip()]
    prompts = prompts[:limit] if limit else prompts
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    answers = generate_answers(model, tok, prompts, max_new_tokens=12, batch_size=64)
    right = [is_correct(p, a) for p, a in zip(prompts, answers)]
    sub = [r for p, r in zip(prompts, right) if in_subset(p)]
    rest = [r for p, r in zip(prompts, right) if not in_subset(p)]
    return {
        "accuracy": sum(right) / len(right),
        "subset_accuracy": sum(sub) / max(len(sub), 1),
        "other_accuracy": sum(rest) / max(len(rest), 1),
        "n": len(right),
        "example": {"prompt": prompts[0], "answer": answers[0]},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--json", action="store_true", help="print one JSON line")
    a = p.parse_args()
    r = accuracy(a.model, a.data)
    if a.json:
        print(json.dumps(r))
    else:
        print(f"{a.model}: held-out accuracy {r['accuracy']:.3f} "
              f"(first word an animal: {r['subset_accuracy']:.3f}, colour: {r['other_accuracy']:.3f}, n={r['n']})")


if __name__ == "__main__":
    main()
