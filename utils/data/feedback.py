"""Unpaired feedback (KTO) and ranked answers (RRHF), and preference pairs turned into either.

Accepted rows (parquet columns or JSON keys):
- KTO: `prompt, completion, label` (label true: the completion is desirable), as TRL's and
  OpenRLHF's unpaired datasets, as strings or (TRL's conversational form) lists of messages,
  rendered with the chat template like chat pairs; or preference pairs (preference.py), each
  split into its chosen answer (desirable) and its rejected one (undesirable), as TRL's
  `unpair_preference_dataset`.
- RRHF: `prompt, responses, scores` (a list of answers and a list of as many numbers, higher is
  better); or preference pairs as two answers scored by their score columns when present, else
  chosen 1 and rejected 0.
Prompt and answers are tokenized separately, as in SFT, and each answer ends with EOS. Long
rows follow the length rule of encoding.py, every answer of a row following one cut prompt.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch

from .collate import batch_to, pad_right
from ..errors import DataError
from .preference import PreferenceExample, prompt_completion_turns, render_after, tokenize_preferences
from .readers import Record, require_str
from .cache import cacheable
from .encoding import IGNORE_INDEX, LengthStats, encode_prompts, encode_responses, fit_row, require_usable, special_prefix

NAN = float("nan")
KTO_COLUMNS = ("prompt", "completion", "label")
RANKED_COLUMNS = ("prompt", "responses", "scores")


@cacheable
@dataclass
class KTOExample:
    prompt_ids: list[int]
    completion_ids: list[int]                              # ending in EOS unless truncated
    desirable: bool
    kl_ids: list[int] = field(default_factory=list)        # another row's completion (`pair_for_kl`)
    ref_logp: float = NAN                                  # precomputed reference log-probs, NaN when absent
    ref_kl_logp: float = NAN

    def set_reference(self, logps: tuple[float, float]) -> None:
        self.ref_logp, self.ref_kl_logp = logps


@cacheable
@dataclass
class RankedExample:
    prompt_ids: list[int]
    responses: list[list[int]]   # each ending in EOS unless truncated
    scores: list[float]          # one per response, higher is better


def _holds(records: list[Record], columns: tuple[str, ...]) -> bool:
    """Whether a file holds rows of `columns` (decided by its first row) rather than preference
    pairs; then every row must have exactly those columns."""
    if not (set(columns) - {"prompt"}) & set(records[0].data):
        return False
    for rec in records:
        keys = set(rec.data)
        missing, unknown = [c for c in columns if c not in keys], sorted(keys - set(columns))
        if missing or unknown:
            what = f"missing column(s) {', '.join(missing)}" if missing else f"unknown column(s) {', '.join(unknown)}"
            raise DataError(f"{rec.where}: {what}; expected {', '.join(columns)} (found: {', '.join(sorted(keys))})")
    return True


def _label(rec: Record) -> bool:
    v = rec.data["label"]
    if isinstance(v, bool) or (isinstance(v, int) and v in (0, 1)):
        return bool(v)
    raise DataError(f'{rec.where}: field "label" must be true or false (desirable or not), got {v!r}')


def _fit(prompt: list[int], answers: list[list[int]], max_len: int, prefix: list[int],
         stats: LengthStats) -> tuple[list[int], list[list[int]]] | None:
    fitted = fit_row(prompt, answers, max_len, prefix)
    stats.count_fit(prompt, answers, fitted)
    return fitted


def tokenize_kto(records: list[Record], tokenizer, max_len: int) -> tuple[list[KTOExample], LengthStats]:
    """One source's rows -> KTO examples (pairs split in two), and what the length rule did."""
    if not records:
        return [], LengthStats()
    if not _holds(records, KTO_COLUMNS):
        pairs, stats = tokenize_preferences(records, tokenizer, max_len, pairs_only=True)
        return [KTOExample(e.prompt_ids, ids, good) for e in pairs
                for ids, good in ((e.chosen_ids, True), (e.rejected_ids, False))], stats
    labels = [_label(r) for r in records]
    if isinstance(records[0].data["prompt"], list):
        prompts, answers = _chat_rows(records, tokenizer)
    else:
        prompts = encode_prompts(tokenizer, [require_str(r, "prompt") for r in records])
        answers = encode_responses(tokenizer, [require_str(r, "completion") for r in records])
    prefix, out, stats = special_prefix(tokenizer), [], LengthStats()
    for p, a, good in zip(prompts, answers, labels):
        if (fitted := _fit(p, [a], max_len, prefix, stats)) is not None:
            out.append(KTOExample(fitted[0], fitted[1][0], good))
    require_usable(records[0].source, stats, f"--max_seq_len {max_len}")
    return out, stats


def _chat_rows(records: list[Record], tokenizer) -> tuple[list[list[int]], list[list[int]]]:
    """Prompt and completion ids of conversational KTO rows: the rendered prompt with its generation
    prompt, and what the completion's turns add (the template's special tokens are in the text)."""
    texts = []
    for rec in records:
        head, tail = prompt_completion_turns(rec)   # `_holds` made sure the completion is there
        prompt, (answer,) = render_after(rec, tokenizer, head, [head + tail])
        texts.append((prompt, answer))
    ids = tokenizer([t for pair in texts for t in pair], add_special_tokens=False)["input_ids"]
    return ids[0::2], ids[1::2]


