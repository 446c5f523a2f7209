"""A small invented stand-in for trlx's summarisation data: advice posts and their TL;DR.

Every post tells three facts among filler sentences: who (my girlfriend, my roommate, ...),
what they want (to adopt a dog, to buy a house, ...) and the writer's objection (i can not
afford it, ...). The reference summary states all three:

    " my roommate wants to adopt a dog but i am not ready yet"

The training summaries come from careless annotators who leave out the objection in 60% of
them (" my roommate wants to adopt a dog"), so a model fine-tuned on them usually stops early.
The comparisons prefer the complete, correct summary to a careless one or to one with a wrong
fact, so a reward model learns what the annotators' summaries lack, and PPO against it can
bring the objection back: ROUGE against the held-out references measures that.

Files (same columns and splits as the public datasets, so the paths load through the
named-dataset rules; all seeded, the held-out posts never appear in training):
    data/CarperAI/openai_summarize_tldr/{train,valid,test}.parquet    prompt, label
        (prompt ends in "TL;DR:"; train labels are careless, valid and test labels are references)
    data/CarperAI/openai_summarize_comparisons/{train,test}.parquet   prompt, chosen, rejected
        (prompt without "TL;DR:", summaries start with "TL;DR:", as the public data)

    python -m examples.summarize_tldr.task --output_dir examples/summarize_tldr/data   # regenerate
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

RELATIONS = {"girlfriend": "she", "boyfriend": "he", "wife": "she", "husband": "he", "roommate": "he",
             "best friend": "she", "sister": "she", "brother": "he"}
ACTIONS = ["move to another city", "adopt a dog", "buy a house", "quit the job", "get married soon",
           "start a band", "sell the car", "go back to school", "travel for a year", "open a bakery"]
OBJECTIONS = ["do not want to leave", "can not afford it", "think it is a bad idea", "am not ready yet",
              "have to stay here for work", "want to wait a year", "am scared of it", "need more time"]
FILLERS = ["we met in college.", "everything else is going well.", "we live in a small apartment.",
           "sorry for the long post.", "i work from home most days.", "we both have good jobs.",
           "my friends say i should talk more.", "it has been on my mind all week.", "we talk about it every day.",
           "my parents have an opinion too."]
TITLES = ["need advice", "not sure what to do", "am i wrong here?", "help with a decision", "what would you do?"]
SUBREDDITS = ["relationships", "relationship_advice"]
CARELESS_RATE = 0.6
SIZES = {"train": 3000, "valid": 200, "test": 200, "comparisons_train": 3000, "comparisons_test": 200}


def sample_facts(rng: random.Random) -> dict:
    return {"relation": rng.choice(list(RELATIONS)), "action": rng.choice(ACTIONS),
            "objection": rng.choice(OBJECTIONS), "years": rng.randint(1, 9)}


def post(facts: dict, rng: random.Random) -> str:
    """Title and body; the three facts in order, up to two filler sentences between them."""
    pronoun = RELATIONS[facts["relation"]]
    core = [f"my {facts['relation']} and i have known each other for {facts['years']} years.",
            f"now {pronoun} wants to {facts['action']}.", f"the problem is that i {facts['objection']}."]
    fillers = rng.sample(FILLERS, rng.randint(0, 2))
    body = []
    for sentence in core:
        body.append(sentence)
        if fillers and rng.random() < 0.5:
            body.append(fillers.pop())
    body += fillers + ["what should i do?"]
    return (f"SUBREDDIT: r/{rng.choice(SUBREDDITS)}\nTITLE: {rng.choice(TITLES)}\n"
            f"POST: {' '.join(body)}")


def reference(facts: dict) -> str:
    return f"my {facts['relation']} wants to {facts['action']} but i {facts['objection']}"


def careless(facts: dict) -> str:
    return f"my {facts['relation']} wants to {facts['action']}"


def worse(facts: dict, rng: random.Random) -> str:
    """A rejected summary: the careless one, or a complete one with one fact wrong."""
    kind = rng.choice(["careless", "careless", "objection", "action", "relation"])
    if kind == "careless":
        return careless(facts)
    key, pool = {"objection": ("objection", OBJECTIONS), "action": ("action", ACTIONS),
                 "relation": ("relation", list(RELATIONS))}[kind]
    return reference({**facts, key: rng.choice([x for x in pool if x != facts[key]])})


def tldr_rows(rng: random.Random, n: int, careless_rate: float) -> list[dict]:
    out = []
    for _ in range(n):
        facts = sample_facts(rng)
        label = careless(facts) if rng.random() < careless_rate else reference(facts)
        out.append({"prompt": post(facts, rng) + "\nTL;DR:", "label": " " + label})
    return out


def comparison_rows(rng: random.Random, n: int) -> list[dict]:
    out = []
    for _ in range(n):
        facts = sample_facts(rng)
        out.append({"prompt": post(facts, rng), "chosen": "TL;DR: " + reference(facts),
                    "rejected": "TL;DR: " + worse(facts, rng)})
    return out


def generate(output_dir: str | Path, seed: int = 0) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    root = Path(output_dir) / "CarperAI"
    seen: set[str] = set()

    def unseen(make, n: int, *args) -> list[dict]:
        """Rows whose post no earlier split has: held-out posts are new posts."""
        rows = []
        while len(rows) < n:
            row = make(rng, 1, *args)[0]
            body = row["prompt"].removesuffix("\nTL;DR:").split("POST: ", 1)[1]
            if body not in seen:
                seen.add(body)
                rows.append(row)
        return rows

    parts = {
        "openai_summarize_tldr/train": unseen(tldr_rows, SIZES["train"], CARELESS_RATE),
        "openai_summarize_comparisons/train": unseen(comparison_rows, SIZES["comparisons_train"]),
        "openai_summarize_tldr/valid": unseen(tldr_rows, SIZES["valid"], 0.0),
        "openai_summarize_tldr/test": unseen(tldr_rows, SIZES["test"], 0.0),
        "openai_summarize_comparisons/test": unseen(comparison_rows, SIZES["comparisons_test"]),
    }
    for name, rows in parts.items():
        path = root / f"{name}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), path)
    return root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output_dir", default=str(Path(__file__).parent / "data"))
    print(f"[data] {generate(p.parse_args().output_dir)}")


if __name__ == "__main__":
    main()
