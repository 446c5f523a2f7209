"""DeepSpeed-Chat's named datasets and Anthropic HH dialogues, read like the real ones.

Each named dataset is a small local copy with the public dataset's columns and types, laid out
as its repository is (data/<split>-00000-of-00001.parquet, or the files the dataset really
has), under tmp/<org>/<name>; with the working directory at tmp, `read_dataset("<org>/<name>")`
makes the same `datasets.load_dataset("<org>/<name>")` call as for the hub.
"""
from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import write_jsonl
from utils.data import DataError, SplitNames, read_dataset, tokenize_records
from utils.data.named import NAMED, match
from utils.data.preference import tokenize_preferences


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The working directory, where dataset names resolve; datasets caches under tmp."""
    import datasets

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / ".hf_cache"))
    return tmp_path


def write_hub(root, repo, splits: dict, schema: pa.Schema | None = None):
    folder = root / repo / "data"
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / f"{split}-00000-of-00001.parquet")
    return root / repo


def write_parquet_file(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def rows_of(records):
    return [r.data for r in records]


def by_loc(raw):
    """Every record of train and test by its original row, whichever side of a derived split."""
    return {r.loc: r.data for r in raw.train + raw.test}


def pair(p, c, r):
    return {"prompt": p, "chosen": c, "rejected": r}


def sft(p, a):
    return {"instruction": p, "output": a}


# -- pair datasets with train and test splits -----------------------------------------------------
RM_STATIC = [
    {"prompt": "\n\nHuman: Name a red fruit.\n\nAssistant:", "response": " A strawberry.",
     "chosen": " A strawberry.", "rejected": " Blue."},
    {"prompt": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Count to two.\n\nAssistant:", "response": " One, two.",
     "chosen": " One, two.", "rejected": " Three."},
]


@pytest.mark.parametrize("repo", ["Dahoas/rm-static", "Dahoas/full-hh-rlhf"])
def test_dahoas_pairs_as_they_are(hub, repo):
    write_hub(hub, repo, {"train": RM_STATIC, "test": RM_STATIC[:1]})
    raw = read_dataset(repo)
    assert rows_of(raw.train) == [pair(r["prompt"], r["chosen"], r["rejected"]) for r in RM_STATIC]
    assert rows_of(raw.test) == [pair("\n\nHuman: Name a red fruit.\n\nAssistant:", " A strawberry.", " Blue.")]
    assert raw.train[1].where == f"{repo}[train] row 1"


def test_absolute_path_containing_the_name(hub, tmp_path):
    write_hub(hub, "mirror/Dahoas/rm-static", {"train": RM_STATIC, "test": RM_STATIC[:1]})
    raw = read_dataset(str(tmp_path / "mirror" / "Dahoas" / "rm-static"))
    assert rows_of(raw.train)[0] == pair(*(RM_STATIC[0][k] for k in ("prompt", "chosen", "rejected")))
    # the earlier fork's layout (train.parquet, test.parquet at the top) is recognised too
    flat = tmp_path / "fork" / "Dahoas" / "rm-static"
    flat.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(RM_STATIC), flat / "train.parquet")
    assert rows_of(read_dataset(str(flat)).train) == rows_of(raw.train)


def test_yitingxie_prompt_gets_assistant_and_answers_lose_it(hub):
    rows = [{"prompt": "\n\nHuman: What is 2+2?\n\n", "chosen": "Assistant: 4", "rejected": "Assistant: 5"},
            {"prompt": "\n\nHuman: Hi\n\nAssistant: Hey\n\nHuman: Bye\n\n",
             "chosen": "Assistant: Goodbye!", "rejected": "Assistant: Assistant: no"}]
    write_hub(hub, "yitingxie/rlhf-reward-datasets", {"train": rows, "test": rows[:1]})
    raw = read_dataset("yitingxie/rlhf-reward-datasets")
    assert rows_of(raw.train) == [
        pair("\n\nHuman: What is 2+2?\n\nAssistant:", " 4", " 5"),
        pair("\n\nHuman: Hi\n\nAssistant: Hey\n\nHuman: Bye\n\nAssistant:", " Goodbye!", " no")]
    assert len(raw.test) == 1


def test_sharegpt_vicuna_is_sft_and_skips_empty_rows(hub, capsys):
    rows = [{"prompt": "USER: Say hi ASSISTANT:", "label": "hi"},
            {"prompt": "USER: Where is my USERNAME? ASSISTANT:", "label": "In settings."},
            {"prompt": "USER: nothing back ASSISTANT:", "label": ""},
            {"prompt": None, "label": "orphan"}]
    write_hub(hub, "pvduy/sharegpt_alpaca_oa_vicuna_format", {"train": rows, "test": rows[:1]})
    raw = read_dataset("pvduy/sharegpt_alpaca_oa_vicuna_format")
    # DeepSpeed-Chat renames every "USER"/"ASSISTANT", even inside words
    assert rows_of(raw.train) == [sft("Human: Say hi Assistant:", " hi"),
                                  sft("Human: Where is my HumanNAME? Assistant:", " In settings.")]
    assert [r.loc for r in raw.train] == [" row 0", " row 1"]
    out = capsys.readouterr().out
    assert "pvduy/sharegpt_alpaca_oa_vicuna_format[train]: skipped 2 of 4 rows" in out
    assert "[test]" not in out


MIRACL_PASSAGE = pa.list_(pa.struct([("docid", pa.string()), ("text", pa.string()), ("title", pa.string())]))
MIRACL_SCHEMA = pa.schema([("query_id", pa.string()), ("query", pa.string()),
                           ("positive_passages", MIRACL_PASSAGE), ("negative_passages", MIRACL_PASSAGE)])


@pytest.mark.parametrize("repo", ["Cohere/miracl-zh-queries-22-12", "Cohere/miracl-ja-queries-22-12"])
def test_miracl_first_passages_and_dev_split(hub, repo, capsys):
    def passage(i, text):
        return {"docid": f"{i}#0", "text": text, "title": "T"}
    rows = [{"query_id": "1", "query": "Q1", "positive_passages": [passage(1, "good"), passage(2, "also")],
             "negative_passages": [passage(3, "bad")]},
            {"query_id": "2", "query": "Q2", "positive_passages": [passage(4, "fine")], "negative_passages": []}]
    write_hub(hub, repo, {"train": rows, "dev": rows[:1], "testA": rows[:1]}, MIRACL_SCHEMA)
    raw = read_dataset(repo)
    assert rows_of(raw.train) == [pair(" Human: Q1 Assistant:", " good", " bad")]
    assert rows_of(raw.test) == rows_of(raw.train) and raw.test[0].source == f"{repo}[dev]"
    assert f"{repo}[train]: skipped 1 of 2 rows" in capsys.readouterr().out


def test_shp_label_picks_the_answer_and_validation_is_held_out(hub):
    """SHP's repository holds one folder per subreddit with train/validation/test JSON lines."""
    def row(i, labels):
        return {"post_id": f"p{i}", "domain": "askscience", "upvote_ratio": 0.99,
                "history": f"Why {i}?", "c_root_id_A": "a", "c_root_id_B": "b", "created_at_utc_A": 1,
                "created_at_utc_B": 2, "score_A": 10, "score_B": 3, "human_ref_A": f"A{i}",
                "human_ref_B": f"B{i}", "labels": labels, "seconds_difference": 1.0, "score_ratio": 3.3}
    for split, rows in {"train": [row(0, 1), row(1, 0)], "validation": [row(2, 1)], "test": [row(3, 0)]}.items():
        write_jsonl(hub / "stanfordnlp" / "SHP" / "askscience" / f"{split}.json", rows)
    raw = read_dataset("stanfordnlp/SHP")
    assert rows_of(raw.train) == [pair(" Human: Why 0? Assistant:", " A0", " B0"),
                                  pair(" Human: Why 1? Assistant:", " B1", " A1")]
    assert rows_of(raw.test) == [pair(" Human: Why 2? Assistant:", " A2", " B2")]


