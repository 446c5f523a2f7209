"""Readers, validation (one-line errors), splits, tokenization and the collator."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import write_jsonl
from utils.data import (IGNORE_INDEX, DataError, DataPart, Example, LengthStats, Phase, collate_lm, epoch_batches,
                        load_step_records, read_dataset, tokenize_records)
from utils.data.readers import Record
from utils.data.chat import chat_segments
from utils.data.encoding import encode_prompts
from utils.data.sft import sft_prompt
from utils.data.split import parse_split, split_indices

SFT = {"instruction": "User: Repeat after me: fox red owl\nAssistant: ", "input": "", "output": "fox red owl"}


# -- reading -------------------------------------------------------------------------------
def test_folder_with_train_and_test(tmp_path):
    write_jsonl(tmp_path / "d" / "train.txt", [SFT] * 3)
    write_jsonl(tmp_path / "d" / "test.txt", [SFT])
    raw = read_dataset(str(tmp_path / "d"))
    assert len(raw.train) == 3 and len(raw.test) == 1
    assert raw.train[1].where == f"{tmp_path / 'd' / 'train.txt'}:2"


def test_plain_text_file_is_text(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text("first line\n\nsecond line\n")
    raw = read_dataset(str(p))
    assert [r.data["text"] for r in raw.train] == ["first line", "second line"]
    assert all(r.plain_line for r in raw.train)


BAD_CASES = [
    ("invalid_json", b'{"instruction": "a", "output": "b"}\n{"instruction": "a", \n', ":2: invalid JSON"),
    ("missing_output", b'{"instruction": "a", "output": "b"}\n{"instruction": "a"}\n', ':2: field "output" is missing'),
    ("mistyped", b'{"instruction": "a", "output": 5}\n', ':1: field "output" must be a string, got int'),
    ("empty_output", b'{"instruction": "a", "output": "  "}\n', ':1: field "output" is empty'),
    ("not_object", b'{"instruction": "a", "output": "b"}\n[1, 2]\n', ":2: expected a JSON object, got list"),
    ("non_utf8", b'{"instruction": "a", "output": "b"}\n{"instruction": "\xff", "output": "b"}\n',
     ":2: not valid UTF-8 (byte 0xff at column 18)"),
    ("empty_file", b"\n\n", ": file is empty"),
    ("bad_history", b'{"instruction": "a", "output": "b", "history": [["q"]]}\n', ':1: field "history" must be'),
    ("unknown_format", b'{"question": "a", "answer": "b"}\n', ":1: cannot tell the format"),
    ("kto_rows", b'{"prompt": "a", "completion": "b", "label": true}\n', ":1: cannot tell the format"),
    ("prompt_only", b'{"prompt": "a"}\n', ":1: prompt-only rows have no answer to train on"),
    ("completion_not_messages", b'{"prompt": [{"role": "user", "content": "a"}], "completion": "b"}\n',
     ':1: field "completion" must be a non-empty list'),
    ("mixed_formats", b'{"instruction": "a", "output": "b"}\n{"text": "plain"}\n',
     ":2: record is text format but earlier records are sft"),
]


@pytest.mark.parametrize("name,content,expected", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_input_names_file_line_and_field(tmp_path, tokenizer, name, content, expected):
    p = tmp_path / f"{name}.jsonl"
    p.write_bytes(content)
    with pytest.raises(DataError) as e:
        data = load_step_records(DataPart((str(p),), None, seed=0), Phase.SFT)
        tokenize_records(data.train, tokenizer, 64)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(str(p)) and expected in msg, msg


def test_prompt_longer_than_limit_keeps_its_end(tmp_path, tokenizer):
    long_prompt = "User: " + "fox " * 40
    p = write_jsonl(tmp_path / "long.jsonl", [SFT, {**SFT, "instruction": long_prompt}])
    (short, long), stats = tokenize_records(read_dataset(str(p)).train, tokenizer, 32)
    prompt = tokenizer(long_prompt)["input_ids"]
    answer = tokenizer(SFT["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert len(prompt) > 32 and len(answer) == 6
    # 32 - 6 = 26 prompt tokens: BOS, then the prompt's last 25
    assert long.input_ids == [tokenizer.bos_token_id] + prompt[-25:] + answer
    assert long.labels == [IGNORE_INDEX] * 26 + answer
    assert len(short.input_ids) < 32
    assert stats == LengthStats(kept=2, truncated=1, truncated_prompts=1, truncated_answers=0, dropped=0)


def test_missing_path_and_missing_train_file(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        read_dataset(str(tmp_path / "nope.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="folder has no training file"):
        read_dataset(str(tmp_path / "empty"))


# -- splits and blending -------------------------------------------------------------------------
def test_split_is_disjoint_covering_and_seeded():
    f = parse_split("2,4,4")
    parts = [split_indices(100, f, s, seed=3) for s in range(3)]
    assert [len(p) for p in parts] == [20, 40, 40]
    assert sorted(sum(parts, [])) == list(range(100))
    assert parts[1] == split_indices(100, f, 1, seed=3)
    assert parts[1] != split_indices(100, f, 1, seed=4)


def test_blend_two_datasets_with_split(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{**SFT, "output": f"a{i}"} for i in range(10)])
    b = write_jsonl(tmp_path / "b.jsonl", [{**SFT, "output": f"b{i}"} for i in range(20)])
    data = load_step_records(DataPart((str(a), str(b)), "1,1,0", seed=0), Phase.SFT)
    outs = [r.data["output"] for r in data.train]
    assert len(outs) == 15 and sum(o.startswith("a") for o in outs) == 5
    other = load_step_records(DataPart((str(a), str(b)), "1,1,0", seed=0), Phase.REWARD)
    assert not set(outs) & {r.data["output"] for r in other.train}
    with pytest.raises(DataError, match="leaves no rows for step 3"):
        load_step_records(DataPart((str(a),), "1,1,0", seed=0), Phase.RLHF)


# -- tokenization ----------------------------------------------------------------------------
def test_sft_prompt_rule():
    r = Record("f", ":1", {"instruction": "User: translate {input}\nAssistant: ", "input": "hallo", "output": "x"})
    assert sft_prompt(r) == "User: translate hallo\nAssistant: "
    r = Record("f", ":1", {"instruction": "Translate: ", "input": "hallo", "output": "x",
                          "history": [["User: hi\nAssistant: ", "hello"]]})
    assert sft_prompt(r) == "User: hi\nAssistant: hello\nTranslate: hallo"


def test_sft_ids_are_prompt_ids_then_response_ids(tokenizer):
    rec = Record("f", ":1", dict(SFT))
    (ex,), _ = tokenize_records([rec], tokenizer, 64)
    prompt = tokenizer(SFT["instruction"])["input_ids"]  # what generation feeds the model
    answer = tokenizer(SFT["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert ex.input_ids == prompt + answer
    assert ex.labels == [IGNORE_INDEX] * len(prompt) + answer
    assert encode_prompts(tokenizer, [SFT["instruction"]]) == [prompt]


def test_response_truncated_to_max_len(tokenizer):
    rec = Record("f", ":1", {**SFT, "output": "fox " * 30})
    (ex,), stats = tokenize_records([rec], tokenizer, 40)
    prompt = tokenizer(SFT["instruction"])["input_ids"]
    answer = tokenizer("fox " * 30, add_special_tokens=False)["input_ids"]
    assert len(prompt) == 16 and len(answer) == 31  # the prompt is within 40 // 2, so it stays whole
    assert ex.input_ids == prompt + answer[:24] and ex.labels == [IGNORE_INDEX] * 16 + answer[:24]
    assert stats == LengthStats(kept=1, truncated=1, truncated_prompts=0, truncated_answers=1, dropped=0)


def test_chat_loss_only_on_assistant_turns(tokenizer):
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"}, {"role": "user", "content": "fox"},
            {"role": "assistant", "content": "owl"}]
    segs = chat_segments(tokenizer, msgs)
    assert segs == [("<s>System: be brief\nUser: hi\nAssistant: ", False), ("hello</s>\n", True),
                    ("User: fox\nAssistant: ", False), ("owl</s>\n", True)]
    (ex,), _ = tokenize_records([Record("f", ":1", {"messages": msgs})], tokenizer, 128)
    trained = [t for t, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE_INDEX]
    assert tokenizer.decode(trained) == "hello</s>\nowl</s>\n"
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    assert tokenizer.decode(ex.input_ids) == full


def test_trl_prompt_completion_rows(tokenizer):
    """TRL's prompt-completion rows: strings train exactly as instruction -> output; conversations as
    the whole chat with the loss on the completion's turns only (the prompt's own answer is context)."""
    (a,), _ = tokenize_records([Record("f", ":1", {"prompt": SFT["instruction"], "completion": SFT["output"]})],
                               tokenizer, 64)
    (b,), _ = tokenize_records([Record("f", ":1", dict(SFT))], tokenizer, 64)
    assert (a.input_ids, a.labels) == (b.input_ids, b.labels)
    head = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"}, {"role": "user", "content": "fox"}]
    tail = [{"role": "assistant", "content": "owl"}]
    (pc,), _ = tokenize_records([Record("f", ":1", {"prompt": head, "completion": tail})], tokenizer, 128)
    assert tokenizer.decode(pc.input_ids) == tokenizer.apply_chat_template(head + tail, tokenize=False)
    # the prompt is one piece, as generation would be fed it (TRL tokenizes prompt and completion apart)
    context = tokenizer("<s>System: be brief\nUser: hi\nAssistant: hello</s>\nUser: fox\nAssistant: ",
                        add_special_tokens=False)["input_ids"]
    answer = tokenizer("owl</s>\n", add_special_tokens=False)["input_ids"]
    assert pc.input_ids == context + answer and pc.labels == [IGNORE_INDEX] * len(context) + answer


def test_trl_prompt_rows_in_step3(tokenizer):
    """Step 3 reads TRL's prompt-only rows (other columns, e.g. a reward function's answer, unread) and
    prompt-completion rows (completion = the reference, its SFT example = step 1's of the row)."""
    from utils.data.rlhf import prompt_examples

    prompt = SFT["instruction"]
    (only,), _ = prompt_examples([Record("f", ":1", {"prompt": prompt, "ground_truth": "42"})], tokenizer, 32, 64,
                                 False)
    assert only.prompt_ids == encode_prompts(tokenizer, [prompt])[0] and only.reference == "" and only.sft is None
    assert only.columns == {"ground_truth": "42"}
    import datetime

    (sft_row,), _ = prompt_examples([Record("f", ":1", {**SFT, "id": 7, "when": datetime.date(2026, 1, 2)})],
                                    tokenizer, 32, 64, True)
    assert sft_row.columns == {"id": 7, "when": "2026-01-02"}   # the cache stores JSON: a date becomes its text
    (pc,), _ = prompt_examples([Record("f", ":1", {"prompt": prompt, "completion": SFT["output"]})], tokenizer, 32,
                               64, True)
    (sft,), _ = tokenize_records([Record("f", ":1", dict(SFT))], tokenizer, 64)
    assert pc.reference == SFT["output"] and (pc.sft.input_ids, pc.sft.labels) == (sft.input_ids, sft.labels)
    with pytest.raises(DataError, match=r'^f:1: field "completion" is missing$'):
        prompt_examples([Record("f", ":1", {"prompt": prompt})], tokenizer, 32, 64, True)
    chat = Record("f", ":2", {"prompt": [{"role": "user", "content": "hi"}]})
    with pytest.raises(DataError, match=r'^f:2: field "prompt" is a list but earlier rows have text prompts$'):
        prompt_examples([Record("f", ":1", {"prompt": prompt}), chat], tokenizer, 32, 64, False)


def test_trl_conversational_prompts_in_step3(tokenizer):
    """A conversational prompt is the chat template of its turns with the generation prompt, tokenized
    as the template wrote it; the turns stay with the example (the reward model renders them), the
    reference is the completion's answer and its SFT example is step 1's of the same row."""
    from utils.data.rlhf import prompt_examples

    head = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Repeat: fox red"}]
    tail = [{"role": "assistant", "content": "fox red"}]
    (only,), _ = prompt_examples([Record("f", ":1", {"prompt": head, "solution": "fox red"})], tokenizer, 32, 64,
                                 False)
    rendered = tokenizer.apply_chat_template(head, tokenize=False, add_generation_prompt=True)
    assert rendered == "<s>System: be brief\nUser: Repeat: fox red\nAssistant: "
    assert only.prompt_ids == tokenizer(rendered, add_special_tokens=False)["input_ids"] and only.prompt == rendered
    assert only.messages == head and only.source == "Repeat: fox red" and only.reference == "" and only.sft is None
    row = {"prompt": head, "completion": tail}
    (pc,), _ = prompt_examples([Record("f", ":1", row)], tokenizer, 32, 64, True)
    (sft,), _ = tokenize_records([Record("f", ":1", row)], tokenizer, 64)
    assert pc.reference == "fox red" and (pc.sft.input_ids, pc.sft.labels) == (sft.input_ids, sft.labels)
    with pytest.raises(DataError, match=r'^f:1: field "completion" is missing$'):
        prompt_examples([Record("f", ":1", {"prompt": head})], tokenizer, 32, 64, True)
    # a chat pair (UltraFeedback's rows) is the same prompt, its chosen answer the reference
    pair = {"chosen": head + tail, "rejected": head + [{"role": "assistant", "content": "owl"}], "chosen_score": 9.0}
    (cp,), _ = prompt_examples([Record("f", ":1", pair)], tokenizer, 32, 64, True)
    assert (cp.prompt_ids, cp.reference, cp.messages, cp.sft) == (pc.prompt_ids, "fox red", head, pc.sft)
    text_pair = Record("f", ":2", {"prompt": "p", "chosen": "a", "rejected": "b"})
    with pytest.raises(DataError, match=r'^f:2: field "chosen" must be a non-empty list$'):
        prompt_examples([Record("f", ":1", pair), text_pair], tokenizer, 32, 64, True)
    with pytest.raises(DataError, match=r"^f:1: row is a chat pair but earlier rows are pairs of text$"):
        prompt_examples([text_pair, Record("f", ":1", pair)], tokenizer, 32, 64, True)


def test_text_is_packed_into_blocks(tmp_path, tokenizer):
    p = write_jsonl(tmp_path / "t.jsonl", [{"text": "fox red owl " * 10}, {"text": "cat"}])
    examples, _ = tokenize_records(read_dataset(str(p)).train, tokenizer, 16)
    stream = sum((e.input_ids for e in examples), [])
    ids1 = tokenizer("fox red owl " * 10, add_special_tokens=False)["input_ids"]
    ids2 = tokenizer("cat", add_special_tokens=False)["input_ids"]
    assert stream == ids1 + [tokenizer.eos_token_id] + ids2 + [tokenizer.eos_token_id]
    assert all(len(e.input_ids) == 16 for e in examples[:-1])
    assert all(e.labels == e.input_ids for e in examples)


# -- collator and batch order ----------------------------------------------------------------------
def test_collator_exact_tensors():
    batch = collate_lm([Example([1, 5, 6, 2], [-100, -100, 6, 2]), Example([1, 7], [-100, 7])], pad_id=3)
    assert torch.equal(batch.input_ids, torch.tensor([[1, 5, 6, 2], [1, 7, 3, 3]]))
    assert torch.equal(batch.attention_mask, torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]))
    assert torch.equal(batch.labels, torch.tensor([[-100, -100, 6, 2], [-100, 7, -100, -100]]))
    padded = collate_lm([Example([1, 7], [-100, 7])], pad_id=3, pad_to_multiple_of=8)
    assert padded.input_ids.shape == (1, 8)


