"""Build the example's tiny Llama (tokenizer trained on the SFT text) and its tiny COMET model
(trained on the bundled quality judgements), offline.

    python -m examples.rlhf_with_comet_reward.build_models --output_dir output/comet_example
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from devtools.tiny import build_tiny
from devtools.tiny_comet import build_tiny_comet, read_scores_csv

DATA = Path(__file__).parent / "data"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output_dir", required=True)
    p.add_argument("--comet_epochs", type=int, default=8)
    p.add_argument("--kind", choices=["regression", "referenceless"], default="regression")
    a = p.parse_args()
    out = Path(a.output_dir)
    rows = [json.loads(line) for line in (DATA / "sft" / "train.txt").read_text().splitlines() if line]
    if not (out / "tiny-llama" / "model.safetensors").is_file():
        texts = [r["instruction"].replace("{input}", r["input"]) + r["output"] for r in rows]
        build_tiny(texts, out / "tiny-llama", vocab_size=600, hidden_size=128, layers=2, heads=4)
        print(f"[example] tiny Llama written to {out / 'tiny-llama'}")
    comet_dir = out / f"comet-{a.kind}"
    if not (comet_dir / "checkpoints" / "model.ckpt").is_file():
        judged = read_scores_csv(DATA / "comet_train.csv", need_ref=a.kind == "regression")
        texts = [r[c] for r in judged for c in ("src", "mt", "ref") if c in r]
        build_tiny_comet(comet_dir, texts, kind=a.kind, train_rows=judged, epochs=a.comet_epochs, lr=1e-3,
                         vocab_size=200, log_every=1)
        print(f"[example] COMET model written to {comet_dir}")


if __name__ == "__main__":
    main()