QG_JAQUAD = {"answer": "東京", "paragraph_question": "q: 首都は?, c: 日本の首都は東京である。", "question": "日本の首都は?",
             "sentence": "日本の首都は東京である。", "paragraph": "日本の首都は東京である。人口が多い。",
             "sentence_answer": "日本の首都は<hl>東京<hl>である。", "paragraph_answer": "日本の首都は<hl>東京<hl>である。人口が多い。",
             "paragraph_sentence": "<hl>日本の首都は東京である。<hl>人口が多い。"}


def test_lmqg_qg_jaquad_question_answered_by_sentence(hub):
    other = {**QG_JAQUAD, "question": "検証?"}
    write_hub(hub, "lmqg/qg_jaquad", {"train": [QG_JAQUAD], "validation": [other], "test": [QG_JAQUAD]})
    raw = read_dataset("lmqg/qg_jaquad")
    assert rows_of(raw.train) == [sft(" Human: 日本の首都は? Assistant:", " 日本の首都は東京である。")]
    assert rows_of(raw.test) == [sft(" Human: 検証? Assistant:", " 日本の首都は東京である。")]


def test_lmqg_qag_jaquad_first_question_answered_by_paragraph(hub, capsys):
    rows = [{"answers": ["東京", "多い"], "questions": ["首都は?", "人口は?"], "paragraph": "首都は東京。人口は多い。",
             "questions_answers": "question: 首都は?, answer: 東京 | question: 人口は?, answer: 多い"},
            {"answers": [], "questions": [], "paragraph": "空。", "questions_answers": ""}]
    schema = pa.schema([("answers", pa.list_(pa.string())), ("questions", pa.list_(pa.string())),
                        ("paragraph", pa.string()), ("questions_answers", pa.string())])
    write_hub(hub, "lmqg/qag_jaquad", {"train": rows, "validation": rows[:1], "test": rows[:1]}, schema)
    raw = read_dataset("lmqg/qag_jaquad")
    assert rows_of(raw.train) == [sft(" Human: 首都は? Assistant:", " 首都は東京。人口は多い。")]
    assert "lmqg/qag_jaquad[train]: skipped 1 of 2 rows" in capsys.readouterr().out


