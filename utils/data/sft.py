"""Turn SFT, chat and plain-text records into token ids with loss labels, within a length limit
(the rule and the primitives every format shares are in encoding.py, chat in chat.py).

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
"""
from __future__ import annotations

from ..errors import DataError
from .chat import tokenize_chat
from .encoding import (Example, LengthStats, encode_prompts, encode_responses, prompt_answer_examples, require_usable,
                       special_prefix)
from .preference import tokenize_chosen
from .readers import Record, require_str

SFT_KEYS = ("instruction", "output")


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


def tokenize_sft(records: list[Record], tokenizer, max_len: int, completion: bool = False
                 ) -> tuple[list[Example], LengthStats]:
    """The seed format, or (`completion`) TRL's prompt-completion rows of strings."""
    prompts = [require_str(r, "prompt") for r in records] if completion else [sft_prompt(r) for r in records]
    answers = encode_responses(tokenizer, [require_str(r, "completion" if completion else "output") for r in records])
    return prompt_answer_examples(encode_prompts(tokenizer, prompts), answers, max_len, special_prefix(tokenizer))


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
        out = tokenize_chosen(records, tokenizer, max_len)
    require_usable(records[0].source, out[1], f"--max_seq_len {max_len}")
    return out
