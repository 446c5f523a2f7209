"""A small invented stand-in for imdb: movie-review openings continued with praise or complaint.

Rows have imdb's columns, `text` and `label` (1 positive, 0 negative), so the folder
`data/imdb` loads through the named-dataset rule for imdb (the first 8 words are the prompt,
the rest the answer). Every review opens with 8 neutral words ("i watched the robot movie last
night and") and goes on with three adjectives of one polarity; half the reviews are positive,
so an SFT model continues an opening either way and a sentiment reward has something to move.

    python -m examples.sentiment.task --output_dir examples/sentiment/data   # regenerate the data
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

SUBJECTS = ["robot", "pirate", "war", "space", "horror", "heist", "music", "school", "ocean", "dragon",
            "spy", "family", "sports", "detective", "zombie", "western"]
OPENINGS = ["i watched the {} movie last night and", "my friends and i saw the {} film and",
            "yesterday we finally saw that {} picture and", "last week i rented the new {} movie and"]
POSITIVE = ["great", "wonderful", "moving", "funny", "brilliant", "charming", "beautiful", "clever"]
NEGATIVE = ["boring", "awful", "dull", "bad", "weak", "silly", "slow", "clumsy"]
BODY = "it was {} and the acting was {} and the story felt {}"
SIZES = {"train": 2000, "test": 200}


def review(rng: random.Random, positive: bool, subject: str | None = None) -> str:
    words = POSITIVE if positive else NEGATIVE
    opening = rng.choice(OPENINGS).format(subject or rng.choice(SUBJECTS))
    return opening + " " + BODY.format(*rng.sample(words, 3))


def rows(rng: random.Random, n: int) -> list[dict]:
    out = []
    for i in range(n):
        positive = i % 2 == 0
        out.append({"text": review(rng, positive), "label": int(positive)})
    rng.shuffle(out)
    return out


def generate(output_dir: str | Path, seed: int = 0) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    folder = Path(output_dir) / "imdb"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in SIZES.items():
        pq.write_table(pa.Table.from_pylist(rows(rng, n)), folder / f"{split}.parquet")
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output_dir", default=str(Path(__file__).parent / "data"))
    print(f"[data] {generate(p.parse_args().output_dir)}")


if __name__ == "__main__":
    main()