# -- datasets whose evaluation rows DeepSpeed-Chat takes from train --------------------------------
def test_synthetic_gptj_derives_a_seeded_tenth_for_evaluation(hub):
    rows = [{"prompt": f"Task {i}", "chosen": f"Good {i}", "rejected": f"Bad {i}"} for i in range(30)]
    write_hub(hub, "Dahoas/synthetic-instruct-gptj-pairwise", {"train": rows})
    raw = read_dataset("Dahoas/synthetic-instruct-gptj-pairwise")
    assert len(raw.train) == 27 and len(raw.test) == 3
    assert {r.loc for r in raw.train}.isdisjoint({r.loc for r in raw.test})
    assert by_loc(raw)[" row 7"] == pair(" Human: Task 7 Assistant:", " Good 7", " Bad 7")
    again = read_dataset("Dahoas/synthetic-instruct-gptj-pairwise")
    assert [r.loc for r in again.test] == [r.loc for r in raw.test]


WEBGPT_QUOTES = pa.struct([("title", pa.list_(pa.string())), ("extract", pa.list_(pa.string()))])
WEBGPT_SCHEMA = pa.schema([
    ("question", pa.struct([("dataset", pa.string()), ("id", pa.string()), ("full_text", pa.string())])),
    *((f"{c}_{i}", t) for i in (0, 1) for c, t in (("quotes", WEBGPT_QUOTES), ("answer", pa.string()),
                                                   ("tokens", pa.list_(pa.int64())), ("score", pa.float64()))),
])


def test_webgpt_higher_score_chosen_and_citations_removed(hub):
    def row(i, a0, s0, a1, s1):
        quotes = {"title": ["Wiki"], "extract": ["text"]}
        return {"question": {"dataset": "eli5", "id": f"q{i}", "full_text": f"Question {i}?"},
                "quotes_0": quotes, "answer_0": a0, "tokens_0": [1, 2], "score_0": s0,
                "quotes_1": quotes, "answer_1": a1, "tokens_1": [3], "score_1": s1}
    rows = [row(0, "Paris is the capital [1] of France (2).", 1.0, "Lyon.", -1.0),
            row(1, "Wrong [3].", -0.5, "Right[1][2].", 0.5),
            row(2, "Tie zero.", 0.0, "Tie one.", 0.0)]
    write_hub(hub, "openai/webgpt_comparisons", {"train": rows}, WEBGPT_SCHEMA)
    raw = read_dataset("openai/webgpt_comparisons")
    got = by_loc(raw)
    assert got[" row 0"] == pair(" Human: Question 0? Assistant:", " Paris is the capital of France.", " Lyon.")
    assert got[" row 1"] == pair(" Human: Question 1? Assistant:", " Right.", " Wrong.")
    assert got[" row 2"] == pair(" Human: Question 2? Assistant:", " Tie zero.", " Tie one.")


