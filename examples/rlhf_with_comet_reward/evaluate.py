"""Held-out translation quality of a model folder: corpus chrF, exact match and adjective recall
(greedy answers to sources never seen in training).

    python -m examples.rlhf_with_comet_reward.evaluate --model output/comet_example/sft [--json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from examples.rlhf_with_comet_reward.task import ADJECTIVES

DEFAULT_DATA = Path(__file__).parent / "data" / "heldout.txt"


def evaluate(model_dir: str, data: str | Path = DEFAULT_DATA) -> dict:
    import torch
    from sacrebleu.metrics import CHRF
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from utils.generation import generate_answers

    rows = [json.loads(line) for line in Path(data).read_text().splitlines() if line.strip()]
    prompts = [r["instruction"].replace("{input}", r["input"]) for r in rows]
    refs = [r["output"] for r in rows]
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    answers = generate_answers(model, tok, prompts, max_new_tokens=24, batch_size=64)
    adj = set(ADJECTIVES.values())
    wanted = [w for r in refs for w in r.split() if w in adj]
    found = sum(min(a.split().count(w), r.split().count(w)) for a, r in zip(answers, refs) for w in set(r.split()) & adj)
    return {
        "chrf": CHRF().corpus_score(answers, [refs]).score,
        "exact": sum(a.strip() == r for a, r in zip(answers, refs)) / len(refs),
        "adjective_recall": found / max(len(wanted), 1),
        "n": len(refs),
        "example": {"source": rows[0]["input"], "answer": answers[0], "reference": refs[0]},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--json", action="store_true", help="print one JSON line")
    a = p.parse_args()
    r = evaluate(a.model, a.data)
    if a.json:
        print(json.dumps(r))
    else:
        print(f"{a.model}: chrF {r['chrf']:.1f}, exact {r['exact']:.3f}, adjective recall "
              f"{r['adjective_recall']:.3f} (n={r['n']})")


if __name__ == "__main__":
    main()
