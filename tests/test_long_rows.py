"""Long rows never stop a run: prompts are cut from the left (BOS kept), answers at the right,
rows that cannot fit are dropped and counted per file (rule in utils/data/encoding.py)."""
from __future__ import annotations

from functools import partial

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import FIXTURES, write_jsonl
from utils.data import (IGNORE_INDEX, DataError, DataPart, LengthStats, Phase, read_dataset, step_examples,
                        tokenize_records)
from utils.data.preference import tokenize_preferences
from utils.data.readers import Record
from utils.data.rlhf import prompt_examples, tokenize_prompts
from utils.data.encoding import fit_prompt, fit_row
from utils.data.sft import detect_format

PROMPT = "User: Repeat after me: fox red owl\nAssistant: "  # 16 ids with BOS
SHORT = "User: hi\nAssistant: "                          # 9 ids with BOS
ANSWER = "fox red owl"                                      # 6 ids with EOS
LONG_ANSWER = "fox " * 10                                  # 12 ids with EOS


def prompt_ids(tokenizer, text):
    return tokenizer(text)["input_ids"]


def answer_ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def write_parquet(folder, rows, split="train"):
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / f"{split}.parquet")
    return folder


def records(rows, source="f.jsonl"):
    return [Record(source, f":{i + 1}", r) for i, r in enumerate(rows)]


@pytest.fixture(autouse=True)
def check_lengths(tokenizer):
    """The cases below are sized for these lengths."""
    assert len(prompt_ids(tokenizer, PROMPT)) == 16 and prompt_ids(tokenizer, PROMPT)[0] == tokenizer.bos_token_id
    assert len(answer_ids(tokenizer, ANSWER)) == 6 and len(answer_ids(tokenizer, LONG_ANSWER)) == 12
    assert len(prompt_ids(tokenizer, SHORT)) == 9


# -- the rule on plain ids ----------------------------------------------------------------------
P10 = [1, 10, 11, 12, 13, 14, 15, 16, 17, 18]
FIT_CASES = [
    # name, prompt, answers, max_len, expected (prompt, answers) or None
    ("fits", P10, [[20, 21, 2]], 13, (P10, [[20, 21, 2]])),
    ("prompt_left", P10, [[20, 21, 22, 23, 24, 2]], 12, ([1, 14, 15, 16, 17, 18], [[20, 21, 22, 23, 24, 2]])),
    ("answer_right", [1, 10, 11], [list(range(20, 40))], 12, ([1, 10, 11], [list(range(20, 29))])),
    ("both_at_half", P10, [list(range(20, 30))], 12, ([1, 14, 15, 16, 17, 18], [list(range(20, 26))])),
    ("no_bos_in_prompt", P10[1:], [list(range(20, 30))], 12, ([13, 14, 15, 16, 17, 18], [list(range(20, 26))])),
    ("pair_room_for_longer", P10, [[20, 2], [30, 31, 32, 33, 34, 35, 36, 37, 2]], 18,
     ([1, 11, 12, 13, 14, 15, 16, 17, 18], [[20, 2], [30, 31, 32, 33, 34, 35, 36, 37, 2]])),
    ("pair_both_cut", P10, [[20, 21, 22, 23, 24, 25, 2], [30, 31, 32, 33, 34, 35, 36, 37, 2]], 10,
     ([1, 15, 16, 17, 18], [[20, 21, 22, 23, 24], [30, 31, 32, 33, 34]])),
    ("only_bos_left", P10, [[20, 21, 2]], 3, None),
]


@pytest.mark.parametrize("name,prompt,answers,max_len,expected", FIT_CASES, ids=[c[0] for c in FIT_CASES])
def test_fit_row(name, prompt, answers, max_len, expected):
    assert fit_row(prompt, answers, max_len, [1]) == expected


def test_fit_prompt_keeps_prefix_and_end():
    assert fit_prompt(P10, 4, [1]) == [1, 16, 17, 18]
    assert fit_prompt(P10, 10, [1]) == P10
    assert fit_prompt(P10, 1, [1]) is None
    assert fit_prompt(P10, 3, []) == [16, 17, 18]


