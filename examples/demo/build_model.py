"""Build the demo's tiny Llama and tokenizer (trained on the bundled SFT text), offline.

    python -m examples.demo.build_model --output_dir output/demo/tiny-llama
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from devtools.tiny import build_tiny

DATA = Path(__file__).parent / "data"


def corpus() -> list[str]:
    rows = [json.loads(line) for line in (DATA / "sft" / "train.txt").read_text().splitlines() if line]
    return [r["instruction"] + r["output"] for r in rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output_dir", required=True)
    p.add_argument("--hidden_size", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    a = p.parse_args()
    build_tiny(corpus(), a.output_dir, vocab_size=400, hidden_size=a.hidden_size, layers=a.layers, heads=4)
    print(f"[demo] tiny model written to {a.output_dir}")


if __name__ == "__main__":
    main()
