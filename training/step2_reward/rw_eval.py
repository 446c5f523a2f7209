"""Score prompt/answer pairs with a trained reward model.

    python -m training.step2_reward.rw_eval --model output/reward \\
        --prompt "User: Repeat after me: fox red owl\\nAssistant: " --response "fox red owl" --response "fox red"
    python -m training.step2_reward.rw_eval --model output/reward --file pairs.jsonl   # {"prompt","response"} per line

Prompt and answer are tokenized as in training (separately, answer + EOS); the score is
the head's value at the last token, exactly what step 3 uses as reward.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from utils.run import typed_escapes


@torch.no_grad()
def score(model, tokenizer, prompts: list[str], responses: list[str], batch_size: int = 32) -> list[float]:
    from utils.data.collate import pad_right
    from utils.data.sft import encode_prompts, encode_responses
    from utils.models import end_scores, token_values

    out = []
    for i in range(0, len(prompts), batch_size):
        p = encode_prompts(tokenizer, prompts[i:i + batch_size])
        r = encode_responses(tokenizer, responses[i:i + batch_size])
        ids = [a + b for a, b in zip(p, r)]
        mask = pad_right([[1] * len(x) for x in ids], 0)
        values = token_values(model, pad_right(ids, tokenizer.pad_token_id), mask)
        out += end_scores(values, mask).tolist()
    return out


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
