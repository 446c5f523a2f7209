"""Periodic predictions during training: the current model's answers to a fixed prompt file.

With `--predict_file F --predict_steps N`, every N optimizer steps (steps 1 and DPO; PPO rounds
in step 3) the model answers every prompt of F, and rank 0 writes
`<output_dir>/predicts/epoch_{epoch}_step_{step}.txt` (epoch counted from 0, step from 1, as
in the extension fork that introduced these flags).

Input, one prompt per line of F:
- the SFT seed format `{"instruction", "input", "output", "history"}` (JSON lines, or any file
  or folder `read_dataset` reads; a folder's test split when it has one, else its train split);
  the prompt is `sft_prompt(record)` and the ids are `encode_prompts` of it, exactly as in
  training; `output`, when present, is written as the reference;
- preference rows `{"prompt", "chosen", "rejected"}` (as step 3 reads them): `prompt` as
  written, `chosen` as the reference; TRL's `{"prompt", "completion"}` rows likewise;
- conversational rows (chat pairs, TRL's conversational prompt-completion; as step 3 reads
  them): the chat template's rendering of the turns before the answer, with the generation
  prompt, and the ids of that text; the chosen / completion answer as the reference;
- the fork's plain-text lines `prompt ||| reference` (the reference part is optional); the line
  is stripped and the text before " ||| " is the prompt as written: escapes such as a literal
  `\\n` are not expanded (the fork fed them to the model as they are).
A prompt longer than `max_prompt_len` tokens is cut as step 3 cuts it (`fit_prompt`: from the
left, the tokenizer's special prefix kept in front); the output still shows the whole prompt.

Output: one JSON object per line, in the file's order:
`{"prompt": ..., "answer": ..., "reference": ...}` (`reference` only when the file gives one).
The answer is cut at the first EOS and decoded without special tokens.

Sampling matches the fork (temperature 0.75, top-p 0.95, top-k 50, one answer per prompt);
`greedy=True` (`--predict_greedy`) decodes with argmax instead. Each call seeds sampling with a
fixed seed (`seed + rank`) and restores the torch/CUDA (and Python/NumPy) RNG states afterwards,
so training with predictions is bit-identical to training without. Prompts are split evenly over
ranks (the last rank's share padded with repeats that are not written), so every rank runs the
same number of generate calls; under ZeRO-3 with several ranks `synced_gpus=True` keeps their
collective forwards matched.
"""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from . import distributed as dist
from .data.encoding import encode_prompts, fit_prompt, special_prefix
from .data.readers import read_dataset, require_str
from .data.rlhf import conversation_texts, is_conversational
from .data.sft import sft_prompt
from .errors import ConfigError, DataError
from .generation import generate_texts, generation_model
from .seeding import seeded

FLAG = "--predict_file"
SEPARATOR = " ||| "  # the fork's "prompt ||| reference" lines
# The fork's sampling settings (top-k: transformers' default, which the fork left in place).
TEMPERATURE, TOP_P, TOP_K = 0.75, 0.95, 50


# -- flags -------------------------------------------------------------------------------------
@dataclass
class PredictArgs:
    """The prediction flags; a config dataclass inherits them and calls `check_predict()`."""
    predict_file: Optional[str] = field(default=None, metadata={
        "help": "Prompts whose answers are written every --predict_steps steps to "
                "<output_dir>/predicts/epoch_{epoch}_step_{step}.txt (SFT-format JSON lines, preference "
                "rows with a text prompt, or the fork's 'prompt ||| reference' text lines)."})
    predict_steps: int = field(default=0, metadata={
        "help": "Write predictions for --predict_file every N optimizer steps (PPO rounds in step 3); "
                "0 or -1: off."})
    predict_batch_size: int = field(default=16, metadata={"help": "Prompts per generate call per process."})
    predict_max_new_tokens: int = field(default=512, metadata={"help": "Maximum new tokens per predicted answer."})
    predict_greedy: bool = field(default=False, metadata={
        "help": "Greedy predictions (default: sample with temperature 0.75, top-p 0.95, top-k 50)."})

    def check_predict(self) -> None:
        if self.predict_steps < -1:
            raise ConfigError(f"--predict_steps must be >= 0 (or -1: off), got {self.predict_steps}")
        if self.predict_steps > 0 and not self.predict_file:
            raise ConfigError("--predict_steps needs --predict_file")
        for name in ("predict_batch_size", "predict_max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}")


def predict_enabled(cfg) -> bool:
    return bool(getattr(cfg, "predict_file", None)) and getattr(cfg, "predict_steps", 0) > 0


