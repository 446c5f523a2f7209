"""Build a tiny sequence classifier offline (a reward source for tests and the sentiment example).

Its tokenizer is trained on the given texts with a model family's habits (devtools/tiny_families.py;
default gpt2: byte-level BPE, no pad token), so it differs from the actor's and step 3 must decode
and re-encode. With labelled texts it is trained to tell them apart; without, its head is random.

    python -m devtools.tiny_classifier --texts reviews.jsonl --output_dir build/tiny-sentiment
    (reviews.jsonl: one {"text": ..., "label": 0|1} per line)
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from devtools.tiny_families import FAMILY_SPECS, build_family_tokenizer

LABELS = ("NEGATIVE", "POSITIVE")


def build_tiny_classifier(texts: list[str], output_dir: str | Path, *, labels: list[int] | None = None,
                          family: str = "gpt2", names: tuple[str, ...] = LABELS, hidden_size: int = 32,
                          layers: int = 2, heads: int = 4, epochs: int = 20, lr: float = 3e-3,
                          seed: int = 0) -> Path:
    """A `family` classifier with len(names) labels saved in `output_dir`; trained on `texts` and
    `labels` (label indices) when given. Returns the folder."""
    import torch
    import transformers

    out = Path(output_dir)
    tok = build_family_tokenizer(family, texts, out)
    fam = FAMILY_SPECS[family]
    config = getattr(transformers, fam.config)(
        vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
        **fam.sizes(hidden_size, layers, heads))
    torch.manual_seed(seed)
    model = transformers.AutoModelForSequenceClassification.from_config(config)
    if labels is not None:
        train(model, tok, texts, labels, epochs=epochs, lr=lr, seed=seed)
    model.save_pretrained(out, safe_serialization=True)
    return out


def train(model, tok, texts: list[str], labels: list[int], *, epochs: int, lr: float, seed: int,
          batch_size: int = 32) -> None:
    """Cross-entropy on (text, label) pairs; the model's own loss, batches right-padded."""
    import torch

    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(texts), generator=g).tolist()
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            ids = tok([texts[j] for j in idx])["input_ids"]
            width = max(len(x) for x in ids)
            x = torch.tensor([a + [pad] * (width - len(a)) for a in ids])
            mask = torch.tensor([[1] * len(a) + [0] * (width - len(a)) for a in ids])
            loss = model(input_ids=x, attention_mask=mask, labels=torch.tensor([labels[j] for j in idx])).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--texts", required=True, help="JSON lines with text and label (0 or 1)")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--family", default="gpt2")
    p.add_argument("--epochs", type=int, default=20)
    a = p.parse_args()
    rows = [json.loads(line) for line in Path(a.texts).read_text(encoding="utf-8").splitlines() if line.strip()]
    out = build_tiny_classifier([r["text"] for r in rows], a.output_dir, labels=[int(r["label"]) for r in rows],
                                family=a.family, epochs=a.epochs)
    print(f"[classifier] {out}")


if __name__ == "__main__":
    main()