def test_zhihu_sft_with_derived_evaluation_and_skips(hub, capsys):
    rows = [{"INSTRUCTION": f"问题{i}", "RESPONSE": f"回答{i}", "SOURCE": "Zhihu",
             "METADATA": json.dumps({"upvotes": f"{i} 赞同"}, ensure_ascii=False)} for i in range(19)]
    rows.append({"INSTRUCTION": "没有回答", "RESPONSE": None, "SOURCE": "Zhihu", "METADATA": "{}"})
    write_hub(hub, "wangrui6/Zhihu-KOL", {"train": rows})
    raw = read_dataset("wangrui6/Zhihu-KOL")
    assert len(raw.train) + len(raw.test) == 19 and len(raw.test) == 2
    assert by_loc(raw)[" row 3"] == sft(" Human: 问题3 Assistant:", " 回答3")
    assert " row 19" not in by_loc(raw)
    assert "wangrui6/Zhihu-KOL[train]: skipped 1 of 20 rows" in capsys.readouterr().out


def test_hc3_chinese_first_human_answer(hub, capsys):
    rows = [{"id": "0", "question": "什么是猫?", "human_answers": ["一种动物。", "宠物。"], "chatgpt_answers": ["猫是..."]},
            {"id": "1", "question": "无人回答", "human_answers": [], "chatgpt_answers": ["..."]}]
    schema = pa.schema([("id", pa.string()), ("question", pa.string()), ("human_answers", pa.list_(pa.string())),
                        ("chatgpt_answers", pa.list_(pa.string()))])
    write_hub(hub, "Hello-SimpleAI/HC3-Chinese", {"train": rows}, schema)
    raw = read_dataset("Hello-SimpleAI/HC3-Chinese")
    assert list(by_loc(raw).values()) == [sft(" Human: 什么是猫? Assistant:", " 一种动物。")]
    assert "skipped 1 of 2 rows" in capsys.readouterr().out


MKQA_ANSWER = pa.list_(pa.struct([("type", pa.int64()), ("entity", pa.string()), ("text", pa.string()),
                                  ("aliases", pa.list_(pa.string()))]))
MKQA_LANGS = ("en", "ja", "zh_cn")
MKQA_SCHEMA = pa.schema([("example_id", pa.int64()), ("queries", pa.struct([(k, pa.string()) for k in MKQA_LANGS])),
                         ("query", pa.string()), ("answers", pa.struct([(k, MKQA_ANSWER) for k in MKQA_LANGS]))])


@pytest.mark.parametrize("name,lang,prompt,answer", [("mkqa-Chinese", "zh_cn", " Human: 谁写了哈姆雷特 Assistant:", " 莎士比亚"),
                                                     ("mkqa-Japanese", "ja", " Human: ハムレットの作者は Assistant:",
                                                      " シェイクスピア")])
def test_mkqa_loads_mkqa_and_reads_one_language(hub, name, lang, prompt, answer, capsys):
    def ans(text):
        return [{"type": 0, "entity": "Q692", "text": text, "aliases": []}]
    rows = [{"example_id": 1, "query": "who wrote hamlet",
             "queries": {"en": "who wrote hamlet", "ja": "ハムレットの作者は", "zh_cn": "谁写了哈姆雷特"},
             "answers": {"en": ans("Shakespeare"), "ja": ans("シェイクスピア"), "zh_cn": ans("莎士比亚")}},
            {"example_id": 2, "query": "unanswerable", "queries": {k: "?" for k in MKQA_LANGS},
             "answers": {k: [{"type": 5, "entity": None, "text": None, "aliases": []}] for k in MKQA_LANGS}}]
    write_hub(hub, "mkqa", {"train": rows}, MKQA_SCHEMA)  # DeepSpeed-Chat loads "mkqa" for both names
    raw = read_dataset(name)
    assert list(by_loc(raw).values()) == [sft(prompt, answer)]
    assert f"{name}[train]: skipped 1 of 2 rows" in capsys.readouterr().out
    local = hub / "downloads" / name
    write_hub(hub, f"downloads/{name}", {"train": rows}, MKQA_SCHEMA)
    assert list(by_loc(read_dataset(str(local))).values()) == [sft(prompt, answer)]