# -- SFT and chat ----------------------------------------------------------------------------------
def test_sft_prompt_cut_from_the_left_keeps_bos(tokenizer):
    (ex,), stats = tokenize_records(records([{"instruction": PROMPT, "output": ANSWER}]), tokenizer, 16)
    p, a = prompt_ids(tokenizer, PROMPT), answer_ids(tokenizer, ANSWER)
    # room = min(16, max(16 - 6, 16 // 2)) = 10: BOS + the prompt's last 9 ids, whole answer
    assert ex.input_ids == [tokenizer.bos_token_id] + p[-9:] + a
    assert ex.labels == [IGNORE_INDEX] * 10 + a
    assert tokenizer.decode(ex.input_ids[1:10]) == " fox red owl\nAssistant: "
    assert stats == LengthStats(kept=1, truncated=1, truncated_prompts=1, truncated_answers=0, dropped=0)


def test_sft_answer_cut_at_the_right(tokenizer):
    (ex,), stats = tokenize_records(records([{"instruction": SHORT, "output": LONG_ANSWER}]), tokenizer, 18)
    p, a = prompt_ids(tokenizer, SHORT), answer_ids(tokenizer, LONG_ANSWER)
    # the 9-id prompt is within 18 // 2, so it stays whole and the answer keeps 9 ids (no EOS)
    assert ex.input_ids == p + a[:9] and ex.labels == [IGNORE_INDEX] * 9 + a[:9]
    assert stats == LengthStats(kept=1, truncated=1, truncated_prompts=0, truncated_answers=1, dropped=0)


def test_sft_prompt_and_answer_both_cut(tokenizer):
    (ex,), stats = tokenize_records(records([{"instruction": PROMPT, "output": LONG_ANSWER}]), tokenizer, 16)
    p, a = prompt_ids(tokenizer, PROMPT), answer_ids(tokenizer, LONG_ANSWER)
    # room = min(16, max(16 - 12, 8)) = 8: BOS + last 7 prompt ids, then the answer's first 8
    assert ex.input_ids == [tokenizer.bos_token_id] + p[-7:] + a[:8]
    assert ex.labels == [IGNORE_INDEX] * 8 + a[:8]
    assert stats == LengthStats(kept=1, truncated=1, truncated_prompts=1, truncated_answers=1, dropped=0)


def test_history_is_cut_before_the_instruction(tokenizer):
    rec = {"instruction": SHORT, "output": ANSWER, "history": [["User: " + "owl red " * 10 + "\nAssistant: ", "ok"]]}
    (ex,), _ = tokenize_records(records([rec]), tokenizer, 20)
    assert ex.input_ids[0] == tokenizer.bos_token_id and len(ex.input_ids) == 20
    assert ex.input_ids[-6:] == answer_ids(tokenizer, ANSWER)
    assert tokenizer.decode(ex.input_ids[1:14]).endswith("ok\nUser: hi\nAssistant: ")


def test_chat_context_cut_from_the_left_keeps_bos(tokenizer):
    msgs = [{"role": "system", "content": "owl red " * 10}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "fox red"}]
    (full,), _ = tokenize_records(records([{"messages": msgs}]), tokenizer, 512)
    first = next(i for i, lab in enumerate(full.labels) if lab != IGNORE_INDEX)
    answer = full.input_ids[first:]
    (ex,), stats = tokenize_records(records([{"messages": msgs}]), tokenizer, 20)
    room = 20 - len(answer)
    assert ex.input_ids == [tokenizer.bos_token_id] + full.input_ids[first - room + 1:first] + answer
    assert ex.labels == [IGNORE_INDEX] * room + answer
    assert tokenizer.decode(ex.input_ids[1:room]).endswith("red \nUser: hi\nAssistant: ")
    assert stats == LengthStats(kept=1, truncated=1, truncated_prompts=1, truncated_answers=0, dropped=0)


def test_file_with_no_row_that_fits_is_one_line_error(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "tiny.jsonl", [{"instruction": PROMPT, "output": ANSWER}] * 2)
    with pytest.raises(DataError) as e:
        tokenize_records(read_dataset(str(path)).train, tokenizer, 3)
    assert str(e.value) == f"{path}: no usable row: all 2 rows dropped, too long for --max_seq_len 3 even when truncated"


