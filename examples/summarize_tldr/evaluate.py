"""Held-out summary quality of a model: ROUGE-1/2/L F1 (Google's rouge-score package, no
stemming) of greedy summaries against the reference summaries of the 200 test posts, and how
often a summary states the writer's objection exactly as the post does.

    python -m examples.summarize_tldr.evaluate --model output/summarize_tldr_example/sft
"""
from __future__ import annotations

import argparse
import json

TEST = "examples/summarize_tldr/data/CarperAI/openai_summarize_tldr"


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F1 over the pairs, in [0, 1]."""
    from rouge_score import rouge_scorer

    kinds = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=False)
    scores = [scorer.score(ref, pred) for pred, ref in zip(predictions, references)]
    return {k: sum(s[k].fmeasure for s in scores) / len(scores) for k in kinds}


def evaluate(model_dir: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from utils.data import SplitNames, read_dataset
    from utils.generation import generate_answers

    rows = [r.data for r in read_dataset(TEST, splits=SplitNames(test=("test",))).test]
    prompts, references = [r["instruction"] for r in rows], [r["output"].strip() for r in rows]
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    summaries = [s.strip() for s in generate_answers(model, tok, prompts, max_new_tokens=24, batch_size=50)]
    objection = [ref.split(" but i ", 1)[1] for ref in references]
    stated = [f"but i {o}" in s for s, o in zip(summaries, objection)]
    return {**rouge(summaries, references), "objection": sum(stated) / len(stated),
            "words": sum(len(s.split()) for s in summaries) / len(summaries), "n": len(rows),
            "example": summaries[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--json", action="store_true", help="print one JSON line")
    a = p.parse_args()
    r = evaluate(a.model)
    print(json.dumps(r) if a.json else
          f"{a.model}: ROUGE-1 {r['rouge1']:.3f}  ROUGE-2 {r['rouge2']:.3f}  ROUGE-L {r['rougeL']:.3f}  "
          f"objection stated {r['objection']:.3f}  {r['words']:.1f} words (n={r['n']}); e.g. {r['example']!r}")


if __name__ == "__main__":
    main()