def test_local_jsonfile_reads_data_train_and_eval_json(hub, capsys):
    with pytest.raises(DataError, match=r"^local/jsonfile: .*data/train.json and .*data/eval.json not found"):
        read_dataset("local/jsonfile")
    write_jsonl(hub / "data" / "train.json", [pair("Q?", "yes", "no"), pair("Q2?", "ok", None)])
    (hub / "data" / "eval.json").write_text(json.dumps([pair("E?", "a", "b")]))
    raw = read_dataset("local/jsonfile")
    assert rows_of(raw.train) == [pair(" Q?", " yes", " no")]
    assert rows_of(raw.test) == [pair(" E?", " a", " b")]
    assert "data/train.json: skipped 1 of 2 rows" in capsys.readouterr().out


def test_every_deepspeed_chat_name_has_a_rule():
    names = ["Dahoas/rm-static", "Dahoas/full-hh-rlhf", "Dahoas/synthetic-instruct-gptj-pairwise",
             "yitingxie/rlhf-reward-datasets", "openai/webgpt_comparisons", "stanfordnlp/SHP",
             "pvduy/sharegpt_alpaca_oa_vicuna_format", "wangrui6/Zhihu-KOL", "Cohere/miracl-zh-queries-22-12",
             "Hello-SimpleAI/HC3-Chinese", "mkqa-Chinese", "mkqa-Japanese", "Cohere/miracl-ja-queries-22-12",
             "lmqg/qg_jaquad", "lmqg/qag_jaquad", "local/jsonfile"]
    assert list(NAMED)[:len(names)] == names
    assert all(match(f"/data/{n}/v2").name == n for n in names)
    assert all(NAMED[n].row.__doc__ for n in names)
    assert match("someone/rm-static") is None


# -- the datasets of trlx's and open-chatgpt's examples -----------------------------------------------
def test_summarize_tldr_is_sft_with_its_valid_split(hub):
    rows = [{"prompt": "SUBREDDIT: r/cats\nPOST: my cat sleeps all day\nTL;DR:", "label": " sleepy cat"},
            {"prompt": "POST: hi\nTL;DR:", "label": ""}]
    write_hub(hub, "CarperAI/openai_summarize_tldr", {"train": rows, "valid": rows[:1], "test": rows[1:]})
    raw = read_dataset("CarperAI/openai_summarize_tldr")
    assert rows_of(raw.train) == [sft(rows[0]["prompt"], " sleepy cat")]   # the empty summary is skipped
    assert rows_of(raw.test) == rows_of(raw.train) and raw.test[0].source.endswith("[valid]")
    # a local copy as split files holds out the same split, not the first held-out name (test)
    local = hub / "copy" / "CarperAI" / "openai_summarize_tldr"
    local.mkdir(parents=True)
    for split, part in {"train": rows, "valid": rows[:1], "test": [rows[0] | {"label": " other"}]}.items():
        pq.write_table(pa.Table.from_pylist(part), local / f"{split}.parquet")
    raw = read_dataset(str(local))
    assert rows_of(raw.test) == [sft(rows[0]["prompt"], " sleepy cat")] and raw.test[0].source.endswith("valid.parquet")


def test_summarize_comparisons_pairs_and_awesome_prompts_without_answers(hub):
    rows = [{"prompt": "POST: x", "chosen": "TL;DR: good", "rejected": "TL;DR: bad"}]
    write_hub(hub, "CarperAI/openai_summarize_comparisons", {"train": rows, "test": rows, "valid1": rows})
    assert rows_of(read_dataset("CarperAI/openai_summarize_comparisons").train) == [
        pair("POST: x\n", "TL;DR: good", "TL;DR: bad")]
    acts = [{"act": "Linux Terminal", "prompt": f"act as a terminal {i}"} for i in range(20)]
    write_hub(hub, "fka/awesome-chatgpt-prompts", {"train": acts})
    raw = read_dataset("fka/awesome-chatgpt-prompts")
    assert len(raw.train) == 18 and len(raw.test) == 2          # a seeded tenth held out
    assert by_loc(raw)[" row 3"] == {"instruction": " Human: act as a terminal 3 Assistant:"}


def test_imdb_review_openings_become_prompts(hub, tmp_path):
    words = [f"w{i}" for i in range(20)]
    rows = [{"text": " ".join(words[:4]) + "<br /><br />" + " ".join(words[4:]), "label": 1},
            {"text": "too short to continue", "label": 0}]
    write_hub(hub, "imdb", {"train": rows, "test": rows[:1], "unsupervised": rows})
    raw = read_dataset("imdb")
    want = sft(" ".join(words[:8]), " " + " ".join(words[8:]))
    assert rows_of(raw.train) == [want] and rows_of(raw.test) == [want]
    # only the name itself, or a path ending in it, reads as imdb: not any folder with "imdb" in its name
    assert match("/data/stanfordnlp/imdb").name == "stanfordnlp/imdb" and match("/data/my/imdb/").name == "imdb"
    assert match("/data/imdb_pairs") is None and match("imdbish/data") is None


