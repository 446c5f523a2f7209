"""Step 3 prompts: the SFT format, where `output` is the reference answer and `input` the source,
preference pairs (`prompt, chosen, rejected`), where `chosen` is the reference answer, or TRL's
prompt-only (`prompt`) and prompt-completion (`prompt, completion`: the reference) rows, of
strings or conversational (lists of messages; a chat pair's prompt is the turns before its
chosen answer, which is the reference). A conversational prompt is the actor's chat
template of its turns with the generation prompt (its special tokens come from the template);
the turns travel with the example, so a reward model scores the conversation with its own
template (utils.rewards), and the reference is the completion's last answer. A row's other
columns (a GRPO dataset's `solution`, say) travel too, for rule rewards that ask for them.

Lengths: a prompt longer than --max_prompt_seq_len is cut from the left to that many tokens,
keeping its special prefix (BOS) at the front and its end next to where generation starts;
a prompt that would keep nothing besides that prefix is dropped. The example for the extra
SFT loss is the whole prompt + reference cut by the same rule as step 1 (encoding.py) with
--max_seq_len, so it equals the example step 1 makes from the same row.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial

from ..distributed import print_rank0
from ..errors import DataError
from .cache import cacheable, tokenize_cached
from .encoding import (IGNORE_INDEX, Example, LengthStats, by_source, encode_prompts, encode_responses, fit_prompt,
                       fit_row, require_usable, special_prefix)
from .preference import KNOWN_COLUMNS, _conversations, _kind, prompt_completion_turns, render_after
from .readers import Record, require_str
from .sft import detect_format, sft_prompt


@cacheable
@dataclass
class PromptExample:
    prompt_ids: list[int]     # tokenized exactly as in SFT (and as generation sees them), cut to the prompt limit
    prompt: str               # the prompt text; when cut, the text of the kept ids (what the actor saw)
    reference: str            # the record's `output` (pairs: `chosen`); "" when absent
    source: str               # the record's `input`, else the prompt (COMET's `src`)
    sft: Example | None       # prompt + reference answer, for the extra SFT loss
    messages: list[dict] | None = None   # a conversational prompt's turns; None for a text prompt
    columns: dict | None = None          # the row's columns the format does not read (rule rewards' extras)


def _texts(rec: Record, kind: str, need_reference: bool) -> tuple[str, str, str | None]:
    """(prompt, reference, source or None) of one record."""
    if kind == "preference":
        if _kind(rec) != "pair":
            raise DataError(f"{rec.where}: row is a chat pair but earlier rows are pairs of text")
        return require_str(rec, "prompt"), require_str(rec, "chosen"), None
    if kind in ("prompt", "completion"):
        if not isinstance(rec.data["prompt"], str):
            raise DataError(f'{rec.where}: field "prompt" is a {type(rec.data["prompt"]).__name__} but earlier rows '
                            f'have text prompts')
        reference = require_str(rec, "completion", optional=not need_reference, allow_empty=not need_reference)
        return require_str(rec, "prompt"), reference or "", None
    reference = require_str(rec, "output", optional=not need_reference, allow_empty=not need_reference) or ""
    return sft_prompt(rec), reference, require_str(rec, "input", optional=True, allow_empty=True) or None


def is_conversational(rec: Record) -> bool:
    """A row whose prompt (or chosen answer) is a list of chat turns."""
    return isinstance(rec.data.get("prompt"), list) or isinstance(rec.data.get("chosen"), list)


def _turns(rec: Record) -> tuple[list[dict], list[dict] | None]:
    """A conversational row's prompt turns and its reference answer's turns (None: no reference).
    A chat pair's prompt is every turn before the chosen answer, which is the reference."""
    if "chosen" in rec.data:
        chosen, _ = _conversations(rec)
        if chosen[-1]["role"] != "assistant" or len(chosen) < 2:
            raise DataError(f"{rec.where}: chosen must hold turns before its last message, an assistant answer")
        return chosen[:-1], chosen[-1:]
    return prompt_completion_turns(rec)


def conversation_texts(rec: Record, tokenizer, need_reference: bool) -> tuple[str, str, str, str, list[dict]]:
    """(rendered prompt, rendered reference answer or "", reference text, source, the prompt's turns)
    of a conversational row."""
    head, tail = _turns(rec)
    if tail is None and need_reference:
        raise DataError(f'{rec.where}: field "completion" is missing')
    if tail is not None:
        prompt, (answer,) = render_after(rec, tokenizer, head, [head + tail])
        reference = next(m["content"] for m in reversed(tail) if m["role"] == "assistant")
    else:
        prompt = tokenizer.apply_chat_template(head, tokenize=False, add_generation_prompt=True)
        answer = reference = ""
    source = next((m["content"] for m in reversed(head) if m["role"] == "user"), prompt)
    return prompt, answer, reference, source, head


