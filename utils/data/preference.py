"""Preference pairs and scored responses for the reward model and DPO.

Accepted rows (parquet columns or JSON keys):
- pairs: `prompt, chosen, rejected` (+ `response`, which duplicates `chosen` in
  DeepSpeed-Chat files and is ignored), optionally `chosen_score, rejected_score` (or the
  earlier tool's `chosen_gpt_score, rejected_gpt_score`), optionally `margin` (TRL's: the
  reward model's pairwise loss asks r_chosen - r_rejected to exceed it; every row has one, or none);
- chat pairs: `chosen` and `rejected` as message lists sharing every turn but the last
  assistant answer; or TRL's explicit-prompt form, `prompt` the list of turns before the
  answers and `chosen` / `rejected` the answers (a string `prompt` is a copy of the first turn,
  as in UltraFeedback, and is not read); `margin` as above;
- pointwise: `prompt, response, score`.
For DPO (and step 1) prompt and answers are tokenized separately, as in SFT; a plain answer
ends with EOS. Long rows follow the length rule of encoding.py: both answers of a pair follow one
prompt, cut to leave room for the longer answer; a pair whose answers differ but become
identical once cut is dropped. Step 1 trains on these rows too (`tokenize_chosen`: prompt ->
chosen).

For the reward model (`joint=True`) each answer is encoded as a stock user encodes it:
`tokenizer(prompt + answer)` (chat pairs: the rendered conversation) plus EOS, scored at that EOS
(`reward_model_ids`, `utils.models.end_scores`). A row longer than --max_seq_len keeps its
special prefix and its last tokens, where the score is read.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .collate import batch_to, pad_right
from ..errors import DataError
from .readers import Record, require_number, require_str
from .cache import cacheable
from .chat import check_messages, tokenize_chat
from .encoding import (IGNORE_INDEX, Example, LengthStats, encode_prompts, encode_responses, fit_prompt, fit_row,
                       prompt_answer_examples, require_usable, special_prefix)

PAIR_COLUMNS = ("prompt", "chosen", "rejected")
SCORE_COLUMNS = (("chosen_score", "rejected_score"), ("chosen_gpt_score", "rejected_gpt_score"))
KNOWN_COLUMNS = {"prompt", "response", "chosen", "rejected", "score", "margin",
                 *(c for pair in SCORE_COLUMNS for c in pair)}
NAN = float("nan")


@cacheable
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
    margin: float = 0.0                    # the reward model's pairwise margin (`margin` column)

    @property
    def is_pair(self) -> bool:
        return self.rejected_ids is not None

    def set_reference(self, logps: tuple[float, float]) -> None:
        self.ref_chosen, self.ref_rejected = logps


def _kind(rec: Record) -> str:
    keys = set(rec.data)
    unknown = sorted(keys - KNOWN_COLUMNS)
    if unknown:
        raise DataError(f"{rec.where}: unknown column(s) {', '.join(unknown)}; expected prompt, chosen, rejected "
                        f"[, chosen_score, rejected_score, margin] or prompt, response, score")
    if "chosen" in keys or "rejected" in keys:
        missing = [c for c in ("chosen", "rejected") if c not in keys]
        if not missing and isinstance(rec.data["chosen"], list):
            return "chat"
        missing += [] if "prompt" in keys else ["prompt"]
        if missing:
            raise DataError(f"{rec.where}: missing column(s) {', '.join(missing)} (found: {', '.join(sorted(keys))})")
        return "pair"
    if "score" in keys:
        if "margin" in keys:
            raise DataError(f"{rec.where}: a margin needs a pair (chosen, rejected); this row is prompt, response, "
                            f"score")
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


def _conversations(rec: Record) -> tuple[list[dict], list[dict]]:
    """The whole chosen and rejected conversations of a chat pair (module docstring)."""
    prompt = rec.data.get("prompt")
    head = check_messages(rec, "prompt", need_answer=False) if isinstance(prompt, list) else []
    return tuple(head + check_messages(rec, col, need_answer=not head) for col in ("chosen", "rejected"))


def _chat_texts(rec: Record, tokenizer) -> tuple[str, str, str]:
    chosen, rejected = _conversations(rec)
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        raise DataError(f"{rec.where}: chosen and rejected must end with an assistant message")
    if chosen[:-1] != rejected[:-1]:
        raise DataError(f"{rec.where}: chosen and rejected differ before their last message")
    prompt, (c, r) = render_after(rec, tokenizer, chosen[:-1], [chosen, rejected])
    return prompt, c, r


def prompt_completion_turns(rec: Record) -> tuple[list[dict], list[dict] | None]:
    """TRL's conversational prompt-completion row: the prompt's turns and the completion's (None
    when the row has no completion)."""
    head = check_messages(rec, "prompt", need_answer=False)
    return head, check_messages(rec, "completion") if "completion" in rec.data else None


def render_after(rec: Record, tokenizer, head: list[dict], conversations: list[list[dict]]) -> tuple[str, list[str]]:
    """The chat template's text of `head` with the generation prompt, and what each conversation
    (head + its answer turns) renders after it: the prompt and the answers as generation sees them."""
    prompt = tokenizer.apply_chat_template(head, tokenize=False, add_generation_prompt=True)
    out = []
    for msgs in conversations:
        full = tokenizer.apply_chat_template(msgs, tokenize=False)
        if not full.startswith(prompt):
            raise DataError(f"{rec.where}: the tokenizer's chat template does not render turns incrementally")
        out.append(full[len(prompt):])
    return prompt, out


def _file_kind(records: list[Record]) -> str:
    """The one row kind of a file (pair, chat or point); rows of another kind are an error."""
    kinds = [_kind(r) for r in records]
    for r, k in zip(records, kinds):
        if k != kinds[0]:
            raise DataError(f"{r.where}: row is {k} but earlier rows are {kinds[0]}")
    return kinds[0]


def reward_model_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """What a reward model reads for each full text (prompt + answer, or a rendered chat): the
    tokenizer's own encoding (special tokens as it adds them) ending in EOS, where the score is
    read. One encoding of the whole text, as a stock user calls the tokenizer (byte-level
    tokenizers merge the space that ends a prompt into the answer's first token, which separate
    encoding would not); the tokenizer saved with a reward model appends the EOS itself
    (`utils.models.reward_tokenizer_for_export`)."""
    if not texts:
        return []
    return _ending_in_eos(tokenizer, tokenizer(texts, add_special_tokens=True)["input_ids"])


def reward_model_chat_ids(tokenizer, rendered: list[str]) -> list[list[int]]:
    """`reward_model_ids` of texts the chat template rendered: it wrote the special prefix itself,
    and may close a turn with EOS + "\n", so an EOS is appended for the score to be read at."""
    if not rendered:
        return []
    return _ending_in_eos(tokenizer, tokenizer(rendered, add_special_tokens=False)["input_ids"])


def _ending_in_eos(tokenizer, ids: list[list[int]]) -> list[list[int]]:
    eos = tokenizer.eos_token_id
    return [x if x and x[-1] == eos else x + [eos] for x in ids]


def _joint_examples(records: list[Record], kind: str, tokenizer, max_len: int,
                    scores: list[tuple[float, float, float]]) -> tuple[list[PreferenceExample], LengthStats]:
    if kind == "chat":
        texts = [[p + c, p + r] for p, c, r in (_chat_texts(rec, tokenizer) for rec in records)]
        flat = reward_model_chat_ids(tokenizer, [t for pair in texts for t in pair])
        rows = [flat[i:i + 2] for i in range(0, len(flat), 2)]
    else:
        names = ("chosen", "rejected") if kind == "pair" else ("response",)
        texts = [[require_str(r, "prompt") + require_str(r, n) for n in names] for r in records]
        flat = reward_model_ids(tokenizer, [t for row in texts for t in row])
        rows = [flat[i:i + len(names)] for i in range(0, len(flat), len(names))]
    prefix = special_prefix(tokenizer)
    out, stats = [], LengthStats()
    for answers, (cs, rs, m) in zip(rows, scores):
        cut = [fit_prompt(a, max_len, prefix) for a in answers]   # the score is read at the end
        if any(c is None for c in cut) or _cut_to_a_tie(answers, cut):
            stats.dropped += 1
            continue
        stats.count(any(len(c) < len(a) for c, a in zip(cut, answers)), False)
        out.append(PreferenceExample([], cut[0], cut[1] if len(cut) == 2 else None, cs, rs, margin=m))
    return out, stats


def _cut_to_a_tie(answers: list[list[int]], cut: list[list[int]]) -> bool:
    """Whether cutting made a pair's differing answers identical: no preference is left to learn."""
    return len(answers) == 2 and cut[0] == cut[1] and answers[0] != answers[1]