# -- loading --------------------------------------------------------------------------------------
# -- TRL's and the alignment handbook's UltraFeedback ------------------------------------------------
def ultrafeedback_row(question, good, bad, score_chosen=8.0, score_rejected=3.5, h4=True):
    user = {"role": "user", "content": question}
    chosen, rejected = [user, {"role": "assistant", "content": good}], [user, {"role": "assistant", "content": bad}]
    row = {"chosen": chosen, "rejected": rejected, "score_chosen": score_chosen, "score_rejected": score_rejected}
    # H4's also has the first user turn, an id and `messages` (a copy of chosen for its sft splits)
    return {"prompt": question, "prompt_id": f"id-{question}", **row, "messages": chosen} if h4 else row


def chat_pair(row):
    return {"chosen": row["chosen"], "rejected": row["rejected"], "chosen_score": row["score_chosen"],
            "rejected_score": row["score_rejected"]}


def test_h4_ultrafeedback_reads_its_prefs_splits_with_scores(hub, tokenizer, capsys):
    """The handbook's DPO data: train_prefs is trained on and test_prefs held out (not the sft or gen
    splits); extra columns are not read; identical or empty answers are skipped and counted."""
    train = [ultrafeedback_row("Name a red fruit.", "A strawberry.", "Blue."),
             ultrafeedback_row("Count to two.", "One, two.", "Three.", 7, 7.5),
             ultrafeedback_row("Same?", "Yes.", "Yes."),
             ultrafeedback_row("Empty?", " ", "No.")]
    other = [ultrafeedback_row("Other split.", "a", "b")]
    write_hub(hub, "HuggingFaceH4/ultrafeedback_binarized",
              {"train_prefs": train, "test_prefs": train[:1], "train_sft": other, "test_sft": other,
               "train_gen": other, "test_gen": other})
    raw = read_dataset("HuggingFaceH4/ultrafeedback_binarized")
    assert rows_of(raw.train) == [chat_pair(r) for r in train[:2]] and rows_of(raw.test) == [chat_pair(train[0])]
    assert raw.train[1].where == "HuggingFaceH4/ultrafeedback_binarized[train_prefs] row 1"
    assert "2 of 4" in capsys.readouterr().out
    pairs, _ = tokenize_preferences(raw.train, tokenizer, 256, need_scores=True)
    assert [(e.chosen_score, e.rejected_score) for e in pairs] == [(8.0, 3.5), (7.0, 7.5)]
    assert tokenizer.decode(pairs[0].chosen_ids).startswith("A strawberry.")
    sft_rows, _ = tokenize_records(raw.train, tokenizer, 256)   # step 1: the chosen conversations
    assert len(sft_rows) == 2
    # a handbook recipe's dataset_splits name the splits anyway
    raw = read_dataset("HuggingFaceH4/ultrafeedback_binarized", splits=SplitNames(("train_prefs",), ("test_prefs",)))
    assert len(raw.train) == 2 and len(raw.test) == 1


def test_trl_ultrafeedback_and_a_local_copy_of_split_files(hub, tmp_path):
    rows = [ultrafeedback_row("Name a red fruit.", "A strawberry.", "Blue.", h4=False)]
    write_hub(hub, "trl-lib/ultrafeedback_binarized", {"train": rows, "test": rows})
    raw = read_dataset("trl-lib/ultrafeedback_binarized")
    assert rows_of(raw.train) == rows_of(raw.test) == [chat_pair(rows[0])]
    # split files of H4's names in a folder of that name: train_prefs / test_prefs, not train_sft
    folder = tmp_path / "copy" / "HuggingFaceH4" / "ultrafeedback_binarized"
    h4 = [ultrafeedback_row("Name a red fruit.", "A strawberry.", "Blue.")]
    write_parquet_file(folder / "train_prefs.parquet", h4)
    write_parquet_file(folder / "test_prefs.parquet", h4)
    write_parquet_file(folder / "train_sft.parquet", [ultrafeedback_row("x", "y", "z")])
    raw = read_dataset(str(folder))
    assert rows_of(raw.train) == rows_of(raw.test) == [chat_pair(h4[0])]


