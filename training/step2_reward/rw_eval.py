"""Score prompt/answer pairs with a trained reward model.

    python -m training.step2_reward.rw_eval --model output/reward \\
        --prompt "User: Repeat after me: fox red owl\\nAssistant: " --response "fox red owl" --response "fox red"
    python -m training.step2_reward.rw_eval --model output/reward --file pairs.jsonl   # {"prompt","response"} per line

Prompt and answer are encoded as in training, `tokenizer(prompt + answer)`; the score is the
head's value at the last token, exactly what training, step 3 and stock transformers give.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from utils.run import typed_escapes


@torch.no_grad()
def score(model, tokenizer, prompts: list[str], responses: list[str], batch_size: int = 32) -> list[float]:
    from utils.rewards import reward_model_scores

    return reward_model_scores(model, tokenizer, [p + r for p, r in zip(prompts, responses)], batch_size,
                               torch.device("cpu")).tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="reward model folder (or hub name)")
    ap.add_argument("--prompt", help="one prompt, scored with every --response")
    ap.add_argument("--response", action="append", default=[], help="an answer (repeat for several)")
    ap.add_argument("--file", help='JSON lines with "prompt" and "response"')
    a = ap.parse_args()
    if a.file:
        rows = [json.loads(line) for line in open(a.file, encoding="utf-8") if line.strip()]
        prompts, responses = [r["prompt"] for r in rows], [r["response"] for r in rows]
    elif a.prompt is not None and a.response:
        prompts, responses = [typed_escapes(a.prompt)] * len(a.response), [typed_escapes(r) for r in a.response]
    else:
        print("error: give --prompt with one or more --response, or --file", file=sys.stderr)
        raise SystemExit(2)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForSequenceClassification.from_pretrained(a.model).eval()
    for p, r, s in zip(prompts, responses, score(model, tok, prompts, responses)):
        print(json.dumps({"prompt": p, "response": r, "score": round(s, 6)}, ensure_ascii=False))


if __name__ == "__main__":
    main()
