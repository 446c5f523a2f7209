"""Batched generation with left-padded prompts; answers cut at the first stop id.

Step 3 samples through `sample`, from one `SamplingSpec` built from its flags and nothing else:
`generate` would otherwise start from the checkpoint's own `generation_config` (Qwen2.5-Instruct
ships repetition_penalty 1.05; others set no_repeat_ngram_size, min_new_tokens, suppress_tokens)
and sample from a distribution the teacher-forced log-probs never see. Per-row temperature,
top-k and top-p run as our own logits processors, the last of which records each sampled token's
log-prob under the distribution it was drawn from (and, asked, a first one what ESRL's confidence
needs of the model's own distribution at each step).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, TopKLogitsWarper, TopPLogitsWarper

from .data.collate import pad_right
from .data.encoding import encode_prompts
from .losses import log_collision


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, T] ids, [B, T] mask), padded on the left so every prompt ends at column T-1."""
    ids = pad_right([s[::-1] for s in seqs], pad_id).flip(1)
    mask = pad_right([[1] * len(s) for s in seqs], 0).flip(1)
    return ids, mask


def is_zero3(module: torch.nn.Module) -> bool:
    """Whether DeepSpeed ZeRO-3 partitions `module`'s parameters."""
    p = next(iter(module.parameters()), None)
    return p is not None and hasattr(p, "ds_id")


@contextmanager
def generation_model(engine, *, gather: bool = True, world_size: int = 1):
    """(model to call `generate` on, synced_gpus) for a DeepSpeed engine, for one `generate` call.

    Under ZeRO-3 every forward gathers each layer's shards and frees them again, once per decoding
    step: on an H100 at one process the actor decoded at 190 ms per token against 34 at ZeRO-2, and
    at several processes every rank must keep stepping until all are done (synced_gpus). With
    `gather`, the whole model is gathered once for the call and ZeRO's hooks are lifted meanwhile
    (DeepSpeed's `unwrap_model_for_generation`; TRL's `ds3_gather_for_generation`), so decoding runs
    on plain weights and ranks stop independently, at the cost of one full copy of the weights per
    device while generating. DeepSpeed's hybrid engine generates through its own `generate`."""
    if type(engine).__name__ == "DeepSpeedHybridEngine":
        yield engine, world_size > 1 and is_zero3(engine.module)
        return
    module = getattr(engine, "module", engine)
    if not is_zero3(module):
        yield module, False
        return
    if not gather or getattr(engine, "optimizer", None) is None:
        yield module, world_size > 1
        return
    from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation

    with unwrap_model_for_generation(engine):
        yield module, False


def cut_at_eos(tokens: torch.Tensor, eos_ids: int | tuple[int, ...], keep: bool = False) -> list[list[int]]:
    """[B, N] generated ids -> per row the ids before the first EOS (any of `eos_ids`), the EOS itself
    included when `keep`."""
    stops = {eos_ids} if isinstance(eos_ids, int) else set(eos_ids)
    out = []
    for row in tokens.tolist():
        end = next((i for i, t in enumerate(row) if t in stops), None)
        out.append(row if end is None else row[:end + keep])
    return out


@torch.no_grad()
def generate_texts(model, tokenizer, prompt_ids: list[list[int]], *, batch_size: int, max_new_tokens: int, device,
                   **generate_kwargs) -> list[str]:
    """Decoded answers of `model` (a plain module) to token-id prompts, `batch_size` at a time: left-padded,
    transformers' own `generate` (its sampling and the model's generation_config, with
    `generate_kwargs` on top), each answer cut at the tokenizer's EOS. For evaluation and
    predictions; step 3 draws with `sample`."""
    answers: list[str] = []
    for i in range(0, len(prompt_ids), batch_size):
        ids, mask = left_pad(prompt_ids[i:i + batch_size], tokenizer.pad_token_id)
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                             **generate_kwargs)
        for seq in cut_at_eos(out[:, ids.shape[1]:], tokenizer.eos_token_id):
            answers.append(tokenizer.decode(seq, skip_special_tokens=True))
    return answers


def generate_answers(model, tokenizer, prompts: list[str], *, max_new_tokens: int = 64, batch_size: int = 32,
                     do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                     device: torch.device | None = None) -> list[str]:
    """Decoded answers for `prompts` (tokenized exactly as in training)."""
    was_training = model.training
    model.eval()
    answers = generate_texts(model, tokenizer, encode_prompts(tokenizer, prompts), batch_size=batch_size,
                             max_new_tokens=max_new_tokens, device=device or next(model.parameters()).device,
                             do_sample=do_sample, temperature=temperature if do_sample else None,
                             top_p=top_p if do_sample else None, top_k=None)
    model.train(was_training)
    return answers


# generation_config fields that change which token is drawn; step 3 ignores every one of them
SAMPLING_FIELDS = ("do_sample", "temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff",
                   "eta_cutoff", "repetition_penalty", "encoder_repetition_penalty", "no_repeat_ngram_size",
                   "encoder_no_repeat_ngram_size", "bad_words_ids", "min_length", "min_new_tokens",
                   "suppress_tokens", "begin_suppress_tokens", "sequence_bias", "forced_bos_token_id",
                   "forced_eos_token_id", "exponential_decay_length_penalty", "renormalize_logits",
                   "guidance_scale", "max_length", "max_new_tokens")


