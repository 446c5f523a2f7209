"""DeepSpeed-Chat's named datasets (and those of trlx's, open-chatgpt's, TRL's and the alignment
handbook's examples) and Anthropic HH dialogues, turned into our records.

Named datasets: DeepSpeed-Chat's `get_raw_dataset` recognises a dataset when one of its
known names occurs anywhere in the path (so `/data/Dahoas/rm-static` is Dahoas/rm-static);
`match` does the same, with the same names in the same order. Each rule turns one row into
- `{"prompt", "chosen", "rejected"}` for datasets with a preferred and a rejected answer, or
- `{"instruction": prompt, "output": answer}` (the SFT format) for datasets with one answer,
or None for a row that is skipped. Texts are built exactly as DeepSpeed-Chat's class for the
dataset builds them: most prompts are " Human: <question> Assistant:" and most answers start
with " ", so the prompt ends where generation starts. A row is skipped where DeepSpeed-Chat
skips it, and also when an answer (or the prompt) is empty, which our validation would
otherwise reject as bad input.

Anthropic HH rows (`{"chosen": dialogue, "rejected": dialogue}`, each dialogue
"\\n\\nHuman: ...\\n\\nAssistant: ...") become `{"prompt", "chosen", "rejected"}`: the prompt is
the dialogue up to and including its last "\\n\\nAssistant:", the answer is everything after
it, unchanged. The space after "Assistant:" therefore starts the answer: prompt and answer
are tokenized separately, and generation starts right after "Assistant:", where the model
must produce that space itself (Dahoas/full-hh-rlhf, built from the same dialogues, splits
them the same way).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

HH_TURN = "\n\nAssistant:"


class RowError(ValueError):
    """A row a rule cannot read (missing column, wrong type); the message names the column."""


# -- column access --------------------------------------------------------------------------
def _name(path: tuple) -> str:
    return "".join(f"[{k}]" if isinstance(k, int) else (f".{k}" if i else k) for i, k in enumerate(path))


def _at(row: dict, *path: str | int) -> Any:
    """The value at `path` (column, then keys / list indices), None where DeepSpeed-Chat's
    own check would find nothing (a None value, an empty list); RowError for a column that is
    missing or of the wrong type, since DeepSpeed-Chat fails on those rows too."""
    v: Any = row
    for i, key in enumerate(path):
        if v is None:
            return None
        if isinstance(key, int):
            if not isinstance(v, (list, tuple)):
                raise RowError(f'column "{_name(path[:i])}" must be a list, got {type(v).__name__}')
            if len(v) <= key:
                return None
        elif not isinstance(v, dict):
            raise RowError(f'column "{_name(path[:i])}" must be a struct, got {type(v).__name__}')
        elif key not in v:
            raise RowError(f'column "{_name(path[:i + 1])}" is missing')
        v = v[key]
    return v


def _opt_text(row: dict, *path: str | int) -> str | None:
    v = _at(row, *path)
    if v is not None and not isinstance(v, str):
        raise RowError(f'column "{_name(path)}" must be a string, got {type(v).__name__}')
    return v


def _text(row: dict, *path: str | int) -> str:
    """A string DeepSpeed-Chat uses without checking: None is an error, as it is there."""
    v = _opt_text(row, *path)
    if v is None:
        raise RowError(f'column "{_name(path)}" is null')
    return v


def _number(row: dict, col: str) -> float:
    v = _at(row, col)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise RowError(f'column "{col}" must be a number, got {type(v).__name__}')
    return float(v)


def _blank(*texts: str) -> bool:
    return any(not t.strip() for t in texts)


def _pair(prompt: str, chosen: str, rejected: str) -> dict | None:
    return None if _blank(prompt, chosen, rejected) else {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _sft(prompt: str, answer: str) -> dict | None:
    return None if _blank(prompt, answer) else {"instruction": prompt, "output": answer}


def _human(question: str) -> str:
    return " Human: " + question + " Assistant:"


# -- rules: one per DeepSpeed-Chat dataset class --------------------------------------------
def dahoas_pairs(row: dict) -> dict | None:
    """Dahoas/rm-static, Dahoas/full-hh-rlhf: `prompt`, `chosen`, `rejected` as they are
    (`response` duplicates `chosen` and is not read). Prompts end with "Assistant:", answers
    start with " "."""
    return _pair(_text(row, "prompt"), _text(row, "chosen"), _text(row, "rejected"))


def dahoas_synthetic(row: dict) -> dict | None:
    """Dahoas/synthetic-instruct-gptj-pairwise: `prompt` (a bare instruction), `chosen`,
    `rejected`; prompt " Human: <prompt> Assistant:", answers " <chosen>", " <rejected>"."""
    return _pair(_human(_text(row, "prompt")), " " + _text(row, "chosen"), " " + _text(row, "rejected"))


def yitingxie(row: dict) -> dict | None:
    """yitingxie/rlhf-reward-datasets: `prompt` (a dialogue ending before the last
    "Assistant:"), `chosen` and `rejected` ("Assistant: <answer>"); the prompt gets
    "Assistant:" appended, each answer is the text after its last "Assistant:"."""
    return _pair(_text(row, "prompt") + "Assistant:", _text(row, "chosen").split("Assistant:")[-1],
                 _text(row, "rejected").split("Assistant:")[-1])


def _uncite(answer: str) -> str:
    # WebGPT answers cite their browsing results ("[1]", "(2)"); without the browser these
    # markers mean nothing, so DeepSpeed-Chat strips them (and the space before them).
    answer = re.sub(r" [\(\[].*?[\)\]]", "", answer)
    return re.sub(r"[\(\[].*?[\)\]]", "", answer)


def webgpt(row: dict) -> dict | None:
    """openai/webgpt_comparisons: `question.full_text`, `answer_0`/`answer_1` with
    `score_0`/`score_1`. Chosen is the higher-scored answer, answer_0 on a tie (the
    rejected one is then answer_1, as in DeepSpeed-Chat); citations are removed."""
    first = _number(row, "score_0") >= _number(row, "score_1")
    a0, a1 = _uncite(_text(row, "answer_0")), _uncite(_text(row, "answer_1"))
    chosen, rejected = (a0, a1) if first else (a1, a0)
    return _pair(_human(_text(row, "question", "full_text")), " " + chosen, " " + rejected)


def shp(row: dict) -> dict | None:
    """stanfordnlp/SHP: `history` (the post), `human_ref_A`, `human_ref_B` and `labels`
    (1: A is preferred, 0: B is)."""
    a, b = _text(row, "human_ref_A"), _text(row, "human_ref_B")
    chosen, rejected = (a, b) if int(_number(row, "labels")) == 1 else (b, a)
    return _pair(_human(_text(row, "history")), " " + chosen, " " + rejected)


def sharegpt_vicuna(row: dict) -> dict | None:
    """pvduy/sharegpt_alpaca_oa_vicuna_format: `prompt` ("USER: ... ASSISTANT:") with USER
    and ASSISTANT renamed Human and Assistant, `label` the answer. SFT only; rows with an
    empty or null prompt or label are skipped."""
    prompt, label = _opt_text(row, "prompt"), _opt_text(row, "label")
    if not prompt or not label:
        return None
    return _sft(prompt.replace("USER", "Human").replace("ASSISTANT", "Assistant"), " " + label)


def zhihu(row: dict) -> dict | None:
    """wangrui6/Zhihu-KOL: `INSTRUCTION` (question), `RESPONSE` (answer); `SOURCE` and
    `METADATA` are not read. SFT only; rows with a null INSTRUCTION or RESPONSE are skipped."""
    q, a = _opt_text(row, "INSTRUCTION"), _opt_text(row, "RESPONSE")
    return None if q is None or a is None else _sft(_human(q), " " + a)


def miracl(row: dict) -> dict | None:
    """Cohere/miracl-zh-queries-22-12, Cohere/miracl-ja-queries-22-12: `query`, and
    `positive_passages` / `negative_passages` (lists of {docid, text, title}); the first
    positive passage is chosen, the first negative rejected. A row without either list's
    first passage is skipped (DeepSpeed-Chat skips the Japanese ones without a negative)."""
    pos, neg = _opt_text(row, "positive_passages", 0, "text"), _opt_text(row, "negative_passages", 0, "text")
    if pos is None or neg is None:
        return None
    return _pair(_human(_text(row, "query")), " " + pos, " " + neg)


def hc3_chinese(row: dict) -> dict | None:
    """Hello-SimpleAI/HC3-Chinese: `question` and `human_answers` (list; the first is the
    answer); `chatgpt_answers` is not read. SFT only; rows with a null question or no human
    answer are skipped."""
    q, a = _opt_text(row, "question"), _opt_text(row, "human_answers", 0)
    return None if q is None or a is None else _sft(_human(q), " " + a)


def _mkqa(row: dict, lang: str) -> dict | None:
    q, a = _opt_text(row, "queries", lang), _opt_text(row, "answers", lang, 0, "text")
    return None if q is None or a is None else _sft(_human(q), " " + a)


def mkqa_chinese(row: dict) -> dict | None:
    """mkqa-Chinese (loads the `mkqa` dataset): `queries.zh_cn` and the first answer's
    `answers.zh_cn[0].text`. SFT only; rows without either are skipped."""
    return _mkqa(row, "zh_cn")


def mkqa_japanese(row: dict) -> dict | None:
    """mkqa-Japanese (loads the `mkqa` dataset): `queries.ja` and `answers.ja[0].text`.
    SFT only; rows without either are skipped."""
    return _mkqa(row, "ja")


def qg_jaquad(row: dict) -> dict | None:
    """lmqg/qg_jaquad: `question`, answered by its `sentence` (the context sentence holding
    the answer). SFT only."""
    return _sft(_human(_text(row, "question")), " " + _text(row, "sentence"))


def qag_jaquad(row: dict) -> dict | None:
    """lmqg/qag_jaquad: the first of `questions`, answered by the whole `paragraph`. SFT
    only; rows with no question are skipped."""
    q = _opt_text(row, "questions", 0)
    return None if q is None else _sft(_human(q), " " + _text(row, "paragraph"))


def local_jsonfile(row: dict) -> dict | None:
    """local/jsonfile (data/train.json and data/eval.json): `prompt`, `chosen`, `rejected`,
    each with " " put in front. Rows with a null field are skipped."""
    p, c, r = _opt_text(row, "prompt"), _opt_text(row, "chosen"), _opt_text(row, "rejected")
    return None if None in (p, c, r) else _pair(" " + p, " " + c, " " + r)


# -- TRL's and the alignment handbook's preference data -----------------------------------------------
def ultrafeedback(row: dict) -> dict | None:
    """HuggingFaceH4/ultrafeedback_binarized (the handbook's DPO data) and
    trl-lib/ultrafeedback_binarized (TRL's reward-model quick start): `chosen` and `rejected`
    conversations with their ratings `score_chosen` / `score_rejected` -> a chat pair with scores.
    `prompt` (the first user turn), `prompt_id` and `messages` (a copy of `chosen`) are not read.
    Rows whose two conversations are identical or end in an empty answer are skipped."""
    chosen, rejected = _at(row, "chosen"), _at(row, "rejected")
    for col, conv in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(conv, list) or not conv:
            raise RowError(f'column "{col}" must be a non-empty list of messages, got {type(conv).__name__}')
    answers = [_opt_text(row, col, -1, "content") for col in ("chosen", "rejected")]
    if chosen == rejected or any(a is None or _blank(a) for a in answers):
        return None
    return {"chosen": chosen, "rejected": rejected, "chosen_score": _number(row, "score_chosen"),
            "rejected_score": _number(row, "score_rejected")}


def ultrachat(row: dict) -> dict | None:
    """HuggingFaceH4/ultrachat_200k (the handbook's SFT data): the `messages` conversation, as the
    chat format; `prompt` (its first turn) and `prompt_id` are not read."""
    messages = _at(row, "messages")
    if not isinstance(messages, list):
        raise RowError(f'column "messages" must be a list of messages, got {type(messages).__name__}')
    return {"messages": messages} if messages else None


# -- the examples of trlx / open-chatgpt (summarisation, sentiment, prompts) -------------------------
def summarize_tldr(row: dict) -> dict | None:
    """CarperAI/openai_summarize_tldr: `prompt` (a Reddit post ending in "TL;DR:") and `label`
    (its human summary), as the SFT format; trlx's summarisation example trains on prompt + label."""
    return _sft(_text(row, "prompt"), _text(row, "label"))


def summarize_comparisons(row: dict) -> dict | None:
    """CarperAI/openai_summarize_comparisons: `prompt` (the post, without "TL;DR:"), `chosen` and
    `rejected` (each "TL;DR: <summary>"); the prompt gains a "\\n", as trlx's reward model joins
    prompt and summary, so the scored text is the tldr prompt (which ends in "\\nTL;DR:") and a summary."""
    return _pair(_text(row, "prompt") + "\n", _text(row, "chosen"), _text(row, "rejected"))


def awesome_prompts(row: dict) -> dict | None:
    """fka/awesome-chatgpt-prompts: `act` (a role) and `prompt` (its instructions) -> a step-3
    prompt " Human: <prompt> Assistant:" without a reference answer (prompts for RLHF only)."""
    prompt = _text(row, "prompt")
    return None if _blank(prompt) else {"instruction": _human(prompt)}


IMDB_OPENING_WORDS = 8


def imdb(row: dict) -> dict | None:
    """imdb: `text` (a movie review) and `label` -> the review's first IMDB_OPENING_WORDS words as
    the prompt and the rest as the answer (TRL's and trlx's sentiment examples continue review
    openings); HTML line breaks become spaces; reviews of fewer than twice that many words are
    skipped."""
    words = _text(row, "text").replace("<br />", " ").split()
    if len(words) < 2 * IMDB_OPENING_WORDS:
        return None
    return _sft(" ".join(words[:IMDB_OPENING_WORDS]), " " + " ".join(words[IMDB_OPENING_WORDS:]))


@dataclass(frozen=True)
class NamedDataset:
    name: str                                 # DeepSpeed-Chat's name, found anywhere in the path
    row: Callable[[dict], dict | None]        # one row -> our record, None to skip it
    eval_split: str | None = "test"           # the held-out split DeepSpeed-Chat reads; None: it
                                              # takes a seeded tenth of train instead
    train_split: str = "train"                # the split trained on
    hub_name: str | None = None               # what is loaded for the bare name, when not the name
    local_files: tuple[str, str] | None = None  # (train, eval) under the working directory
    # DeepSpeed-Chat finds its names anywhere in a path; the others (a bare "imdb" would claim any
    # folder with "imdb" in its name) only as the whole path or its last two or one parts
    anywhere: bool = True

    def matches(self, path: str) -> bool:
        if self.anywhere:
            return self.name in path
        path = path.rstrip("/")
        return path == self.name or path.endswith("/" + self.name)


NAMED: dict[str, NamedDataset] = {d.name: d for d in (
    NamedDataset("Dahoas/rm-static", dahoas_pairs),
    NamedDataset("Dahoas/full-hh-rlhf", dahoas_pairs),
    NamedDataset("Dahoas/synthetic-instruct-gptj-pairwise", dahoas_synthetic, eval_split=None),
    NamedDataset("yitingxie/rlhf-reward-datasets", yitingxie),
    NamedDataset("openai/webgpt_comparisons", webgpt, eval_split=None),
    NamedDataset("stanfordnlp/SHP", shp, eval_split="validation"),
    NamedDataset("pvduy/sharegpt_alpaca_oa_vicuna_format", sharegpt_vicuna),
    NamedDataset("wangrui6/Zhihu-KOL", zhihu, eval_split=None),
    NamedDataset("Cohere/miracl-zh-queries-22-12", miracl, eval_split="dev"),
    NamedDataset("Hello-SimpleAI/HC3-Chinese", hc3_chinese, eval_split=None),
    NamedDataset("mkqa-Chinese", mkqa_chinese, eval_split=None, hub_name="mkqa"),
    NamedDataset("mkqa-Japanese", mkqa_japanese, eval_split=None, hub_name="mkqa"),
    NamedDataset("Cohere/miracl-ja-queries-22-12", miracl, eval_split="dev"),
    NamedDataset("lmqg/qg_jaquad", qg_jaquad, eval_split="validation"),
    NamedDataset("lmqg/qag_jaquad", qag_jaquad, eval_split="validation"),
    NamedDataset("local/jsonfile", local_jsonfile, eval_split="eval",
                 local_files=("data/train.json", "data/eval.json")),
    NamedDataset("CarperAI/openai_summarize_tldr", summarize_tldr, eval_split="valid", anywhere=False),
    NamedDataset("CarperAI/openai_summarize_comparisons", summarize_comparisons, eval_split="test", anywhere=False),
    NamedDataset("fka/awesome-chatgpt-prompts", awesome_prompts, eval_split=None, anywhere=False),
    NamedDataset("stanfordnlp/imdb", imdb, eval_split="test", anywhere=False),
    NamedDataset("imdb", imdb, eval_split="test", anywhere=False),
    NamedDataset("HuggingFaceH4/ultrafeedback_binarized", ultrafeedback, eval_split="test_prefs",
                 train_split="train_prefs", anywhere=False),
    NamedDataset("trl-lib/ultrafeedback_binarized", ultrafeedback, eval_split="test", anywhere=False),
    NamedDataset("HuggingFaceH4/ultrachat_200k", ultrachat, eval_split="test_sft", train_split="train_sft",
                 anywhere=False),
)}


def match(path: str) -> NamedDataset | None:
    """The named dataset `path` names (`NamedDataset.matches`), checked in DeepSpeed-Chat's order."""
    return next((d for d in NAMED.values() if d.matches(path)), None)


# -- Anthropic HH -------------------------------------------------------------------------------
def is_hh(row: dict) -> bool:
    """Exactly the HH shape: string `chosen` and `rejected`, no `prompt`, no other text field."""
    return (isinstance(row.get("chosen"), str) and isinstance(row.get("rejected"), str) and "prompt" not in row
            and not any(isinstance(v, str) for k, v in row.items() if k not in ("chosen", "rejected")))


def split_hh(dialogue: str) -> tuple[str, str] | None:
    """(prompt through the last "\\n\\nAssistant:", the answer after it), None without one."""
    i = dialogue.rfind(HH_TURN)
    if i < 0:
        return None
    cut = i + len(HH_TURN)
    return dialogue[:cut], dialogue[cut:]


def hh_pair(row: dict) -> dict | None:
    """An HH row as `{"prompt", "chosen", "rejected"}` (other, non-text fields kept); None when
    the two dialogues differ before their last answer or an answer is empty: such a pair
    would compare answers to different conversations, or teach nothing."""
    parts = {}
    for col in ("chosen", "rejected"):
        parts[col] = split_hh(row[col])
        if parts[col] is None:
            raise RowError(f'field "{col}" has no "\\n\\nAssistant:" turn (rows with only chosen and rejected '
                           f'are read as Anthropic HH dialogues; plain pairs need a "prompt" field)')
    (prompt, chosen), (other, rejected) = parts["chosen"], parts["rejected"]
    if prompt != other or _blank(chosen, rejected):
        return None
    return {**{k: v for k, v in row.items() if k not in ("chosen", "rejected")},
            "prompt": prompt, "chosen": chosen, "rejected": rejected}
