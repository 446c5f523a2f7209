"""The summarisation example's bundled data and metric: the files are what task.py writes, they
read through the CarperAI named-dataset rules as trlx reads them, and ROUGE has hand-derived values."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from examples.summarize_tldr import task
from examples.summarize_tldr.evaluate import rouge
from utils.data import read_dataset

DATA = Path(task.__file__).parent / "data" / "CarperAI"
TLDR, PAIRS = DATA / "openai_summarize_tldr", DATA / "openai_summarize_comparisons"


def table(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def body(prompt: str) -> str:
    return prompt.removesuffix("\nTL;DR:").split("POST: ", 1)[1]


def test_bundled_data_is_what_the_generator_writes(tmp_path):
    fresh = task.generate(tmp_path)
    files = sorted(p.relative_to(DATA) for p in DATA.rglob("*.parquet"))
    assert files == sorted(p.relative_to(fresh) for p in fresh.rglob("*.parquet")) and len(files) == 5
    for f in files:
        assert table(DATA / f) == table(fresh / f), f


def test_careless_training_labels_complete_references_unseen_posts():
    train, valid, test = (table(TLDR / f"{s}.parquet") for s in ("train", "valid", "test"))
    assert len(train) == 3000 and len(valid) == len(test) == 200
    assert all(r["prompt"].endswith("\nTL;DR:") and r["label"].startswith(" my ") for r in train + valid + test)
    careless = sum(" but i " not in r["label"] for r in train) / len(train)
    assert careless == pytest.approx(task.CARELESS_RATE, abs=0.03)
    assert all(" but i " in r["label"] for r in valid + test)            # references state all three facts
    pairs = table(PAIRS / "train.parquet") + table(PAIRS / "test.parquet")
    assert all(" but i " in r["chosen"] and r["chosen"] != r["rejected"] for r in pairs)
    posts = [body(r["prompt"]) for r in train + pairs + valid + test]
    assert len(set(posts)) == len(posts)                                 # no held-out post is seen in training
    # each reference states the facts its post tells
    for r in test:
        said = r["label"].removeprefix(" my ").split(" but i ")
        relation, action = said[0].split(" wants to ")
        assert f"my {relation} and i" in r["prompt"] and f"wants to {action}." in r["prompt"]
        assert f"the problem is that i {said[1]}." in r["prompt"]


def test_folders_read_through_the_named_rules_as_trlx_joins_them():
    sft = read_dataset(str(TLDR))
    assert sft.test[0].source.endswith("valid.parquet")                 # the split trlx evaluates on
    first = table(TLDR / "train.parquet")[0]
    assert sft.train[0].data == {"instruction": first["prompt"], "output": first["label"]}
    pairs = read_dataset(str(PAIRS))
    row, raw = pairs.train[0].data, table(PAIRS / "train.parquet")[0]
    assert row == {"prompt": raw["prompt"] + "\n", "chosen": raw["chosen"], "rejected": raw["rejected"]}
    # the reward model scores the same text PPO produces from a tldr prompt and a summary
    summary = raw["chosen"].removeprefix("TL;DR:")
    assert row["prompt"] + row["chosen"] == raw["prompt"] + "\nTL;DR:" + summary


def test_rouge_by_hand():
    # prediction "the cat sat", reference "the cat sat on the mat":
    # unigrams 3 of 3 predicted, 3 of 6 reference -> F = 2 * 1 * 0.5 / 1.5 = 2/3;
    # bigrams "the cat", "cat sat": 2 of 2, 2 of 5 -> F = 2 * 0.4 / 1.4 = 4/7; LCS 3 -> as unigrams
    r = rouge(["the cat sat", "a b"], ["the cat sat on the mat", "a b"])
    assert r["rouge1"] == pytest.approx((2 / 3 + 1) / 2)
    assert r["rouge2"] == pytest.approx((4 / 7 + 1) / 2)
    assert r["rougeL"] == pytest.approx((2 / 3 + 1) / 2)
    # ROUGE-L is order-aware: of the reversed sentence only "the on the" is in order (3 of 6 words both
    # ways), while every unigram still matches
    r = rouge(["mat the on sat cat the"], ["the cat sat on the mat"])
    assert r["rougeL"] == pytest.approx(0.5) and r["rouge1"] == pytest.approx(1.0)
