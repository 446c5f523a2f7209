"""Chat data (`messages`, or TRL's conversational prompt-completion) -> token ids with the loss on
the assistant answers, rendered by the tokenizer's chat template."""
from __future__ import annotations

from ..errors import DataError
from .encoding import IGNORE_INDEX, Example, LengthStats, fit_row, special_prefix
from .readers import Record


def check_messages(rec: Record, field: str = "messages", need_answer: bool = True) -> list[dict]:
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


def conversation(rec: Record) -> tuple[list[dict], int]:
    """(messages, index of the first trained message): `messages`, or TRL's conversational
    prompt-completion (the prompt's turns are context)."""
    if "messages" in rec.data:
        return check_messages(rec), 0
    head = check_messages(rec, "prompt", need_answer=False)
    return head + check_messages(rec, "completion"), len(head)


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
        msgs, first_answer = conversation(rec)
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