def _ranked_texts(rec: Record) -> tuple[list[str], list[float]]:
    responses, scores = rec.data["responses"], rec.data["scores"]
    if not isinstance(responses, list) or not responses or not all(isinstance(r, str) and r.strip()
                                                                   for r in responses):
        raise DataError(f'{rec.where}: field "responses" must be a non-empty list of non-empty strings')
    if not isinstance(scores, list) or len(scores) != len(responses):
        raise DataError(f'{rec.where}: field "scores" must be a list of {len(responses)} numbers, one per response')
    for i, s in enumerate(scores):
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
            raise DataError(f'{rec.where}: field "scores" item {i} must be a finite number, got {s!r}')
    return responses, [float(s) for s in scores]


def _pair_as_ranked(e: PreferenceExample) -> RankedExample:
    scored = not (math.isnan(e.chosen_score) or math.isnan(e.rejected_score))
    return RankedExample(e.prompt_ids, [e.chosen_ids, e.rejected_ids],
                         [e.chosen_score, e.rejected_score] if scored else [1.0, 0.0])


def tokenize_ranked(records: list[Record], tokenizer, max_len: int) -> tuple[list[RankedExample], LengthStats]:
    """One source's rows -> RRHF examples (pairs as two ranked answers), and what the length rule did."""
    if not records:
        return [], LengthStats()
    if not _holds(records, RANKED_COLUMNS):
        pairs, stats = tokenize_preferences(records, tokenizer, max_len, pairs_only=True)
        return [_pair_as_ranked(e) for e in pairs], stats
    rows = [_ranked_texts(r) for r in records]
    prompts = encode_prompts(tokenizer, [require_str(r, "prompt") for r in records])
    prefix, out, stats = special_prefix(tokenizer), [], LengthStats()
    for p, (texts, scores) in zip(prompts, rows):
        if (fitted := _fit(p, encode_responses(tokenizer, texts), max_len, prefix, stats)) is not None:
            out.append(RankedExample(fitted[0], fitted[1], scores))
    require_usable(records[0].source, stats, f"--max_seq_len {max_len}")
    return out, stats


def pair_for_kl(examples: list[KTOExample], max_len: int, seed: int) -> None:
    """Give each example another row's completion for KTO's reference point: a seeded shuffle,
    each row taking the next one's completion (the last the first's), cut to fit beside its own
    prompt. Fixed for the run, so a precomputed reference scores the same pairs training sees."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    for j, i in enumerate(order):
        e = examples[i]
        e.kl_ids = examples[order[(j + 1) % len(order)]].completion_ids[:max_len - len(e.prompt_ids)]


def _rows(prompts: list[list[int]], answers: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    ids = [p + a for p, a in zip(prompts, answers)]
    labels = [[IGNORE_INDEX] * len(p) + list(a) for p, a in zip(prompts, answers)]
    return {"input_ids": pad_right(ids, pad_id), "attention_mask": pad_right([[1] * len(x) for x in ids], 0),
            "labels": pad_right(labels, IGNORE_INDEX)}


@dataclass
class KTOBatch:
    """Rows [0, N) each prompt with its completion, [N, 2N) each prompt with its KL completion
    (`pair_for_kl`). Right-padded."""
    input_ids: torch.Tensor       # [2N, T] long
    attention_mask: torch.Tensor  # [2N, T] long
    labels: torch.Tensor          # [2N, T] long, answer tokens only (IGNORE_INDEX elsewhere)
    desirable: torch.Tensor       # [N] bool
    ref_logps: torch.Tensor       # [2N] float, precomputed reference log-probs or NaN
    n: int

    def to(self, device) -> "KTOBatch":
        return batch_to(self, device)


def collate_kto(examples: list[KTOExample], pad_id: int) -> KTOBatch:
    prompts = [e.prompt_ids for e in examples] * 2
    answers = [e.completion_ids for e in examples] + [e.kl_ids for e in examples]
    return KTOBatch(**_rows(prompts, answers, pad_id),
                    desirable=torch.tensor([e.desirable for e in examples], dtype=torch.bool),
                    ref_logps=torch.tensor([e.ref_logp for e in examples] + [e.ref_kl_logp for e in examples],
                                           dtype=torch.float32),
                    n=len(examples))


@dataclass
class RankedBatch:
    """Every example's answers, one row each, the rows of one prompt contiguous. Right-padded."""
    input_ids: torch.Tensor       # [R, T] long
    attention_mask: torch.Tensor  # [R, T] long
    labels: torch.Tensor          # [R, T] long, answer tokens only
    scores: torch.Tensor          # [R] float
    groups: list[int]             # [R] the example (0..G-1) each row answers
    n_prompts: int

    def to(self, device) -> "RankedBatch":
        return batch_to(self, device)


def collate_ranked(examples: list[RankedExample], pad_id: int) -> RankedBatch:
    prompts = [e.prompt_ids for e in examples for _ in e.responses]
    answers = [a for e in examples for a in e.responses]
    return RankedBatch(**_rows(prompts, answers, pad_id),
                       scores=torch.tensor([s for e in examples for s in e.scores], dtype=torch.float32),
                       groups=[g for g, e in enumerate(examples) for _ in e.responses], n_prompts=len(examples))
