"""Reward sources for step 3 behind one interface (`RewardSource`), and their weighted combination.

A source is called with the sampled batch and returns one float per answer:
    source(batch: RewardInputs) -> torch.Tensor [B]
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch

from ..data.collate import pad_right
from ..data.sft import encode_prompts, encode_responses
from ..models import end_scores, token_values


@dataclass
class RewardInputs:
    prompts: list[str]             # prompt texts
    answers: list[str]             # decoded answers (cut at EOS, EOS excluded)
    references: list[str]          # the RLHF file's `output` per prompt ("" when absent)
    sources: list[str]             # raw source text (`input`, else the prompt), e.g. for COMET
    prompt_ids: list[list[int]]    # actor-tokenizer ids of each prompt (no padding)
    answer_ids: list[list[int]]    # actor-tokenizer ids of each answer, EOS included when generated


class RewardSource:
    """What step 3 asks of every reward source. A source that normalises its scores with running
    statistics (COMET) overrides the last three: `raw` holds its last unnormalised scores (for
    logging), `raw_scores` scores without touching the statistics (held-out evaluation), and the
    statistics travel in checkpoints."""
    name: str
    raw: torch.Tensor | None = None

    def __call__(self, batch: RewardInputs) -> torch.Tensor:
        raise NotImplementedError

    def raw_scores(self, batch: RewardInputs) -> torch.Tensor:
        return self(batch)

    def state_dict(self) -> dict | None:
        return None

    def load_state_dict(self, state: dict | None) -> None:
        pass


class RewardModelSource(RewardSource):
    """The trained reward model's score at the answer's last token (its EOS).

    With the actor's tokenizer the sampled ids are scored as they are; with another tokenizer
    prompt and answer are decoded and re-encoded exactly as in reward-model training.
    """
    name = "reward_model"

    def __init__(self, engine, tokenizer, same_tokenizer: bool, batch_size: int, device):
        self.engine, self.tokenizer, self.same = engine, tokenizer, same_tokenizer
        self.batch_size, self.device = batch_size, device

    @torch.no_grad()
    def __call__(self, batch: RewardInputs) -> torch.Tensor:
        if self.same:
            ids = [p + a for p, a in zip(batch.prompt_ids, batch.answer_ids)]
        else:
            p = encode_prompts(self.tokenizer, batch.prompts)
            a = encode_responses(self.tokenizer, batch.answers)
            ids = [x + y for x, y in zip(p, a)]
        out = []
        for i in range(0, len(ids), self.batch_size):
            chunk = ids[i:i + self.batch_size]
            mask = pad_right([[1] * len(x) for x in chunk], 0).to(self.device)
            x = pad_right(chunk, self.tokenizer.pad_token_id).to(self.device)
            out.append(end_scores(token_values(self.engine, x, mask), mask))
        return torch.cat(out).float()


class RuleSource(RewardSource):
    """A Python callable named `module:function`, called as
    fn(prompts=[...], answers=[...], references=[...], sources=[...]) -> list of floats."""

    def __init__(self, spec: str):
        module, _, fn = spec.partition(":")
        if not module or not fn:
            raise ValueError(f"--reward_functions {spec!r}: expected module:function")
        try:
            self.fn = getattr(importlib.import_module(module), fn)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"--reward_functions {spec!r}: {e}")
        self.name = fn

    def __call__(self, batch: RewardInputs) -> torch.Tensor:
        scores = self.fn(prompts=batch.prompts, answers=batch.answers, references=batch.references,
                         sources=batch.sources)
        if len(scores) != len(batch.answers):
            raise ValueError(f"reward function {self.name} returned {len(scores)} scores for {len(batch.answers)} answers")
        return torch.tensor([float(s) for s in scores], dtype=torch.float32)


def combine(scores: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """sum_i w_i * r_i over sources. Args: name -> [B] scores, name -> weight. Returns [B]."""
    total = None
    for name, s in scores.items():
        term = weights[name] * s.float().cpu()
        total = term if total is None else total + term
    return total