def test_h4_ultrachat_is_chat_sft_on_its_sft_splits(hub, tokenizer, capsys):
    talk = [{"role": "user", "content": "Name a red fruit."}, {"role": "assistant", "content": "A strawberry."}]
    row = {"prompt": "Name a red fruit.", "prompt_id": "a1", "messages": talk}
    write_hub(hub, "HuggingFaceH4/ultrachat_200k", {"train_sft": [row, {**row, "messages": []}], "test_sft": [row],
                                                    "train_gen": [{**row, "messages": talk[:1]}], "test_gen": [row]})
    raw = read_dataset("HuggingFaceH4/ultrachat_200k")
    assert rows_of(raw.train) == rows_of(raw.test) == [{"messages": talk}]
    assert raw.train[0].source == "HuggingFaceH4/ultrachat_200k[train_sft]" and "1 of 2" in capsys.readouterr().out
    (ex,), _ = tokenize_records(raw.train, tokenizer, 256)
    assert tokenizer.decode([t for t in ex.labels if t != -100]).startswith("A strawberry.")


def test_ultrafeedback_rule_errors(hub):
    write_hub(hub, "trl-lib/ultrafeedback_binarized", {"train": [{"chosen": "text", "rejected": "text",
                                                                   "score_chosen": 1.0, "score_rejected": 0.0}]})
    with pytest.raises(DataError) as e:
        read_dataset("trl-lib/ultrafeedback_binarized")
    assert str(e.value) == ('trl-lib/ultrafeedback_binarized[train] row 0: column "chosen" must be a non-empty '
                            'list of messages, got str (reading it as trl-lib/ultrafeedback_binarized)')


def test_unknown_name_falls_back_to_the_generic_reader(hub):
    rows = [{"prompt": "User: hi\nAssistant: ", "chosen": "hello", "rejected": "go"}]
    write_hub(hub, "someone/pairs", {"train": rows, "validation": rows})
    raw = read_dataset("someone/pairs")
    assert rows_of(raw.train) == rows and raw.test[0].source == "someone/pairs[validation]"


def test_hub_name_and_config_reach_load_dataset(hub, monkeypatch):
    import datasets

    write_hub(hub, "store/Dahoas/rm-static", {"train": RM_STATIC, "test": RM_STATIC})
    real, calls = datasets.load_dataset, []

    def load(name, *args):
        calls.append((name, *args))
        return real(str(hub / "store" / name))
    monkeypatch.setattr(datasets, "load_dataset", load)
    raw = read_dataset("Dahoas/rm-static", config_name="default")
    assert calls == [("Dahoas/rm-static", "default")]
    assert rows_of(raw.train)[1] == pair(*(RM_STATIC[1][k] for k in ("prompt", "chosen", "rejected")))
    read_dataset("Dahoas/rm-static")
    assert calls[-1] == ("Dahoas/rm-static",)


def test_save_to_disk_folder_is_loaded_from_disk(hub):
    import datasets

    folder = hub / "saved" / "Dahoas" / "rm-static"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(RM_STATIC),
                          "test": datasets.Dataset.from_list(RM_STATIC[:1])}).save_to_disk(str(folder))
    raw = read_dataset(str(folder))
    assert len(raw.train) == 2 and rows_of(raw.test) == [pair(RM_STATIC[0]["prompt"], " A strawberry.", " Blue.")]
    assert raw.test[0].where == f"{folder}[test] row 0"


def test_rule_errors_name_row_and_column(hub):
    write_hub(hub, "Dahoas/rm-static", {"train": [{"prompt": "p", "response": "a", "chosen": "a"}]})
    with pytest.raises(DataError) as e:
        read_dataset("Dahoas/rm-static")
    assert str(e.value) == ('Dahoas/rm-static[train] row 0: column "rejected" is missing '
                            '(reading it as Dahoas/rm-static)')


def test_records_feed_the_steps(hub, tokenizer):
    write_hub(hub, "Dahoas/rm-static", {"train": RM_STATIC})
    examples, _ = tokenize_preferences(read_dataset("Dahoas/rm-static").train, tokenizer, 256)
    assert len(examples) == 2 and all(e.is_pair for e in examples)
    write_hub(hub, "lmqg/qg_jaquad", {"train": [QG_JAQUAD]})
    examples, _ = tokenize_records(read_dataset("lmqg/qg_jaquad").train, tokenizer, 256)
    assert len(examples) == 1