# -- preference pairs -----------------------------------------------------------------------------
def test_pair_answers_share_the_cut_prompt(tokenizer):
    rec = {"prompt": PROMPT, "chosen": ANSWER, "rejected": LONG_ANSWER, "chosen_score": 1.0, "rejected_score": 0.0}
    (ex,), stats = tokenize_preferences(records([rec]), tokenizer, 20)
    p, c, r = prompt_ids(tokenizer, PROMPT), answer_ids(tokenizer, ANSWER), answer_ids(tokenizer, LONG_ANSWER)
    # room for the longer answer: min(16, max(20 - 12, 10)) = 10; both answers keep up to 10
    assert ex.prompt_ids == [tokenizer.bos_token_id] + p[-9:]
    assert ex.chosen_ids == c and ex.rejected_ids == r[:10]
    assert (ex.chosen_score, ex.rejected_score) == (1.0, 0.0)
    assert stats == LengthStats(kept=1, truncated=1, truncated_prompts=1, truncated_answers=1, dropped=0)


def test_chat_pair_prompt_cut_keeps_bos(tokenizer):
    user = {"role": "user", "content": "owl red " * 10}
    rec = {"chosen": [user, {"role": "assistant", "content": "fox red"}],
           "rejected": [user, {"role": "assistant", "content": "fox"}]}
    (full,), _ = tokenize_preferences(records([rec]), tokenizer, 512)
    (ex,), stats = tokenize_preferences(records([rec]), tokenizer, 16)
    longer = max(len(full.chosen_ids), len(full.rejected_ids))
    assert ex.prompt_ids == [tokenizer.bos_token_id] + full.prompt_ids[len(full.prompt_ids) - (15 - longer):]
    assert (ex.chosen_ids, ex.rejected_ids) == (full.chosen_ids, full.rejected_ids)
    assert stats.truncated_prompts == 1 and stats.truncated_answers == 0


def test_pair_identical_once_cut_is_dropped(tokenizer):
    rows = [{"prompt": SHORT, "chosen": "fox " * 10 + "red", "rejected": "fox " * 10 + "owl"},
            {"prompt": SHORT, "chosen": ANSWER, "rejected": "fox"},
            {"prompt": SHORT, "chosen": ANSWER, "rejected": ANSWER}]  # identical uncut: the data's own choice
    ex, stats = tokenize_preferences(records(rows), tokenizer, 18)
    assert [e.chosen_ids for e in ex] == [answer_ids(tokenizer, ANSWER)] * 2
    assert stats == LengthStats(kept=2, truncated=0, truncated_prompts=0, truncated_answers=0, dropped=1)


def test_all_pairs_dropped_is_an_error(tmp_path, tokenizer):
    folder = write_parquet(tmp_path / "same", [{"prompt": SHORT, "chosen": "fox " * 10 + "red",
                                               "rejected": "fox " * 10 + "owl"}])
    with pytest.raises(DataError) as e:
        tokenize_preferences(read_dataset(str(folder)).train, tokenizer, 18)
    assert str(e.value) == (f"{folder / 'train.parquet'}: no usable row: all 1 rows dropped, too long for "
                            f"--max_seq_len 18 even when truncated")


def test_count_line_printed_once_per_file(tmp_path, tokenizer, capsys):
    rows = [{"prompt": SHORT, "chosen": ANSWER, "rejected": "fox"},                          # fits
            {"prompt": PROMPT, "chosen": ANSWER, "rejected": "fox"},                         # prompt cut
            {"prompt": SHORT, "chosen": LONG_ANSWER, "rejected": "fox"},                     # answer cut
            {"prompt": PROMPT, "chosen": LONG_ANSWER, "rejected": "fox"},                    # both cut
            {"prompt": SHORT, "chosen": "fox " * 10 + "red", "rejected": "fox " * 10 + "owl"}]  # dropped
    folder = write_parquet(tmp_path / "pairs", rows)
    write_parquet(folder, rows[:2], "test")
    part = DataPart((str(folder),), None, seed=0)
    train, test = step_examples(part, Phase.REWARD, partial(tokenize_preferences, tokenizer=tokenizer, max_len=18), "pairs")
    assert (len(train), len(test)) == (4, 2)
    assert capsys.readouterr().out.splitlines() == [
        "[data] 4 training and 2 held-out pairs",
        f"[data] {folder / 'train.parquet'}: 5 rows, 3 truncated (2 prompts, 2 answers), 1 dropped",
        f"[data] {folder / 'test.parquet'}: 2 rows, 1 truncated (1 prompts, 0 answers), 0 dropped",
    ]


