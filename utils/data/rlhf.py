"""Step 3 prompts: the SFT format, where `output` is the reference answer and `input` the source."""
from __future__ import annotations

from dataclasses import dataclass

from .errors import DataError
from .readers import Record, require_str
from .sft import Example, encode_prompts, encode_responses, sft_prompt, IGNORE_INDEX


@dataclass
class PromptExample:
    prompt_ids: list[int]     # tokenized exactly as in SFT (and as generation sees them)
    prompt: str
    reference: str            # the record's `output` ("" when absent)
    source: str               # the record's `input`, else the prompt (COMET's `src`)
    sft: Example | None       # prompt + reference answer, for the extra SFT loss


def tokenize_prompts(records: list[Record], tokenizer, max_prompt_len: int, max_len: int,
                     need_reference: bool) -> list[PromptExample]:
    for r in records:
        if "messages" in r.data or ("instruction" not in r.data and "text" in r.data):
            raise DataError(f'{r.where}: step 3 prompts use the SFT format ("instruction", "input", "output")')
    if not records:
        return []
    prompts = [sft_prompt(r) for r in records]
    refs = [require_str(r, "output", optional=not need_reference, allow_empty=not need_reference) or ""
            for r in records]
    p_ids = encode_prompts(tokenizer, prompts)
    r_ids = encode_responses(tokenizer, refs)
    out = []
    for rec, p, text, ref, rid in zip(records, p_ids, prompts, refs, r_ids):
        if len(p) > max_prompt_len:
            raise DataError(f"{rec.where}: prompt is {len(p)} tokens, longer than --max_prompt_seq_len {max_prompt_len}")
        sft = None
        if ref:
            full = (p + rid)[:max_len]
            sft = Example(full, ([IGNORE_INDEX] * len(p) + rid)[:max_len])
        source = require_str(rec, "input", optional=True, allow_empty=True) or text
        out.append(PromptExample(p, text, ref, source, sft))
    return out
