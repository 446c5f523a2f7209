"""Held-out sentiment of a model's continuations: the classifier's mean probability of POSITIVE
for prompt + continuation, over sampled continuations (4 per opening, seed 0) and greedy ones,
on the 200 held-out review openings (their first 8 words, as the imdb rule cuts them).

    python -m examples.sentiment.evaluate --model output/sentiment_example/sft \
        --classifier output/sentiment_example/sentiment
"""
from __future__ import annotations

import argparse
import json


def positive_probability(classifier_dir: str, texts: list[str]) -> list[float]:
    import torch

    from utils.rewards.classifier import load_classifier

    model, tok = load_classifier(classifier_dir, False, torch.device("cpu"))
    label = model.config.label2id["POSITIVE"]
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), 64):
            enc = tok(texts[i:i + 64], padding=True, truncation=True, return_tensors="pt")
            out += torch.softmax(model(**enc).logits.float(), -1)[:, label].tolist()
    return out


def evaluate(model_dir: str, classifier_dir: str, samples: int = 4) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from utils.data import read_dataset
    from utils.generation import generate_answers

    prompts = [r.data["instruction"] for r in read_dataset("examples/sentiment/data/imdb").test]
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(0)
    sampled = generate_answers(model, tok, prompts * samples, max_new_tokens=20, batch_size=64, do_sample=True)
    greedy = generate_answers(model, tok, prompts, max_new_tokens=20, batch_size=64)
    p_sampled = positive_probability(classifier_dir, [p + a for p, a in zip(prompts * samples, sampled)])
    p_greedy = positive_probability(classifier_dir, [p + a for p, a in zip(prompts, greedy)])
    return {"positive_sampled": sum(p_sampled) / len(p_sampled), "positive_greedy": sum(p_greedy) / len(p_greedy),
            "n": len(prompts), "example": prompts[0] + sampled[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--classifier", required=True)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    r = evaluate(a.model, a.classifier)
    print(json.dumps(r) if a.json else f"{a.model}: mean P(positive) {r['positive_sampled']:.3f} sampled, "
                                       f"{r['positive_greedy']:.3f} greedy (n={r['n']}); e.g. {r['example']!r}")


if __name__ == "__main__":
    main()