def ignored_generation_settings(generation_config) -> dict:
    """The sampling-relevant fields a model's `generation_config` sets away from transformers'
    defaults: what `sample` leaves out (to name once at start-up)."""
    if generation_config is None:
        return {}
    default = GenerationConfig()
    return {k: getattr(generation_config, k) for k in SAMPLING_FIELDS
            if getattr(generation_config, k, None) != getattr(default, k, None)}


@dataclass(frozen=True)
class SamplingSpec:
    """How step 3 draws answers, from its flags alone. `temperature`, `top_k` (0: off) and `top_p`
    (1: off) apply to sampling; `greedy` takes the argmax instead."""
    max_new_tokens: int
    stop_ids: tuple[int, ...]
    pad_id: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False

    def generation_config(self, cache_implementation: str | None = None) -> GenerationConfig:
        """A fresh config with no sampling processor of transformers' own (ours run instead)."""
        cfg = GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=not self.greedy, temperature=1.0,
                               top_k=None, top_p=1.0, pad_token_id=self.pad_id, use_cache=True,
                               eos_token_id=list(self.stop_ids) if len(self.stop_ids) > 1 else self.stop_ids[0])
        if cache_implementation:
            cfg.cache_implementation = cache_implementation
        return cfg


class RowTemperature(LogitsProcessor):
    """Divide each row's next-token logits by its own temperature. temps: [B]."""

    def __init__(self, temps: torch.Tensor):
        self.temps = temps

    def __call__(self, input_ids, scores):
        return scores / self.temps.to(scores.device, scores.dtype)[:, None]


class SampledLogprobs(LogitsProcessor):
    """Records log p(token) of each drawn token under the distribution it was drawn from (the
    scores after every other processor), holding one step's [B, V] log-softmax at a time: the token
    drawn from step t's scores is the last of the ids step t+1 sees, and the final one is read from
    the finished sequences (`result`)."""

    def __init__(self):
        self.pending: torch.Tensor | None = None   # [B, V] log-softmax of the latest step
        self.drawn: list[torch.Tensor] = []        # [B] per generated token but the latest

    def __call__(self, input_ids, scores):
        if self.pending is not None:
            self.drawn.append(self.pending.gather(1, input_ids[:, -1:]).squeeze(1))
        self.pending = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def result(self, new_tokens: torch.Tensor) -> torch.Tensor:
        """[B, N] log-probs of the N generated tokens `new_tokens` [B, N]."""
        steps = list(self.drawn)
        if len(steps) < new_tokens.shape[1]:
            steps.append(self.pending.gather(1, new_tokens[:, len(steps):len(steps) + 1]).squeeze(1))
        return torch.stack(steps, 1)


class StepCollision(LogitsProcessor):
    """Records `log_collision` of each step's scores as they come from the model (temperature 1,
    before any other processor): [B] per generated token, no [B, V] kept."""

    def __init__(self):
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids, scores):
        self.steps.append(log_collision(scores))
        return scores


@dataclass
class Drawn:
    """What `sample` returns: prompts left-padded to width P, answers right-padded, each cut after
    its first stop id (kept)."""
    sequences: torch.Tensor       # [B, S] long, S = P + N
    attention_mask: torch.Tensor  # [B, S] long
    answers: list[list[int]]      # answer ids per row, the stop id kept when generated
    logprobs: torch.Tensor        # [B, N] each answer token's log-prob as drawn (0 past the answer)
    prompt_len: int               # P
    log_collision: torch.Tensor | None = None   # [B, N] log sum_v p(v)^2 of the model's own next-token
                                                #   distribution at each answer token (0 past it), if asked


@torch.no_grad()
def sample(model, prompt_ids: list[list[int]], spec: SamplingSpec, temps: torch.Tensor | None = None, *,
           device, synced_gpus: bool = False, cache_implementation: str | None = None,
           collision: bool = False) -> Drawn:
    """Draw one answer per prompt with `spec` (temps: [B] per-row temperatures; default
    spec.temperature): KV cache, no autograd graph, nothing from the model's generation_config.
    collision: also record `log_collision` of the model's distribution at each answer token."""
    ids, mask = left_pad(prompt_ids, spec.pad_id)
    ids, mask = ids.to(device), mask.to(device)
    B, P = ids.shape
    recorder, collisions = SampledLogprobs(), StepCollision()
    processors = LogitsProcessorList([collisions] if collision else [])
    if not spec.greedy:
        if temps is None:
            temps = torch.full((B,), float(spec.temperature))
        processors.append(RowTemperature(temps))
        if spec.top_k:
            processors.append(TopKLogitsWarper(spec.top_k))
        if spec.top_p < 1.0:
            processors.append(TopPLogitsWarper(spec.top_p))
    processors.append(recorder)
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=spec.generation_config(
        cache_implementation), use_model_defaults=False, logits_processor=processors, synced_gpus=synced_gpus)
    new = out[:, P:]
    answers = cut_at_eos(new, spec.stop_ids, keep=True)
    N = max(1, max(len(a) for a in answers))   # generate makes >= 1 token, so N columns of new exist
    amask = pad_right([[1] * len(a) for a in answers], 0, N).to(device)
    seq = torch.cat([ids, pad_right(answers, spec.pad_id, N).to(device)], 1)
    lc = torch.stack(collisions.steps, 1)[:, :N] * amask if collision else None
    return Drawn(seq, torch.cat([mask, amask], 1), answers, recorder.result(new)[:, :N] * amask, P, lc)