def tokenize_preferences(records: list[Record], tokenizer, max_len: int, *, need_scores: bool = False,
                         pairs_only: bool = False, joint: bool = False) -> tuple[list[PreferenceExample], LengthStats]:
    """Validate and tokenize one source's rows; returns (examples, what the length rule did).
    `joint`: the reward model's encoding (module docstring); the examples' prompt_ids are empty.

    Every row is validated (scores included) before any is dropped, so bad input is an
    error even in a row too long to use.
    """
    if not records:
        return [], LengthStats()
    kind = _file_kind(records)
    if pairs_only and kind == "point":
        raise DataError(f"{records[0].where}: pointwise rows (prompt, response, score) have no pair to prefer")
    has_margin = any("margin" in rec.data for rec in records)
    scores = [(*(_scores(rec, need_scores) if kind != "point" else (require_number(rec, "score"), NAN)),
               require_number(rec, "margin") if has_margin else 0.0) for rec in records]
    if joint:
        out, stats = _joint_examples(records, kind, tokenizer, max_len, scores)
        require_usable(records[0].source, stats, f"--max_seq_len {max_len}")
        return out, stats
    if kind == "chat":
        rows = []
        for rec in records:
            p, c, r = tokenizer(list(_chat_texts(rec, tokenizer)), add_special_tokens=False)["input_ids"]
            rows.append((p, [c, r]))
    else:
        prompts = encode_prompts(tokenizer, [require_str(r, "prompt") for r in records])
        names = ("chosen", "rejected") if kind == "pair" else ("response",)
        answers = [encode_responses(tokenizer, [require_str(r, n) for r in records]) for n in names]
        rows = [(p, a) for p, *a in zip(prompts, *answers)]
    prefix = special_prefix(tokenizer)
    out, stats = [], LengthStats()
    for (prompt, answers), (cs, rs, m) in zip(rows, scores):
        fitted = fit_row(prompt, answers, max_len, prefix)
        if fitted is not None and _cut_to_a_tie(answers, fitted[1]):
            fitted = None
        stats.count_fit(prompt, answers, fitted)
        if fitted is not None:
            p, a = fitted
            out.append(PreferenceExample(p, a[0], a[1] if len(a) == 2 else None, cs, rs, margin=m))
    require_usable(records[0].source, stats, f"--max_seq_len {max_len}")
    return out, stats