def predict_path(output_dir: str | os.PathLike, epoch: int, step: int) -> Path:
    """`<output_dir>/predicts/epoch_{epoch}_step_{step}.txt` (the fork's names)."""
    return Path(output_dir) / "predicts" / f"epoch_{epoch}_step_{step}.txt"


# -- reading -----------------------------------------------------------------------------------
@dataclass
class PredictPrompt:
    prompt: str                # the prompt text, as built for training
    prompt_ids: list[int]      # its ids as generation sees them (left-truncated to max_prompt_len)
    reference: Optional[str]   # the file's `output` / text after " ||| ", None when absent
    where: str                 # "file:line", for messages


def _prompt_and_reference(rec) -> tuple[str, Optional[str]]:
    d = rec.data
    if rec.plain_line:  # the fork's "prompt ||| reference" line (stripped, as the fork does)
        parts = d["text"].strip().split(SEPARATOR)
        if not parts[0].strip():
            raise DataError(f"{rec.where}: empty prompt")
        return parts[0], parts[1] if len(parts) > 1 else None
    if "chosen" in d or "rejected" in d:  # a preference pair: its prompt, `chosen` as the reference
        chosen = d.get("chosen")
        return require_str(rec, "prompt"), chosen if isinstance(chosen, str) else None
    if "instruction" not in d and isinstance(d.get("prompt"), str):   # TRL's prompt(-completion) rows
        completion = d.get("completion")
        return require_str(rec, "prompt"), completion if isinstance(completion, str) else None
    if "instruction" not in d:
        found = ", ".join(sorted(d)) or "none"
        raise DataError(f'{rec.where}: predictions need the SFT format ("instruction", "input", "output"), '
                        f'preference pairs ("prompt", "chosen", "rejected"; text or chat turns), TRL\'s "prompt" '
                        f'(with "completion" as the reference; text or chat turns), or "prompt ||| reference" text '
                        f'lines; found fields: {found}')
    ref = d.get("output")
    if ref is not None and not isinstance(ref, str):
        raise DataError(f'{rec.where}: field "output" must be a string, got {type(ref).__name__}')
    return sft_prompt(rec), ref


def _prompt(rec, tokenizer) -> tuple[str, Optional[str], list[int]]:
    """(prompt text, reference or None, prompt ids) of one row, read as step 3 reads it: a
    conversational row (chat pairs, TRL's conversational prompt-completion) rendered by the chat
    template, its ids those of the rendered text; any other row tokenized as in training."""
    if rec.plain_line or not is_conversational(rec):
        text, ref = _prompt_and_reference(rec)
        return text, ref, encode_prompts(tokenizer, [text])[0]
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"{rec.where}: conversational prompts need a tokenizer with a chat template")
    text, _, ref, _, _ = conversation_texts(rec, tokenizer, need_reference=False)
    return text, ref or None, tokenizer(text, add_special_tokens=False)["input_ids"]


def load_predict_prompts(path: str, tokenizer, max_prompt_len: Optional[int] = None,
                         flag: str = FLAG) -> list[PredictPrompt]:
    """Read and tokenize the prompt file; any problem is one-line ConfigError naming `flag` and
    the file. Call it before training starts (every rank may call it)."""

    if not path:
        raise ConfigError(f"{flag}: no file given")
    try:
        raw = read_dataset(str(path))
        records = raw.test or raw.train
        if not records:
            raise DataError(f"{path}: no prompts")
        rows = [_prompt(r, tokenizer) for r in records]
    except DataError as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{flag} {msg}" if msg.startswith(str(path)) else f"{flag} {path}: {msg}") from None
    prefix = special_prefix(tokenizer)
    out, truncated = [], 0
    for rec, (text, ref, p) in zip(records, rows):
        if not p:
            raise ConfigError(f"{flag} {rec.where}: prompt has no tokens")
        if max_prompt_len and len(p) > max_prompt_len:
            # step 3's rule: cut from the left, keeping the special prefix (BOS) in front
            cut = fit_prompt(p, max_prompt_len, prefix)
            if cut is None:
                raise ConfigError(f"{flag} {rec.where}: a prompt limit of {max_prompt_len} tokens leaves "
                                    f"nothing but the tokenizer's special prefix")
            p, truncated = cut, truncated + 1
        out.append(PredictPrompt(text, p, ref, rec.where))
    note = f" ({truncated} truncated from the left to {max_prompt_len} tokens)" if truncated else ""
    dist.print_rank0(f"[predict] {len(out)} prompts from {path}{note}")
    return out


