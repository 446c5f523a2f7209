"""Turn SFT, chat and plain-text records into token ids with loss labels.

Prompt and response are tokenized separately and their ids concatenated, so the prompt's
ids in training are exactly its ids at generation time (a joint tokenization lets a
trailing space of "Assistant: " merge into the first answer token).

Prompt rule for the seed format `{"instruction", "input", "output", "history"}`:
- `history` ([[query, response], ...]) comes first, each turn as `query + response + "\\n"`;
  it is context only (no loss).
- then `instruction`; a non-empty `input` replaces the placeholder `{input}` in the
  instruction when there is one, and is appended to the instruction otherwise.
- the loss covers `output` + EOS.
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


def detect_format(rec: Record) -> str:
    d = rec.data
    if "messages" in d:
        return "chat"
    if "instruction" in d or "output" in d:
        return "sft"
    if "text" in d:
        return "text"
    keys = ", ".join(sorted(d)) or "none"
    raise DataError(f'{rec.where}: cannot tell the format: expected "instruction"/"output" (SFT), '
                    f'"messages" (chat) or "text" (plain text); found fields: {keys}')


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


class _Truncations:
    def __init__(self):
        self.count = 0


def _join(prompt: list[int], response: list[int], rec: Record, max_len: int, trunc: _Truncations) -> Example:
    if len(prompt) >= max_len:
        raise DataError(f"{rec.where}: prompt is {len(prompt)} tokens, not shorter than "
                        f"--max_seq_len {max_len}")
    if len(prompt) + len(response) > max_len:
        response = response[: max_len - len(prompt)]
        trunc.count += 1
    return Example(prompt + response, [IGNORE_INDEX] * len(prompt) + list(response))


def tokenize_sft(records: list[Record], tokenizer, max_len: int, trunc: _Truncations) -> list[Example]:
    prompts = [sft_prompt(r) for r in records]
    outputs = [require_str(r, "output") for r in records]
    p_ids = encode_prompts(tokenizer, prompts)
    r_ids = encode_responses(tokenizer, outputs)
    return [_join(p, r, rec, max_len, trunc) for p, r, rec in zip(p_ids, r_ids, records)]


def _check_messages(rec: Record) -> list[dict]:
    msgs = rec.data["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise DataError(f'{rec.where}: field "messages" must be a non-empty list')
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise DataError(f'{rec.where}: messages[{i}] must be an object with a string "content"')
        if m.get("role") not in ("system", "user", "assistant"):
            raise DataError(f'{rec.where}: messages[{i}].role must be system, user or assistant, '
                            f'got {m.get("role")!r}')
    if not any(m["role"] == "assistant" for m in msgs):
        raise DataError(f'{rec.where}: messages has no assistant turn (nothing to learn)')
    return msgs


def chat_segments(tokenizer, messages: list[dict]) -> list[tuple[str, bool]]:
    """Split the rendered conversation into (text, is_assistant_answer) pieces.

    Each assistant answer is what the template adds after the generation prompt, so the
    context before it ends exactly where generation would start.
    """
    def render(msgs, gen):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

    segments, done = [], ""
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            before = render(messages[:i], True) if i else render([], True)
            after = render(messages[: i + 1], False)
            if not before.startswith(done) or not after.startswith(before):
                raise ValueError("the tokenizer's chat template does not render turns incrementally")
            segments += [(before[len(done):], False), (after[len(before):], True)]
            done = after
    return segments


def tokenize_chat(records: list[Record], tokenizer, max_len: int, trunc: _Truncations) -> list[Example]:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"{records[0].where}: chat data needs a tokenizer with a chat template")
    out = []
    for rec in records:
        msgs = _check_messages(rec)
        try:
            segs = chat_segments(tokenizer, msgs)
        except ValueError as e:
            raise DataError(f"{rec.where}: {e}")
        ids: list[int] = []
        labels: list[int] = []
        for text, is_answer in segs:
            # Special tokens come from the template text itself, as in apply_chat_template.
            piece = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += piece
            labels += piece if is_answer else [IGNORE_INDEX] * len(piece)
        if len(ids) > max_len:
            first_answer = next(i for i, lab in enumerate(labels) if lab != IGNORE_INDEX)
            if first_answer >= max_len:
                raise DataError(f"{rec.where}: context before the first answer is {first_answer} tokens, "
                                f"not shorter than --max_seq_len {max_len}")
            ids, labels = ids[:max_len], labels[:max_len]
            trunc.count += 1
        out.append(Example(ids, labels))
    return out


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


def tokenize_records(records: list[Record], tokenizer, max_len: int, fmt: str = "auto") -> tuple[list[Example], int]:
    """Records of one file/split -> examples. Returns (examples, number of truncated answers).

    A file holds one format; a record of another format is an error naming its line.
    """
    if not records:
        return [], 0
    kind = detect_format(records[0]) if fmt == "auto" else fmt
    for r in records:
        k = detect_format(r) if fmt == "auto" else fmt
        if k != kind:
            raise DataError(f"{r.where}: record is {k} format but earlier records are {kind}")
    trunc = _Truncations()
    if kind == "sft":
        return tokenize_sft(records, tokenizer, max_len, trunc), trunc.count
    if kind == "chat":
        return tokenize_chat(records, tokenizer, max_len, trunc), trunc.count
    return tokenize_text(records, tokenizer, max_len), 0