def tokenize_chosen(records: list[Record], tokenizer, max_len: int) -> tuple[list[Example], LengthStats]:
    """Step 1 on preference rows: SFT on prompt -> chosen, or on the chosen conversation of
    chat pairs; `rejected`, `response` and scores are not used."""
    kind = _file_kind(records)
    if kind == "chat":
        return tokenize_chat([Record(r.source, r.loc, {"messages": _conversations(r)[0]}) for r in records],
                             tokenizer, max_len)
    prompts = encode_prompts(tokenizer, [require_str(r, "prompt") for r in records])
    answers = encode_responses(tokenizer, [require_str(r, "chosen") for r in records])
    return prompt_answer_examples(prompts, answers, max_len, special_prefix(tokenizer))


@dataclass
class PreferenceBatch:
    """Rows [0, P) chosen answers, [P, 2P) the rejected answers of the same pairs,
    [2P, R) scored single responses. Right-padded."""
    input_ids: torch.Tensor       # [R, T] long
    attention_mask: torch.Tensor  # [R, T] long
    labels: torch.Tensor          # [R, T] long, response tokens only (IGNORE_INDEX elsewhere)
    score_target: torch.Tensor    # [R] float, NaN where the row has no annotated score
    ref_logps: torch.Tensor       # [R] float, precomputed reference log-probs or NaN
    margin: torch.Tensor          # [P] float, each pair's margin (0 without a margin column)
    n_pairs: int

    def to(self, device) -> "PreferenceBatch":
        return batch_to(self, device)

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
        margin=torch.tensor([e.margin for e in pairs], dtype=torch.float32),
        n_pairs=len(pairs),
    )
