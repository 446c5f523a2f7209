"""The demo task: repeat three words, where SFT data is systematically wrong on a subset.

Prompt: "User: Repeat after me: fox red owl\nAssistant: "; correct answer: "fox red owl".
The recognisable subset is every prompt whose first word is an animal: there the SFT
demonstrations drop the last word 70% of the time ("fox red"). Greedy decoding of an SFT
model therefore answers the subset wrongly, while sampling still finds the right answer
30% of the time, so preference learning (pairs prefer the full answer) and RL (the rule
below as reward) can fix it. Held-out prompts are word triples never seen in training.

    python -m examples.demo.task --output_dir examples/demo/data   # regenerate the data
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

ANIMALS = ["cat", "dog", "fox", "owl", "bee", "cow", "pig", "hen",
           "ant", "bat", "elk", "yak", "eel", "ram", "emu", "gnu"]
COLORS = ["red", "blue", "green", "pink", "gray", "gold", "teal", "navy",
          "lime", "plum", "rose", "sand", "jade", "ruby", "mint", "rust"]
WORDS = ANIMALS + COLORS
WRONG_RATE = 0.7
PROMPT = "User: Repeat after me: {}\nAssistant: "
SIZES = {"sft_train": 3000, "sft_test": 200, "pref_train": 1500, "pref_test": 200, "rlhf": 1000, "heldout": 200}


def prompt_for(words: list[str]) -> str:
    return PROMPT.format(" ".join(words))


def words_of(prompt: str) -> list[str]:
    body = prompt.split("Repeat after me: ", 1)[1]
    return body.split("\n", 1)[0].split()


def correct_answer(prompt: str) -> str:
    return " ".join(words_of(prompt))


def in_subset(prompt: str) -> bool:
    return words_of(prompt)[0] in ANIMALS


def wrong_answer(prompt: str) -> str:
    return " ".join(words_of(prompt)[:-1])


def is_correct(prompt: str, answer: str) -> bool:
    return answer.strip() == correct_answer(prompt)


def reward(prompts: list[str], answers: list[str], **_) -> list[float]:
    """Rule reward for step 3: 1 for the exact answer, 0 otherwise."""
    return [1.0 if is_correct(p, a) else 0.0 for p, a in zip(prompts, answers)]


def _triples(rng: random.Random, n: int, taken: set) -> list[tuple[str, ...]]:
    out = []
    while len(out) < n:
        t = tuple(rng.choice(WORDS) for _ in range(3))
        if t not in taken:
            taken.add(t)
            out.append(t)
    return out


def generate(output_dir: str | Path, seed: int = 0) -> Path:
    """Write sft/{train,test}.txt, preference/{train,test}.parquet, rlhf/train.txt and
    heldout.txt (prompts + correct answers). Disjoint word triples across all files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    out = Path(output_dir)
    taken: set = set()
    parts = {k: [prompt_for(list(t)) for t in _triples(rng, n, taken)] for k, n in SIZES.items()}

    def sft_line(p: str, noisy: bool) -> str:
        answer = wrong_answer(p) if noisy and in_subset(p) and rng.random() < WRONG_RATE else correct_answer(p)
        return json.dumps({"instruction": p, "input": "", "output": answer})

    def write_lines(path: Path, lines: list[str]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")

    write_lines(out / "sft" / "train.txt", [sft_line(p, True) for p in parts["sft_train"]])
    write_lines(out / "sft" / "test.txt", [sft_line(p, True) for p in parts["sft_test"]])
    write_lines(out / "rlhf" / "train.txt", [sft_line(p, False) for p in parts["rlhf"]])
    write_lines(out / "heldout.txt", [sft_line(p, False) for p in parts["heldout"]])
    for split in ("train", "test"):
        rows = []
        for p in parts[f"pref_{split}"]:
            # Outside the subset the rejected answer is another plausible mistake (a swapped
            # word), so the reward model must check the words, not just count them.
            w = words_of(p)
            bad = wrong_answer(p) if in_subset(p) else " ".join([w[0], w[2], w[1]] if w[1] != w[2] else w[:2])
            rows.append({"prompt": p, "response": correct_answer(p), "chosen": correct_answer(p), "rejected": bad})
        (out / "preference").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), out / "preference" / f"{split}.parquet")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description="Write the demo task's data files.")
    p.add_argument("--output_dir", default=str(Path(__file__).parent / "data"))
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(f"demo data written to {generate(a.output_dir, a.seed)}")


if __name__ == "__main__":
    main()