# -- Anthropic HH ---------------------------------------------------------------------------------------
HH = [
    {"chosen": "\n\nHuman: Name a color.\n\nAssistant: Red.",
     "rejected": "\n\nHuman: Name a color.\n\nAssistant: Dog."},
    {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Add 1+1.\n\nAssistant: 2, since one plus one is two.",
     "rejected": "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Add 1+1.\n\nAssistant:  3"},
]
HH_PAIRS = [pair("\n\nHuman: Name a color.\n\nAssistant:", " Red.", " Dog."),
            pair("\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Add 1+1.\n\nAssistant:",
                 " 2, since one plus one is two.", "  3")]


def write_gz(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    return path


def test_hh_rows_split_at_the_last_assistant_turn(tmp_path):
    raw = read_dataset(str(write_jsonl(tmp_path / "hh.jsonl", HH)))
    assert rows_of(raw.train) == HH_PAIRS
    assert rows_of(read_dataset(str(write_gz(tmp_path / "hh.jsonl.gz", HH))).train) == HH_PAIRS


def test_hh_folder_of_gzipped_splits(tmp_path):
    folder = tmp_path / "hh-rlhf" / "helpful-base"
    write_gz(folder / "train.jsonl.gz", HH)
    write_gz(folder / "test.jsonl.gz", HH[:1])
    raw = read_dataset(str(folder))
    assert rows_of(raw.train) == HH_PAIRS and rows_of(raw.test) == HH_PAIRS[:1]
    assert raw.train[1].where == f"{folder / 'train.jsonl.gz'}:2"


def test_hh_repository_layout_through_load_dataset(hub):
    for sub in ("helpful-base", "harmless-base"):
        write_gz(hub / "Anthropic" / "hh-rlhf" / sub / "train.jsonl.gz", HH)
        write_gz(hub / "Anthropic" / "hh-rlhf" / sub / "test.jsonl.gz", HH[:1])
    raw = read_dataset("Anthropic/hh-rlhf")
    assert rows_of(raw.train) == HH_PAIRS * 2 and rows_of(raw.test) == HH_PAIRS[:1] * 2


def test_hh_mismatched_or_empty_pairs_are_dropped_and_counted(tmp_path, capsys):
    rows = HH + [{"chosen": "\n\nHuman: A?\n\nAssistant: yes", "rejected": "\n\nHuman: B?\n\nAssistant: no"},
                 {"chosen": "\n\nHuman: C?\n\nAssistant: yes", "rejected": "\n\nHuman: C?\n\nAssistant:"}]
    p = write_jsonl(tmp_path / "hh.jsonl", rows)
    raw = read_dataset(str(p))
    assert rows_of(raw.train) == HH_PAIRS and [r.loc for r in raw.train] == [":1", ":2"]
    assert f"[data] {p}: skipped 2 of 4 rows" in capsys.readouterr().out


def test_hh_dialogue_without_assistant_is_an_error(tmp_path):
    no_turn = {"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: hi\n\nAssistant: x"}
    p = write_gz(tmp_path / "hh.jsonl.gz", HH + [no_turn])
    with pytest.raises(DataError) as e:
        read_dataset(str(p))
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f'{p}:3: field "chosen" has no "\\n\\nAssistant:" turn')


def test_hh_detection_is_exact(tmp_path):
    rows = [{"prompt": "\n\nHuman: x\n\nAssistant:", "chosen": " a", "rejected": " b"},
            {"chosen": "\n\nHuman: x\n\nAssistant: a", "rejected": "\n\nHuman: x\n\nAssistant: b", "note": "kept"}]
    raw = read_dataset(str(write_jsonl(tmp_path / "mixed.jsonl", rows)))
    assert rows_of(raw.train) == rows
    scored = {**HH[0], "chosen_score": 0.9, "rejected_score": 0.1}
    raw = read_dataset(str(write_jsonl(tmp_path / "scored.jsonl", [scored])))
    assert rows_of(raw.train) == [{"chosen_score": 0.9, "rejected_score": 0.1, **HH_PAIRS[0]}]


def test_bad_gzip_is_one_line(tmp_path):
    p = tmp_path / "train.jsonl.gz"
    p.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=rf"^{p}: not a valid gzip file \("):
        read_dataset(str(p))
