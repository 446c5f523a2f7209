"""The encoding primitives every data format builds on: prompt and answer ids, the `Example`
they make, and the length rule with its counts (`LengthStats`).

Prompt and response are tokenized separately and their ids concatenated, so the prompt's
ids in training are exactly its ids at generation time (a joint tokenization lets a
trailing space of "Assistant: " merge into the first answer token).

Long rows (every step uses this rule; a long row never stops a run). A row is a prompt
(context, no loss) and an answer, or for a pair two answers sharing one prompt; `max_len`
bounds the prompt plus its longest answer. For chat the prompt is everything before the
first assistant answer and the answer is the rest, later turns included.
- If prompt + longest answer <= max_len, nothing is cut.
- Otherwise the prompt keeps `room = min(len(prompt), max(max_len - len(longest answer),
  max_len // 2))` tokens: as many as fit beside the whole answer, but never fewer than
  min(its length, max_len // 2), so a long answer is cut rather than the prompt vanishing.
  The prompt is cut from the left: when it starts with the special prefix (the ids the
  tokenizer puts in front of any text, e.g. BOS) that prefix stays at the very front,
  followed by the prompt's last `room - len(prefix)` tokens (the end next to the answer).
- Every answer keeps its first `max_len - room` tokens (a cut answer loses its EOS); both
  answers of a pair follow the same cut prompt.
- A row is dropped when the cut prompt would hold nothing besides its special prefix, when
  an answer would keep no token, or when cutting made a pair's chosen and rejected ids
  identical (no preference left).
Each file's rows are counted (`LengthStats`); a file with no row left is a DataError.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import DataError
from ..losses import IGNORE_INDEX
from .cache import cacheable
from .readers import Record


@cacheable
@dataclass
class Example:
    """One training sequence. Lists of equal length."""
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where no loss (prompt, context)


@cacheable
@dataclass
class LengthStats:
    """What the length rule (module docstring) did to one source file's rows; counts rows."""
    kept: int = 0               # rows that became examples, cut or not
    truncated: int = 0          # kept rows that lost tokens (prompt and/or an answer)
    truncated_prompts: int = 0  # kept rows whose prompt lost tokens from its start
    truncated_answers: int = 0  # kept rows whose answer (either answer of a pair) lost its end
    dropped: int = 0            # rows that could not fit even cut (or a pair cut to identical answers)

    @property
    def rows(self) -> int:
        return self.kept + self.dropped

    def count(self, prompt_cut: bool, answer_cut: bool) -> None:
        """Count one kept row."""
        self.kept += 1
        self.truncated += prompt_cut or answer_cut
        self.truncated_prompts += prompt_cut
        self.truncated_answers += answer_cut

    def count_fit(self, prompt: list[int], answers: list[list[int]],
                  fitted: tuple[list[int], list[list[int]]] | None) -> None:
        """Count one row given its ids before and after `fit_row` (None: dropped)."""
        if fitted is None:
            self.dropped += 1
            return
        self.count(len(fitted[0]) < len(prompt), any(len(f) < len(a) for f, a in zip(fitted[1], answers)))

    def line(self, source: str) -> str:
        """The line printed once per file."""
        return (f"[data] {source}: {self.rows} rows, {self.truncated} truncated ({self.truncated_prompts} prompts, "
                f"{self.truncated_answers} answers), {self.dropped} dropped")


def require_usable(source: str, stats: LengthStats, limit: str) -> None:
    """Dropping long rows is normal; a file left with none is a user mistake (wrong limit or file)."""
    if stats.rows and not stats.kept:
        raise DataError(f"{source}: no usable row: all {stats.rows} rows dropped, too long for {limit} "
                        f"even when truncated")


def by_source(records: list[Record]) -> dict[str, list[Record]]:
    """Records grouped by their file, in first-seen order (a file holds one format)."""
    groups: dict[str, list[Record]] = {}
    for r in records:
        groups.setdefault(r.source, []).append(r)
    return groups


def encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Prompt ids as generation sees them: the tokenizer's own special prefix (e.g. BOS),
    never a trailing EOS."""
    ids = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    return [x[:-1] if x and x[-1] == eos and eos != tokenizer.bos_token_id else x for x in ids]


def encode_responses(tokenizer, responses: list[str]) -> list[list[int]]:
    ids = tokenizer(responses, add_special_tokens=False)["input_ids"]
    return [x + [tokenizer.eos_token_id] for x in ids]


def special_prefix(tokenizer) -> list[int]:
    """The ids the tokenizer puts in front of any text ([BOS], or [] for tokenizers that add none)."""
    return encode_prompts(tokenizer, [""])[0]


def fit_prompt(prompt: list[int], n: int, prefix: list[int]) -> list[int] | None:
    """`prompt` cut to at most n tokens from the left, keeping `prefix` at the front when it
    starts with it; None when nothing but that prefix would be left."""
    if len(prompt) <= n:
        return prompt
    k = len(prefix) if prefix and prompt[:len(prefix)] == prefix else 0
    if n <= k:
        return None
    return prompt[:k] + prompt[len(prompt) - (n - k):]


def fit_row(prompt: list[int], answers: list[list[int]], max_len: int,
            prefix: list[int]) -> tuple[list[int], list[list[int]]] | None:
    """(prompt, answers) cut by the length rule of the module docstring; None: drop the row."""
    longest = max(len(a) for a in answers)
    if len(prompt) + longest <= max_len:
        return prompt, answers
    room = min(len(prompt), max(max_len - longest, max_len // 2))
    cut = fit_prompt(prompt, room, prefix)
    if cut is None or max_len - room < 1:
        return None
    return cut, [a[:max_len - room] for a in answers]


def prompt_answer_examples(prompts: list[list[int]], answers: list[list[int]], max_len: int,
                           prefix: list[int]) -> tuple[list[Example], LengthStats]:
    """Examples of prompt ids + answer ids (loss on the answer), each fitted to max_len."""
    out, stats = [], LengthStats()
    for p, a in zip(prompts, answers):
        fitted = fit_row(p, [a], max_len, prefix)
        stats.count_fit(p, [a], fitted)
        if fitted is not None:
            fp, (fa,) = fitted
            out.append(Example(fp + fa, [IGNORE_INDEX] * len(fp) + fa))
    return out, stats
