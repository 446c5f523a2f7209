"""Build the example's tiny Llama (tokenizer trained on the reviews) and its tiny sentiment
classifier (gpt2-style tokenizer, trained on the reviews' labels), offline.

    python -m examples.sentiment.build_models --output_dir output/sentiment_example
"""
from __future__ import annotations

import argparse
from pathlib import Path

from devtools.tiny import build_tiny
from devtools.tiny_classifier import build_tiny_classifier

DATA = Path(__file__).parent / "data" / "imdb"


def reviews(split: str) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(DATA / f"{split}.parquet").to_pylist()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output_dir", required=True)
    a = p.parse_args()
    out = Path(a.output_dir)
    rows = reviews("train")
    if not (out / "tiny-llama" / "model.safetensors").is_file():
        build_tiny([r["text"] for r in rows], out / "tiny-llama", vocab_size=400, hidden_size=64, layers=2, heads=4)
        print(f"[example] tiny Llama written to {out / 'tiny-llama'}")
    if not (out / "sentiment" / "model.safetensors").is_file():
        build_tiny_classifier([r["text"] for r in rows], out / "sentiment", labels=[r["label"] for r in rows],
                              epochs=3)
        print(f"[example] sentiment classifier written to {out / 'sentiment'}")


if __name__ == "__main__":
    main()