READ_COLUMNS = {"sft": {"instruction", "input", "output", "history"}, "preference": KNOWN_COLUMNS,
                "prompt": {"prompt", "completion"}, "completion": {"prompt", "completion"}}


def _jsonable(value):
    """A column value as the tokenized-data cache can store it (a parquet timestamp becomes its text)."""
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


def prompt_examples(records: list[Record], tokenizer, max_prompt_len: int, max_len: int,
                    need_reference: bool, fmt: str = "auto") -> tuple[list[PromptExample], LengthStats]:
    """One source file's records -> (prompts, what the length rules did to its rows).

    fmt: --data_format; "sft" accepts SFT records only, "auto" also preference pairs.

    A row counts as prompt-truncated when its generation prompt or the prompt of its SFT
    example was cut, as answer-truncated when its SFT example's reference was cut.
    """
    if not records:
        return [], LengthStats()
    kinds = [detect_format(r) for r in records]
    for r, k in zip(records, kinds):
        if k not in ("sft", "preference", "prompt", "completion"):
            raise DataError(f'{r.where}: step 3 prompts use the SFT format ("instruction", "input", "output"), '
                            f'preference pairs ("prompt", "chosen", "rejected") or TRL\'s "prompt" (with '
                            f'"completion" as the reference), not chat "messages"')
        if fmt == "sft" and k != "sft":
            raise DataError(f"{r.where}: record is {k} format but --data_format is sft")
        if k != kinds[0]:
            raise DataError(f"{r.where}: record is {k} format but earlier records are {kinds[0]}")
    if is_conversational(records[0]):
        if not getattr(tokenizer, "chat_template", None):
            raise DataError(f"{records[0].where}: conversational prompts need a tokenizer with a chat template")
        chats = [conversation_texts(r, tokenizer, need_reference) for r in records]
        p_ids, r_ids = (tokenizer([c[i] for c in chats], add_special_tokens=False)["input_ids"] for i in (0, 1))
        texts = [(prompt, ref, source) for prompt, _, ref, source, _ in chats]
        turns = [c[4] for c in chats]
    else:
        texts = [_texts(r, kinds[0], need_reference) for r in records]
        p_ids = encode_prompts(tokenizer, [p for p, _, _ in texts])
        r_ids = encode_responses(tokenizer, [ref for _, ref, _ in texts])
        turns = [None] * len(texts)
    prefix = special_prefix(tokenizer)
    out, stats = [], LengthStats()
    extra = [{k: _jsonable(v) for k, v in r.data.items() if k not in READ_COLUMNS[kinds[0]]} or None
             for r in records]
    for (text, ref, source), p, rid, messages, columns in zip(texts, p_ids, r_ids, turns, extra):
        gen = fit_prompt(p, max_prompt_len, prefix)
        if gen is None:
            stats.dropped += 1
            continue
        if len(gen) < len(p):
            text = tokenizer.decode(gen, skip_special_tokens=True)
        sft, sft_prompt_cut, answer_cut = None, False, False
        fitted = fit_row(p, [rid], max_len, prefix) if ref else None
        if fitted is not None:
            fp, (fa,) = fitted
            sft = Example(fp + fa, [IGNORE_INDEX] * len(fp) + fa)
            sft_prompt_cut, answer_cut = len(fp) < len(p), len(fa) < len(rid)
        stats.count(len(gen) < len(p) or sft_prompt_cut, answer_cut)
        out.append(PromptExample(gen, text, ref, source or text, sft, messages, columns))
    require_usable(records[0].source, stats, f"--max_prompt_seq_len {max_prompt_len}")
    return out, stats


def tokenize_prompts(records: list[Record], tokenizer, max_prompt_len: int, max_len: int,
                     need_reference: bool, cache_dir: str | None = None, fmt: str = "auto") -> list[PromptExample]:
    """`prompt_examples` of every source file in `records` (through the --data_output_path cache
    when given), printing each file's counts on rank 0."""
    tokenize = partial(prompt_examples, tokenizer=tokenizer, max_prompt_len=max_prompt_len, max_len=max_len,
                       need_reference=need_reference, fmt=fmt)
    out = []
    for source, group in by_source(records).items():
        examples, stats, hit = tokenize_cached(cache_dir, group, tokenize)
        print_rank0(stats.line(source) + (f" (reused from {cache_dir})" if hit else ""))
        out += examples
    return out
