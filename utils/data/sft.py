"""Turn SFT, chat and plain-text records into token ids with loss labels, within a length limit.

Prompt and response are tokenized separately and their ids concatenated, so the prompt's
ids in training are exactly its ids at generation time (a joint tokenization lets a
trailing space of "Assistant: " merge into the first answer token).

Prompt rule for the seed format `{"instruction", "input", "output", "history"}`:
- `history` ([[query, response], ...]) comes first, each turn as `query + response + "\\n"`;
  it is context only (no loss).
- then `instruction`; a non-empty `input` replaces the placeholder `{input}` in the
  instruction when there is one, and is appended to the instruction otherwise.
- the loss covers `output` + EOS.
Preference rows (`prompt, chosen, rejected`, see preference.py) train on prompt -> chosen;
chat pairs train on the chosen conversation. TRL's prompt-completion rows train on prompt ->
completion: strings as the seed format's instruction -> output, conversations (`prompt` and
`completion` lists of messages) as chat with the loss on the completion's assistant turns only.
TRL's prompt-only rows (`prompt` alone) have nothing to learn here; step 3 reads them as prompts.

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

from .errors import DataError
from .readers import Record, require_str

IGNORE_INDEX = -100
SFT_KEYS = ("instruction", "output")


@dataclass
class Example:
    """One training sequence. Lists of equal length."""
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where no loss (prompt, context)


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


def detect_format(rec: Record) -> str:
    """sft, chat, preference, text, completion (TRL's prompt-completion, of strings or of
    conversations) or prompt (TRL's prompt-only)."""
    d = rec.data
    if "messages" in d:
        return "chat"
    if "chosen" in d or "rejected" in d:
        return "preference"
    if "instruction" in d or "output" in d:
        return "sft"
    if "completion" in d and "label" not in d:
        return "completion"
    if "text" in d:
        return "text"
    if "prompt" in d and not {"response", "score", "label", "responses", "scores"} & set(d):
        return "prompt"   # other columns (a GRPO dataset's answers for its reward functions) are not read
    keys = ", ".join(sorted(d)) or "none"
    raise DataError(f'{rec.where}: cannot tell the format: expected "instruction"/"output" (SFT), '
                    f'"messages" (chat), "prompt"/"completion" (prompt-completion), "prompt"/"chosen"/"rejected" '
                    f'(preference pairs), "text" (plain text) or "prompt" alone (step-3 prompts); found fields: {keys}')


def sft_prompt(rec: Record) -> str:
    """The prompt text of a seed-format record (rule in the module docstring)."""
    instruction = require_str(rec, "instruction")
    inp = require_str(rec, "input", optional=True, allow_empty=True) or ""
    if inp:
        prompt = instruction.replace("{input}", inp) if "{input}" in instruction else instruction + inp
    else:
        prompt = instruction
    history = rec.data.get("history") or []
    if not isinstance(history, list) or not all(
        isinstance(t, (list, tuple)) and len(t) == 2 and all(isinstance(x, str) for x in t) for t in history
    ):
        raise DataError(f'{rec.where}: field "history" must be a list of [query, response] string pairs')
    return "".join(q + r + "\n" for q, r in history) + prompt


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


def tokenize_sft(records: list[Record], tokenizer, max_len: int, completion: bool = False
                 ) -> tuple[list[Example], LengthStats]:
    """The seed format, or (`completion`) TRL's prompt-completion rows of strings."""
    prompts = [require_str(r, "prompt") for r in records] if completion else [sft_prompt(r) for r in records]
    answers = encode_responses(tokenizer, [require_str(r, "completion" if completion else "output") for r in records])
    return prompt_answer_examples(encode_prompts(tokenizer, prompts), answers, max_len, special_prefix(tokenizer))


def _check_messages(rec: Record, field: str = "messages", need_answer: bool = True) -> list[dict]:
    if field not in rec.data:
        raise DataError(f'{rec.where}: field "{field}" is missing')
    msgs = rec.data[field]
    if not isinstance(msgs, list) or not msgs:
        raise DataError(f'{rec.where}: field "{field}" must be a non-empty list')
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise DataError(f'{rec.where}: {field}[{i}] must be an object with a string "content"')
        if m.get("role") not in ("system", "user", "assistant"):
            raise DataError(f'{rec.where}: {field}[{i}].role must be system, user or assistant, '
                            f'got {m.get("role")!r}')
    if need_answer and not any(m["role"] == "assistant" for m in msgs):
        raise DataError(f'{rec.where}: {field} has no assistant turn (nothing to learn)')
    return msgs


def _conversation(rec: Record) -> tuple[list[dict], int]:
    """(messages, index of the first trained message): `messages`, or TRL's conversational
    prompt-completion (the prompt's turns are context)."""
    if "messages" in rec.data:
        return _check_messages(rec), 0
    head = _check_messages(rec, "prompt", need_answer=False)
    return head + _check_messages(rec, "completion"), len(head)


def chat_segments(tokenizer, messages: list[dict], first_answer: int = 0) -> list[tuple[str, bool]]:
    """Split the rendered conversation into (text, is_assistant_answer) pieces; assistant turns
    before message `first_answer` are context.

    Each assistant answer is what the template adds after the generation prompt, so the
    context before it ends exactly where generation would start.
    """
    def render(msgs, gen):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

    segments, done = [], ""
    for i, m in enumerate(messages):
        if m["role"] == "assistant" and i >= first_answer:
            before = render(messages[:i], True) if i else render([], True)
            after = render(messages[: i + 1], False)
            if not before.startswith(done) or not after.startswith(before):
                raise ValueError("the tokenizer's chat template does not render turns incrementally")
            segments += [(before[len(done):], False), (after[len(before):], True)]
            done = after
    return segments


def tokenize_chat(records: list[Record], tokenizer, max_len: int) -> tuple[list[Example], LengthStats]:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"{records[0].where}: chat data needs a tokenizer with a chat template")
    prefix = special_prefix(tokenizer)
    out, stats = [], LengthStats()
    for rec in records:
        msgs, first_answer = _conversation(rec)
        try:
            segs = chat_segments(tokenizer, msgs, first_answer)
        except ValueError as e:
            raise DataError(f"{rec.where}: {e}")
        ids: list[int] = []
        labels: list[int] = []
        for text, is_answer in segs:
            # Special tokens come from the template text itself, as in apply_chat_template.
            piece = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += piece
            labels += piece if is_answer else [IGNORE_INDEX] * len(piece)
        first = next(i for i, lab in enumerate(labels) if lab != IGNORE_INDEX)
        fitted = fit_row(ids[:first], [ids[first:]], max_len, prefix)
        stats.count_fit(ids[:first], [ids[first:]], fitted)
        if fitted is not None:
            fp, (fa,) = fitted
            out.append(Example(fp + fa, [IGNORE_INDEX] * len(fp) + labels[first:first + len(fa)]))
    return out, stats