# -- generating --------------------------------------------------------------------------------
@contextmanager
def _eval_mode(model):
    """Eval mode for the block; every submodule's train/eval flag is restored after."""
    flags = [(m, m.training) for m in model.modules()]
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()  # an engine's own train() (the hybrid engine switches kernels back)
        for m, t in flags:
            m.training = t


def _device(model, module):
    for obj in (model, module):
        d = getattr(obj, "device", None)
        if isinstance(d, torch.device):
            return d
    return next(module.parameters()).device


def _generate(model, tokenizer, prompt_ids: list[list[int]], *, batch_size: int, max_new_tokens: int,
              greedy: bool, temperature: float, top_p: float, top_k: int, repetition_penalty: float,
              device) -> list[str]:
    sampling = ({"temperature": None, "top_p": None, "top_k": None} if greedy else
                {"temperature": temperature, "top_p": top_p, "top_k": top_k or None})
    # ZeRO-3 weights stay partitioned: steps 1-2 may use ZeRO-3 because the whole model does not fit
    with torch.no_grad(), generation_model(model, gather=False, world_size=dist.world_size()) as (gen, synced):
        return generate_texts(gen, tokenizer, prompt_ids, batch_size=batch_size, max_new_tokens=max_new_tokens,
                              device=device or _device(model, gen), do_sample=not greedy,
                              repetition_penalty=repetition_penalty, num_return_sequences=1, synced_gpus=synced,
                              use_cache=True, **sampling)


def _write_atomic(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_predictions(model, tokenizer, prompts: list[PredictPrompt], out_path: str | os.PathLike,
                      batch_size: int, max_new_tokens: int, *, greedy: bool = False,
                      temperature: float = TEMPERATURE, top_p: float = TOP_P, top_k: int = TOP_K,
                      repetition_penalty: float = 1.0, seed: int = 1234, device=None) -> list[dict]:
    """Answer `prompts` with `model` (a DeepSpeed engine or a plain module) and write them.

    Collective: every rank must call it with the same prompts. Rank 0 writes `out_path`
    (folder created there, temp file + os.replace). Returns the written rows on every rank.
    Training state is left as found: train/eval flags, RNG states, no gradients.
    """

    t0 = time.perf_counter()
    rank, n = dist.rank(), len(prompts)
    mine, share = dist.share(n)
    # a short share is padded with prompts from the start, generated (to keep ranks in step), not kept
    mine += [pos % max(n, 1) for pos in range(max(n, rank * share) - n, (rank + 1) * share - n)]
    answers: list[str] = []
    if mine:
        with seeded(seed + rank), _eval_mode(model):
            answers = _generate(model, tokenizer, [prompts[i].prompt_ids for i in mine], batch_size=batch_size,
                                max_new_tokens=max_new_tokens, greedy=greedy, temperature=temperature,
                                top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty, device=device)
    kept = [(i, a) for pos, (i, a) in enumerate(zip(mine, answers), start=rank * share) if pos < n]
    by_index = {i: a for part in dist.all_gather_object(kept) for i, a in part}
    rows = []
    for i, p in enumerate(prompts):
        row = {"prompt": p.prompt, "answer": by_index[i]}
        if p.reference is not None:
            row["reference"] = p.reference
        rows.append(row)
    if rank == 0:
        _write_atomic(Path(out_path), rows)
        dist.print_rank0(f"[predict] {n} answers -> {out_path} ({time.perf_counter() - t0:.1f} s)")
    return rows


# -- hook for training loops -------------------------------------------------------------------
class PredictHook:
    """Loads the prompts once (errors surface before training); call it after every optimizer
    step: `hook(engine, epoch, step)` writes predictions when `step % --predict_steps == 0`."""

    def __init__(self, cfg, tokenizer, max_prompt_len: Optional[int] = None):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.prompts = load_predict_prompts(cfg.predict_file, tokenizer, max_prompt_len)

    def due(self, step: int) -> bool:
        return self.cfg.predict_steps > 0 and step > 0 and step % self.cfg.predict_steps == 0

    def __call__(self, model, epoch: int, step: int) -> Optional[list[dict]]:
        if not self.due(step):
            return None
        cfg = self.cfg
        return write_predictions(model, self.tokenizer, self.prompts, predict_path(cfg.output_dir, epoch, step),
                                 cfg.predict_batch_size, cfg.predict_max_new_tokens,
                                 greedy=getattr(cfg, "predict_greedy", False), seed=getattr(cfg, "seed", 1234))


def make_predict_hook(cfg, tokenizer, max_prompt_len: Optional[int] = None) -> Optional[PredictHook]:
    """A PredictHook when --predict_file and --predict_steps > 0 are set, else None."""
    return PredictHook(cfg, tokenizer, max_prompt_len) if predict_enabled(cfg) else None