# -- preference rows in step 1 ----------------------------------------------------------------------
def test_pairs_train_sft_on_prompt_and_chosen(tokenizer):
    row = {"prompt": PROMPT, "response": ANSWER, "chosen": ANSWER, "rejected": "fox", "chosen_gpt_score": 0.9,
           "rejected_gpt_score": 0.1}
    assert detect_format(Record("f", ":1", row)) == "preference"
    (ex,), stats = tokenize_records(records([row]), tokenizer, 64)
    p, c = prompt_ids(tokenizer, PROMPT), answer_ids(tokenizer, ANSWER)
    assert ex.input_ids == p + c and ex.labels == [IGNORE_INDEX] * 16 + c
    (cut,), _ = tokenize_records(records([{"prompt": PROMPT, "chosen": ANSWER, "rejected": "fox"}]), tokenizer, 16)
    assert cut.input_ids == [tokenizer.bos_token_id] + p[-9:] + c
    assert stats == LengthStats(kept=1)


def test_chat_pairs_train_sft_on_the_chosen_conversation(tokenizer):
    user = {"role": "user", "content": "Repeat after me: fox red"}
    chosen = [user, {"role": "assistant", "content": "fox red"}]
    row = {"chosen": chosen, "rejected": [user, {"role": "assistant", "content": "fox"}]}
    (ex,), _ = tokenize_records(records([row]), tokenizer, 64)
    (expected,), _ = tokenize_records(records([{"messages": chosen}]), tokenizer, 64)
    assert ex == expected
    assert tokenizer.decode([t for t, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE_INDEX]) == "fox red</s>\n"


def test_preference_rows_with_a_missing_column_name_it(tokenizer):
    with pytest.raises(DataError, match=r"^f.jsonl:1: missing column\(s\) rejected"):
        tokenize_records(records([{"prompt": PROMPT, "chosen": ANSWER}]), tokenizer, 64)


# -- step 3 -------------------------------------------------------------------------------------------
def test_step3_prompt_cut_to_max_prompt_len_keeps_bos(tokenizer, capsys):
    rows = [{"instruction": PROMPT, "output": ANSWER}, {"instruction": SHORT, "output": ANSWER}]
    (long, short), stats = prompt_examples(records(rows), tokenizer, 9, 20, True)
    p, a = prompt_ids(tokenizer, PROMPT), answer_ids(tokenizer, ANSWER)
    assert long.prompt_ids == [tokenizer.bos_token_id] + p[-8:]
    assert long.prompt == tokenizer.decode(long.prompt_ids, skip_special_tokens=True) == " red owl\nAssistant: "
    assert long.source == long.prompt and long.reference == ANSWER
    # the SFT example: the whole prompt under the step-1 rule, room = min(16, max(20 - 6, 10)) = 14
    assert long.sft.input_ids == [tokenizer.bos_token_id] + p[-13:] + a
    assert long.sft.labels == [IGNORE_INDEX] * 14 + a
    assert short.prompt_ids == prompt_ids(tokenizer, SHORT) and short.prompt == SHORT
    assert stats == LengthStats(kept=2, truncated=1, truncated_prompts=1, truncated_answers=0, dropped=0)
    assert tokenize_prompts(records(rows), tokenizer, 9, 20, True)[0] == long
    assert capsys.readouterr().out == "[data] f.jsonl: 2 rows, 1 truncated (1 prompts, 0 answers), 0 dropped\n"