def test_epoch_batches_shard_the_same_global_batches():
    one = epoch_batches(10, 4, rank=0, world_size=1, seed=1, epoch=0)
    two = [epoch_batches(10, 2, rank=r, world_size=2, seed=1, epoch=0) for r in range(2)]
    for k in range(2):
        assert sorted(one[k]) == sorted(two[0][k] + two[1][k])
    assert epoch_batches(10, 4, rank=0, world_size=1, seed=1, epoch=1) != one


def test_reads_fork_parquet_fixture():
    from tests.conftest import FIXTURES

    folder = FIXTURES / "fork-parquet" / "dpo"
    if not folder.exists():
        pytest.skip("shared fixtures not present")
    raw = read_dataset(str(folder))
    assert len(raw.train) > 0 and {"prompt", "chosen", "rejected"} <= set(raw.train[0].data)


def test_parquet_rows_named_in_errors(tmp_path, tokenizer):
    pq.write_table(pa.Table.from_pylist([{"instruction": "a", "output": "b"}, {"instruction": "a", "output": None}]),
                   tmp_path / "train.parquet")
    with pytest.raises(DataError, match=r'train.parquet row 1: field "output" is missing'):
        tokenize_records(read_dataset(str(tmp_path)).train, tokenizer, 32)


def test_dataset_name_goes_through_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake_load(name):
        calls.append(name)
        return datasets.DatasetDict({"train": datasets.Dataset.from_list([SFT, SFT]),
                                     "validation": datasets.Dataset.from_list([SFT])})
    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    raw = read_dataset("someone/sft-data")
    assert calls == ["someone/sft-data"]
    assert len(raw.train) == 2 and len(raw.test) == 1
    assert raw.train[1].where == "someone/sft-data[train] row 1" and raw.train[0].data == SFT


def test_unreachable_dataset_name_is_one_line(monkeypatch):
    import datasets

    def fail(name):
        raise ConnectionError("Couldn't reach 'x/y' on the Hub\nmore detail")
    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(DataError, match=r"^x/y: cannot load dataset \(Couldn't reach 'x/y' on the Hub\)$"):
        read_dataset("x/y")
