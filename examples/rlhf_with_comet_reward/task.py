"""A small translation task: an invented SOV language with adjectives after the noun -> English.

    "ka miro zali u mako nok" -> "the red cat sees an apple"   (here: "the red cat sees a apple")

Source: DET NOUN [ADJ] DET NOUN [ADJ] VERB; English: DET [ADJ] NOUN VERB DET [ADJ] NOUN. The
SFT translations come from a careless translator who leaves out every adjective in 60% of
the sentences, so a model fine-tuned on them drops adjectives. The RLHF file's `output` is the
faithful reference, and the COMET model is trained on quality judgements that penalise
omissions, so PPO against COMET (or against chrF to the reference) can undo the habit.

Files written (all seeded, held-out sources never appear in training):
    sft/train.txt sft/test.txt   instruction/input/output, noisy outputs
    rlhf/train.txt               instruction/input/output, faithful references
    heldout.txt                  200 unseen sources with faithful references
    comet_train.csv              src, mt, ref, score rows for the COMET model (train sources only)

    python -m examples.rlhf_with_comet_reward.task --output_dir examples/rlhf_with_comet_reward/data
"""
from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

NOUNS = {"miro": "cat", "tavu": "dog", "kesa": "bird", "lopi": "fish", "duna": "horse", "pelo": "child",
         "rinta": "farmer", "sovi": "teacher", "mako": "apple", "nalu": "river", "tepa": "house", "virka": "tree"}
ADJECTIVES = {"zali": "red", "homa": "big", "pitu": "small", "kora": "old", "lesi": "happy", "vanu": "green"}
VERBS = {"nok": "sees", "ruma": "likes", "seta": "follows", "gali": "finds", "beko": "watches", "tiva": "helps"}
DETERMINERS = {"ka": "the", "u": "a"}
INSTRUCTION = "User: Translate to English: {input}\nAssistant: "
ADJ_RATE = 0.7        # each noun phrase has an adjective this often
CARELESS_RATE = 0.6   # SFT outputs without their adjectives this often
SIZES = {"sft_train": 3000, "sft_test": 200, "rlhf": 1000, "heldout": 200, "comet": 3000}


def sample_sentence(rng: random.Random) -> list[tuple[str, str, str | None]]:
    """Two noun phrases (det, noun, adj|None) and a verb, as source words."""
    def np_():
        return (rng.choice(list(DETERMINERS)), rng.choice(list(NOUNS)),
                rng.choice(list(ADJECTIVES)) if rng.random() < ADJ_RATE else None)
    return [np_(), np_(), rng.choice(list(VERBS))]


def source_text(s) -> str:
    (d1, n1, a1), (d2, n2, a2), v = s
    return " ".join(w for w in (d1, n1, a1, d2, n2, a2, v) if w)


def translate(s, keep_adjectives: bool = True) -> str:
    (d1, n1, a1), (d2, n2, a2), v = s

    def np_(d, n, a):
        words = [DETERMINERS[d]] + ([ADJECTIVES[a]] if a and keep_adjectives else []) + [NOUNS[n]]
        return " ".join(words)
    return f"{np_(d1, n1, a1)} {VERBS[v]} {np_(d2, n2, a2)}"


def word_f1(mt: str, ref: str) -> float:
    """Quality judgement: 2 * LCS(words) / (|mt| + |ref|), order-aware, 1 for a perfect translation."""
    a, b = mt.split(), ref.split()
    if not a or not b:
        return 0.0
    lcs = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a)):
        for j in range(len(b)):
            lcs[i + 1][j + 1] = lcs[i][j] + 1 if a[i] == b[j] else max(lcs[i][j + 1], lcs[i + 1][j])
    return 2 * lcs[-1][-1] / (len(a) + len(b))


def perturb(s, rng: random.Random) -> str:
    """A plausible wrong translation: dropped adjectives, a wrong word, swapped roles, an untranslated
    word, a cut-off, a repeated word, or (a quarter of the time) the correct one."""
    ref = translate(s)
    kind = rng.choice(["exact", "exact", "no_adj", "one_adj", "wrong_word", "swap", "untranslated", "cut",
                       "repeat"])
    words = ref.split()
    english = list(NOUNS.values()) + list(ADJECTIVES.values()) + list(VERBS.values())
    if kind == "no_adj":
        return translate(s, keep_adjectives=False)
    if kind == "one_adj":
        adjs = [i for i, w in enumerate(words) if w in ADJECTIVES.values()]
        if adjs:
            del words[rng.choice(adjs)]
    elif kind == "wrong_word":
        i = rng.randrange(len(words))
        words[i] = rng.choice(english)
    elif kind == "swap":
        (np1, np2, v) = s
        return translate([np2, np1, v])
    elif kind == "untranslated":
        src = source_text(s).split()
        words[rng.randrange(len(words))] = rng.choice(src)
    elif kind == "cut":
        words = words[:rng.randrange(1, len(words))]
    elif kind == "repeat":
        i = rng.randrange(len(words))
        words.insert(i, words[i])
    return " ".join(words)


def record(s, output: str) -> dict:
    src = source_text(s)
    return {"instruction": INSTRUCTION, "input": src, "output": output}


def generate(seed: int = 0) -> dict[str, list]:
    rng = random.Random(seed)
    heldout, seen, out = [], set(), {}
    while len(heldout) < SIZES["heldout"]:
        s = sample_sentence(rng)
        if source_text(s) not in seen:
            seen.add(source_text(s))
            heldout.append(s)

    def fresh(n):
        rows = []
        while len(rows) < n:
            s = sample_sentence(rng)
            if source_text(s) not in seen:
                rows.append(s)
        return rows

    def careless(s):
        return translate(s, keep_adjectives=rng.random() >= CARELESS_RATE)

    out["sft/train.txt"] = [record(s, careless(s)) for s in fresh(SIZES["sft_train"])]
    out["sft/test.txt"] = [record(s, careless(s)) for s in fresh(SIZES["sft_test"])]
    out["rlhf/train.txt"] = [record(s, translate(s)) for s in fresh(SIZES["rlhf"])]
    out["heldout.txt"] = [record(s, translate(s)) for s in heldout]
    comet = []
    for s in fresh(SIZES["comet"]):
        mt, ref = perturb(s, rng), translate(s)
        comet.append({"src": source_text(s), "mt": mt, "ref": ref, "score": round(word_f1(mt, ref), 4)})
    out["comet_train.csv"] = comet
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output_dir", required=True)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    root = Path(a.output_dir)
    for name, rows in generate(a.seed).items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".csv"):
            with open(path, "w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=["src", "mt", "ref", "score"])
                w.writeheader()
                w.writerows(rows)
        else:
            path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        print(f"{path}: {len(rows)} rows")


if __name__ == "__main__":
    main()