def test_step3_sft_answer_cut_is_counted(tokenizer):
    (ex,), stats = prompt_examples(records([{"instruction": SHORT, "output": LONG_ANSWER}]), tokenizer, 32, 18, True)
    assert ex.prompt_ids == prompt_ids(tokenizer, SHORT)
    assert ex.sft.input_ids == prompt_ids(tokenizer, SHORT) + answer_ids(tokenizer, LONG_ANSWER)[:9]
    assert stats == LengthStats(kept=1, truncated=1, truncated_prompts=0, truncated_answers=1, dropped=0)


def test_step3_no_prompt_fits_is_an_error(tokenizer):
    with pytest.raises(DataError, match=r"^f.jsonl: no usable row: all 1 rows dropped, too long for "
                                        r"--max_prompt_seq_len 1 even when truncated$"):
        prompt_examples(records([{"instruction": PROMPT, "output": ANSWER}]), tokenizer, 1, 20, False)


def test_step3_pairs_give_prompt_and_chosen_as_reference(tokenizer):
    row = {"prompt": PROMPT, "response": ANSWER, "chosen": ANSWER, "rejected": "fox", "chosen_score": 1.0,
           "rejected_score": 0.0}
    (ex,), _ = prompt_examples(records([row]), tokenizer, 32, 64, True)
    p, c = prompt_ids(tokenizer, PROMPT), answer_ids(tokenizer, ANSWER)
    assert ex.prompt_ids == p and ex.prompt == PROMPT and ex.source == PROMPT and ex.reference == ANSWER
    assert ex.sft.input_ids == p + c and ex.sft.labels == [IGNORE_INDEX] * 16 + c


def test_step3_chat_pair_prompt_cut_keeps_bos_and_its_turns(tokenizer):
    """A chat pair's prompt (the turns before the chosen answer) follows the same cut as a text
    prompt; the turns stay whole for the reward model."""
    user = {"role": "user", "content": "Repeat after me: fox red owl fox red owl"}
    row = {"chosen": [user, {"role": "assistant", "content": "a"}], "rejected": [user, {"role": "assistant", "content": "b"}]}
    (ex,), stats = prompt_examples(records([row]), tokenizer, 9, 64, False)
    full = tokenizer(tokenizer.apply_chat_template([user], tokenize=False, add_generation_prompt=True),
                     add_special_tokens=False)["input_ids"]
    assert full[0] == tokenizer.bos_token_id and len(full) > 9
    assert ex.prompt_ids == [tokenizer.bos_token_id] + full[-8:] and ex.messages == [user] and ex.reference == "a"
    assert stats == LengthStats(kept=1, truncated=1, truncated_prompts=1, truncated_answers=0, dropped=0)


# -- the earlier fork's real files ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["dpo", "training_reward_with_scores"])
def test_fork_parquet_fits_max_seq_len_256(tokenizer, name):
    folder = FIXTURES / "fork-parquet" / name
    if not folder.exists():
        pytest.skip("shared fixtures not present")
    raw = read_dataset(str(folder))
    bos = tokenizer.bos_token_id
    for split in (raw.train, raw.test):
        full = [prompt_ids(tokenizer, r.data["prompt"]) for r in split]
        assert max(map(len, full)) > 256  # the files hold prompts longer than the limit
        pairs, stats = tokenize_preferences(split, tokenizer, 256, need_scores=name != "dpo")
        assert stats.kept == len(pairs) == len(split) and stats.dropped == 0 and stats.truncated_prompts > 0
        for e, f in zip(pairs, full):
            assert len(e.prompt_ids) + max(len(e.chosen_ids), len(e.rejected_ids)) <= 256
            assert e.prompt_ids == f or (e.prompt_ids[0] == bos and e.prompt_ids[1:] == f[len(f) - len(e.prompt_ids) + 1:])
        sft, stats1 = tokenize_records(split, tokenizer, 256)
        assert len(sft) == stats1.kept == len(split) and max(len(e.input_ids) for e in sft) <= 256
        prompts, stats3 = prompt_examples(split, tokenizer, 128, 256, True)
        assert len(prompts) == len(split) and max(len(p.prompt_ids) for p in prompts) == 128
        assert [p.reference for p in prompts] == [r.data["chosen"] for r in split]
        assert all(p.sft is not None and len(p.sft.input_ids) <= 256 for p in prompts)
