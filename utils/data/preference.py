"""Preference pairs and scored responses for the reward model and DPO.

Accepted rows (parquet columns or JSON keys):
- pairs: `prompt, chosen, rejected` (+ `response`, which duplicates `chosen` in
  DeepSpeed-Chat files and is ignored), optionally `chosen_score, rejected_score` (or the
  earlier tool's `chosen_gpt_score, rejected_gpt_score`);
- chat pairs: `chosen` and `rejected` as message lists sharing every turn but the last
  assistant answer (`prompt` optional and ignored);
- pointwise: `prompt, response, score`.
Prompt and answers are tokenized separately, as in SFT; a plain answer ends with EOS.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from .collate import pad_right
from .errors import DataError
from .readers import Record, require_number, require_str
from .sft import IGNORE_INDEX, encode_prompts, encode_responses

PAIR_COLUMNS = ("prompt", "chosen", "rejected")
SCORE_COLUMNS = (("chosen_score", "rejected_score"), ("chosen_gpt_score", "rejected_gpt_score"))
KNOWN_COLUMNS = {"prompt", "response", "chosen", "rejected", "score",
                 *(c for pair in SCORE_COLUMNS for c in pair)}
NAN = float("nan")


@dataclass
class PreferenceExample:
    """A pair (rejected_ids set) or a scored single response (rejected_ids None)."""
    prompt_ids: list[int]
    chosen_ids: list[int]                  # response ids, ending in EOS unless truncated
    rejected_ids: list[int] | None = None
    chosen_score: float = NAN              # annotated score, NaN when absent
    rejected_score: float = NAN
    ref_chosen: float = NAN                # precomputed reference log-probs (DPO), NaN when absent
    ref_rejected: float = NAN

    @property
    def is_pair(self) -> bool:
        return self.rejected_ids is not None


def _kind(rec: Record) -> str:
    keys = set(rec.data)
    unknown = sorted(keys - KNOWN_COLUMNS)
    if unknown:
        raise DataError(f"{rec.where}: unknown column(s) {', '.join(unknown)}; expected prompt, chosen, rejected "
                        f"[, chosen_score, rejected_score] or prompt, response, score")
    if "chosen" in keys or "rejected" in keys:
        missing = [c for c in ("chosen", "rejected") if c not in keys]
        if not missing and isinstance(rec.data["chosen"], list):
            return "chat"
        missing += [] if "prompt" in keys else ["prompt"]
        if missing:
            raise DataError(f"{rec.where}: missing column(s) {', '.join(missing)} (found: {', '.join(sorted(keys))})")
        return "pair"
    if "score" in keys:
        missing = [c for c in ("prompt", "response") if c not in keys]
        if missing:
            raise DataError(f"{rec.where}: missing column(s) {', '.join(missing)} (found: {', '.join(sorted(keys))})")
        return "point"
    raise DataError(f"{rec.where}: missing column(s) chosen, rejected (found: {', '.join(sorted(keys)) or 'none'})")


def _scores(rec: Record, required: bool) -> tuple[float, float]:
    for c, r in SCORE_COLUMNS:
        if c in rec.data or r in rec.data:
            return require_number(rec, c), require_number(rec, r)
    if required:
        raise DataError(f"{rec.where}: missing column(s) chosen_score, rejected_score (or chosen_gpt_score, "
                        f"rejected_gpt_score), needed to train from scores")
    return NAN, NAN


def _chat_texts(rec: Record, tokenizer) -> tuple[str, str, str]:
    from .sft import _check_messages

    chosen = _check_messages(Record(rec.source, rec.loc, {"messages": rec.data["chosen"]}))
    rejected = _check_messages(Record(rec.source, rec.loc, {"messages": rec.data["rejected"]}))
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        raise DataError(f"{rec.where}: chosen and rejected must end with an assistant message")
    if chosen[:-1] != rejected[:-1]:
        raise DataError(f"{rec.where}: chosen and rejected differ before their last message")
    prompt = tokenizer.apply_chat_template(chosen[:-1], tokenize=False, add_generation_prompt=True)
    out = []
    for msgs in (chosen, rejected):
        full = tokenizer.apply_chat_template(msgs, tokenize=False)
        if not full.startswith(prompt):
            raise DataError(f"{rec.where}: the tokenizer's chat template does not render turns incrementally")
        out.append(full[len(prompt):])
    return prompt, out[0], out[1]


def tokenize_preferences(records: list[Record], tokenizer, max_len: int, *, need_scores: bool = False,
                         pairs_only: bool = False) -> tuple[list[PreferenceExample], int]:
    """Validate and tokenize one source's rows; returns (examples, truncated answers)."""
    if not records:
        return [], 0
    kinds = [_kind(r) for r in records]
    for r, k in zip(records, kinds):
        if k != kinds[0]:
            raise DataError(f"{r.where}: row is {k} but earlier rows are {kinds[0]}")
    kind = kinds[0]
    if pairs_only and kind == "point":
        raise DataError(f"{records[0].where}: pointwise rows (prompt, response, score) have no pair to prefer")
    trunc = 0

    def fit(prompt: list[int], resp: list[int], rec: Record) -> list[int]:
        nonlocal trunc
        if len(prompt) >= max_len:
            raise DataError(f"{rec.where}: prompt is {len(prompt)} tokens, not shorter than --max_seq_len {max_len}")
        if len(prompt) + len(resp) > max_len:
            trunc += 1
            return resp[: max_len - len(prompt)]
        return resp

    out: list[PreferenceExample] = []
    if kind == "chat":
        for rec in records:
            p, c, r = _chat_texts(rec, tokenizer)
            ids = tokenizer([p, c, r], add_special_tokens=False)["input_ids"]
            cs, rs = _scores(rec, need_scores)
            out.append(PreferenceExample(ids[0], fit(ids[0], ids[1], rec), fit(ids[0], ids[2], rec), cs, rs))
        return out, trunc
    prompts = encode_prompts(tokenizer, [require_str(r, "prompt") for r in records])
    if kind == "pair":
        chosen = encode_responses(tokenizer, [require_str(r, "chosen") for r in records])
        rejected = encode_responses(tokenizer, [require_str(r, "rejected") for r in records])
        for rec, p, c, r in zip(records, prompts, chosen, rejected):
            cs, rs = _scores(rec, need_scores)
            out.append(PreferenceExample(p, fit(p, c, rec), fit(p, r, rec), cs, rs))
    else:
        responses = encode_responses(tokenizer, [require_str(r, "response") for r in records])
        for rec, p, resp in zip(records, prompts, responses):
            out.append(PreferenceExample(p, fit(p, resp, rec), None, require_number(rec, "score")))
    return out, trunc


