"""--data_output_path: tokenized data cached, reused, and invalidated by what changes it."""
from __future__ import annotations

from functools import partial

from tests.conftest import DEMO_DATA, write_jsonl
from utils.data import DataPart, step_examples, tokenize_records
from utils.data.preference import tokenize_preferences
from utils.data.readers import read_dataset
from utils.data.rlhf import tokenize_prompts


def cfg(data, cache, split=None):
    return DataPart((str(data),), split, seed=3, cache_dir=str(cache))


def sft_examples(c, tokenizer, max_len=48, step=0):
    return step_examples(c, step, partial(tokenize_records, tokenizer=tokenizer, max_len=max_len, fmt="auto"))


def test_reused_then_invalidated_by_file_split_length_and_tokenizer(tmp_path, tokenizer, tiny_dir, capsys):
    from utils.models import load_tokenizer

    lines = (DEMO_DATA / "sft" / "train.txt").read_text().splitlines()
    data = write_jsonl(tmp_path / "d" / "train.txt", lines[:30])
    cache = tmp_path / "cache"
    first = sft_examples(cfg(data, cache), tokenizer)
    assert len(list(cache.glob("*.json"))) == 1 and "reused from" not in capsys.readouterr().out
    again = sft_examples(cfg(data, cache), tokenizer)
    assert again == first and f"tokenized rows reused from {cache}" in capsys.readouterr().out
    sft_examples(cfg(data, cache), tokenizer, max_len=40)                       # a length limit
    sft_examples(cfg(data, cache, split="2,4,4"), tokenizer)                   # this step's share
    sft_examples(cfg(data, cache), load_tokenizer(str(tiny_dir), eot_token="<|endoftext|>"))  # the tokenizer
    write_jsonl(data, lines[:29] + ['{"instruction": "User: hi\\nAssistant: ", "output": "hello"}'])  # the file
    sft_examples(cfg(data, cache), tokenizer)
    assert len(list(cache.glob("*.json"))) == 5   # the first run's entry and four new ones
    assert "reused from" not in capsys.readouterr().out


def test_preference_and_step3_prompts_round_trip(tmp_path, tokenizer):
    cache = tmp_path / "cache"
    pairs = DEMO_DATA / "preference"
    tok = partial(tokenize_preferences, tokenizer=tokenizer, max_len=32)
    c = cfg(pairs, cache, split="2,4,4")
    built = step_examples(c, 1, tok)
    # repr: the unset scores are NaN, which never equals itself
    assert repr(step_examples(c, 1, tok)) == repr(built) and len(list(cache.glob("*.json"))) == 2  # train, test
    records = read_dataset(str(DEMO_DATA / "rlhf")).train[:20]
    prompts = tokenize_prompts(records, tokenizer, 16, 32, True, str(cache))
    assert tokenize_prompts(records, tokenizer, 16, 32, True, str(cache)) == prompts
    assert prompts[0].sft is not None and len(list(cache.glob("*.json"))) == 3


def test_a_held_out_part_of_the_same_source_is_counted_apart(tokenizer):
    from utils.data import StepData, tokenize_per_source
    from utils.data.readers import Record

    row = {"instruction": "User: hi\nAssistant: ", "output": "hello"}
    data = StepData([Record("ds[train]", f" row {i}", row) for i in range(5)],
                    [Record("ds[train]", f" row {i}", row) for i in range(5, 7)])
    train, test, stats = tokenize_per_source(data, partial(tokenize_records, tokenizer=tokenizer, max_len=32))
    assert (len(train), len(test)) == (5, 2)
    assert {k: v.rows for k, v in stats.items()} == {"ds[train]": 5, "ds[train] (held-out part)": 2}


def test_batch_stream_shards_reshuffles_and_resumes():
    from utils.data import Example
    from utils.data.collate import BatchStream

    examples = [Example([i, i], [i, i]) for i in range(10)]

    def stream(rank):
        return BatchStream(examples, 2, 0, rank=rank, world_size=2, seed=5)

    def first_ids(batch):
        return batch.input_ids[:, 0].tolist()

    a, b = stream(0), stream(1)
    pass_a = [first_ids(next(a)) for _ in range(3)]          # 10 rows / 2 ranks / batch 2: 3 batches a pass
    pass_b = [first_ids(next(b)) for _ in range(3)]
    assert sorted(x for batch in pass_a + pass_b for x in batch) == list(range(10))   # disjoint, all rows
    second = [first_ids(next(a)) for _ in range(3)]
    second_b = [first_ids(next(b)) for _ in range(3)]
    assert second != pass_a and sorted(sum(second + second_b, [])) == list(range(10))  # a new permutation
    resumed = stream(0)
    resumed.load_state_dict({"epoch": 0, "index": 2})
    assert first_ids(next(resumed)) == pass_a[2] and first_ids(next(resumed)) == second[0]


def test_metric_reduction_covers_keys_a_rank_lacks(monkeypatch):
    from utils import distributed as dist
    from utils import trainer

    # rank 0 of two; rank 1 also saw scored rows: 2 of them with MSE summing to 3.0
    other = {"mse": (3.0, 2.0), "accuracy": (1.0, 2.0)}
    monkeypatch.setattr(dist, "all_gather_object", lambda keys: [keys, sorted(other)])
    reduced = []
    other_sum = [2.0, 1.0, 2.0, 3.0]        # accuracy n, accuracy s, mse n, mse s (sorted keys, n before s)
    monkeypatch.setattr(dist, "all_reduce_sum", lambda v: (reduced.append(v), v + other_sum.pop(0))[1])
    out = trainer._reduce({"accuracy": (1.0, 2.0)})
    assert out == {"accuracy": 0.5, "mse": 1.5} and reduced == [2.0, 1.0, 0.0, 0.0]
