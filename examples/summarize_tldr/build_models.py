"""Build the example's tiny Llama, its tokenizer trained on the bundled posts and summaries, offline.

    python -m examples.summarize_tldr.build_models --output_dir output/summarize_tldr_example
"""
from __future__ import annotations

import argparse
from pathlib import Path

from devtools.tiny import build_tiny

DATA = Path(__file__).parent / "data" / "CarperAI"


def corpus() -> list[str]:
    import pyarrow.parquet as pq

    tldr = pq.read_table(DATA / "openai_summarize_tldr" / "train.parquet").to_pylist()
    pairs = pq.read_table(DATA / "openai_summarize_comparisons" / "train.parquet").to_pylist()
    return [r["prompt"] + r["label"] for r in tldr] + [r["prompt"] + "\n" + r["chosen"] for r in pairs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output_dir", required=True)
    out = Path(p.parse_args().output_dir) / "tiny-llama"
    if not (out / "model.safetensors").is_file():
        build_tiny(corpus(), out, vocab_size=800, hidden_size=128, layers=2, heads=4)
        print(f"[example] tiny Llama written to {out}")


if __name__ == "__main__":
    main()