@dataclass
class PreferenceBatch:
    """Rows [0, P) chosen answers, [P, 2P) the rejected answers of the same pairs,
    [2P, R) scored single responses. Right-padded."""
    input_ids: torch.Tensor       # [R, T] long
    attention_mask: torch.Tensor  # [R, T] long
    labels: torch.Tensor          # [R, T] long, response tokens only (IGNORE_INDEX elsewhere)
    score_target: torch.Tensor    # [R] float, NaN where the row has no annotated score
    ref_logps: torch.Tensor       # [R] float, precomputed reference log-probs or NaN
    n_pairs: int

    def to(self, device) -> "PreferenceBatch":
        return PreferenceBatch(**{f.name: (v.to(device) if torch.is_tensor(v := getattr(self, f.name)) else v)
                                  for f in fields(self)})

    @property
    def lengths(self) -> torch.Tensor:
        """[R] number of real tokens per row."""
        return self.attention_mask.sum(-1)


def collate_preferences(examples: list[PreferenceExample], pad_id: int) -> PreferenceBatch:
    pairs = [e for e in examples if e.is_pair]
    points = [e for e in examples if not e.is_pair]
    rows = ([(e.prompt_ids, e.chosen_ids, e.chosen_score, e.ref_chosen) for e in pairs]
            + [(e.prompt_ids, e.rejected_ids, e.rejected_score, e.ref_rejected) for e in pairs]
            + [(e.prompt_ids, e.chosen_ids, e.chosen_score, NAN) for e in points])
    ids = [p + r for p, r, _, _ in rows]
    labels = [[IGNORE_INDEX] * len(p) + list(r) for p, r, _, _ in rows]
    return PreferenceBatch(
        input_ids=pad_right(ids, pad_id),
        attention_mask=pad_right([[1] * len(x) for x in ids], 0),
        labels=pad_right(labels, IGNORE_INDEX),
        score_target=torch.tensor([s for _, _, s, _ in rows], dtype=torch.float32),
        ref_logps=torch.tensor([x for _, _, _, x in rows], dtype=torch.float32),
        n_pairs=len(pairs),
    )