def tokenize_text(records: list[Record], tokenizer, max_len: int) -> list[Example]:
    """Continued pretraining: documents joined with EOS, packed into blocks of max_len.

    Lines of a plain `.txt` are one document (the file), joined by newlines; `{"text"}`
    records are one document each. The last partial block is kept (it is padded in batches).
    """
    docs = [require_str(r, "text") for r in records if not r.plain_line]
    plain = [r.data["text"] for r in records if r.plain_line]
    if plain:
        docs.append("\n".join(plain))
    stream: list[int] = []
    for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        stream += ids + [tokenizer.eos_token_id]
    blocks = [stream[i:i + max_len] for i in range(0, len(stream), max_len)]
    return [Example(b, list(b)) for b in blocks if len(b) > 1]


def tokenize_records(records: list[Record], tokenizer, max_len: int,
                     fmt: str = "auto") -> tuple[list[Example], LengthStats]:
    """Records of one file/split -> (examples, what the length rule did to its rows).

    A file holds one format; a record of another format is an error naming its line, and so
    is a file whose every row is dropped as too long. Text is packed, never cut: all its
    records count as kept.
    """
    if not records:
        return [], LengthStats()
    kind = detect_format(records[0]) if fmt == "auto" else fmt
    for r in records:
        k = detect_format(r) if fmt == "auto" else fmt
        if k != kind:
            raise DataError(f"{r.where}: record is {k} format but earlier records are {kind}")
    if kind == "text":
        return tokenize_text(records, tokenizer, max_len), LengthStats(kept=len(records))
    if kind == "prompt":
        raise DataError(f"{records[0].where}: prompt-only rows have no answer to train on (step 3 reads them as "
                        f"prompts)")
    if kind == "completion" and isinstance(records[0].data.get("prompt"), list):
        kind = "chat"   # conversational prompt-completion: chat with the prompt's turns as context
    if kind in ("sft", "completion"):
        out = tokenize_sft(records, tokenizer, max_len, completion=kind == "completion")
    elif kind == "chat":
        out = tokenize_chat(records, tokenizer, max_len)
    else:
        # preference.py builds on this module, so it is imported only when needed
        from .preference import tokenize_chosen
        out = tokenize_chosen(records, tokenizer, max_len)
    require_usable(records[0].source, out[1], f"--max_seq_len {max_len}")
    return out
