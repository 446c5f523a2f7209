"""Reward sources for step 3 behind one interface (`RewardSource`), and their weighted combination.

A source is called with the sampled batch and returns one float per answer:
    source(batch: RewardInputs) -> torch.Tensor [B]
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass

import torch

from .. import distributed as dist
from ..data.collate import pad_right
from ..errors import ConfigError, TrainingHalted
from ..data.preference import reward_model_chat_ids, reward_model_ids
from ..models import end_scores, token_values


@dataclass
class RewardInputs:
    prompts: list[str]             # prompt texts
    answers: list[str]             # decoded answers (cut at EOS, EOS excluded)
    references: list[str]          # the RLHF file's `output` per prompt ("" when absent)
    sources: list[str]             # raw source text (`input`, else the prompt), e.g. for COMET
    prompt_ids: list[list[int]]    # actor-tokenizer ids of each prompt (no padding)
    answer_ids: list[list[int]]    # actor-tokenizer ids of each answer, EOS included when generated
    messages: list[list[dict] | None] | None = None   # each conversational prompt's turns (None: a text prompt)
    columns: list[dict | None] | None = None          # each prompt row's unread columns (PromptExample.columns)


class RewardSource:
    """What step 3 asks of every reward source. A source that normalises its scores with running
    statistics (COMET) overrides the last three: `raw` holds its last unnormalised scores (for
    logging), `raw_scores` scores without touching the statistics (held-out evaluation), and the
    statistics travel in checkpoints."""
    name: str
    raw: torch.Tensor | None = None

    def __call__(self, batch: RewardInputs) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> str:
        """How a message names the source."""
        return f"reward source {self.name}"

    def raw_scores(self, batch: RewardInputs) -> torch.Tensor:
        return self(batch)

    def state_dict(self) -> dict | None:
        return None

    def load_state_dict(self, state: dict | None) -> None:
        pass


class RewardModelSource(RewardSource):
    """The trained reward model's score of `prompt + answer` (the decoded answer), encoded by the
    reward model's tokenizer as in its training and as stock transformers reads it
    (`reward_model_scores`), whichever tokenizer the actor uses; a conversational prompt's turns
    and the answer as the assistant's turn are rendered with the reward model's chat template, as
    step 2 encodes chat pairs. An answer cut at --max_answer_seq_len is scored at an appended EOS
    like a finished one; --missing_eos_penalty is what tells them apart."""
    name = "reward_model"

    def __init__(self, engine, tokenizer, batch_size: int, device):
        self.engine, self.tokenizer, self.batch_size, self.device = engine, tokenizer, batch_size, device

    def __call__(self, batch: RewardInputs) -> torch.Tensor:
        return score_ids(self.engine, self.tokenizer, reward_inputs_ids(self.tokenizer, batch), self.batch_size,
                         self.device)


def reward_inputs_ids(tokenizer, batch: RewardInputs) -> list[list[int]]:
    """What the reward model reads for each answer of the batch (RewardModelSource)."""
    turns = batch.messages or [None] * len(batch.answers)
    texts = [p + a for p, a, m in zip(batch.prompts, batch.answers, turns) if m is None]
    chats = [tokenizer.apply_chat_template(m + [{"role": "assistant", "content": a}], tokenize=False)
             for a, m in zip(batch.answers, turns) if m is not None]
    plain, rendered = iter(reward_model_ids(tokenizer, texts)), iter(reward_model_chat_ids(tokenizer, chats))
    return [next(plain) if m is None else next(rendered) for m in turns]


def reward_model_scores(model, tokenizer, texts: list[str], batch_size: int, device) -> torch.Tensor:
    """[N] float scores of full texts by a reward model (engine or plain module)."""
    return score_ids(model, tokenizer, reward_model_ids(tokenizer, texts), batch_size, device)


@torch.no_grad()
def score_ids(model, tokenizer, ids: list[list[int]], batch_size: int, device) -> torch.Tensor:
    """[N] float scores of token ids (each ending in EOS) by a reward model, in right-padded batches."""
    out = []
    for i in range(0, len(ids), batch_size):
        chunk = ids[i:i + batch_size]
        mask = pad_right([[1] * len(x) for x in chunk], 0).to(device)
        x = pad_right(chunk, tokenizer.pad_token_id).to(device)
        out.append(end_scores(token_values(model, x, mask), mask))
    return torch.cat(out).float()


class RuleSource(RewardSource):
    """A Python callable named `module:function` returning one float per answer. It is called with
    the keyword arguments it names, or all of them when it takes **kwargs: `prompts`, `answers`,
    `references`, `sources` (lists of strings), TRL's `completions` (the answers; for a
    conversational prompt `[{"role": "assistant", "content": answer}]`) and `completion_ids`, and
    each column of the prompt rows that their format does not read, as a list with one value per
    answer (None where a row lacks it). So a TRL reward function `f(completions, solution, **kwargs)`
    runs as it is on a dataset with a `solution` column."""

    def __init__(self, spec: str):
        module, _, fn = spec.partition(":")
        if not module or not fn:
            raise ValueError(f"--reward_functions {spec!r}: expected module:function")
        try:
            self.fn = getattr(importlib.import_module(module), fn)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"--reward_functions {spec!r}: {e}")
        self.spec, self.name = spec, fn
        params = inspect.signature(self.fn).parameters.values()
        self.takes_all = any(p.kind == p.VAR_KEYWORD for p in params)
        self.names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        self.required = [p.name for p in params
                         if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is p.empty]

    def describe(self) -> str:
        return f"reward function {self.spec}"

    def check(self, columns: set[str]) -> None:
        """ValueError when the function needs an argument that neither the step nor the prompt rows'
        `columns` provide (before training, rather than at the first reward)."""
        missing = [n for n in self.required if n not in set(BUILT_IN_ARGUMENTS) | columns]
        if missing:
            given = ", ".join(BUILT_IN_ARGUMENTS + sorted(columns - set(BUILT_IN_ARGUMENTS)))
            raise ValueError(f"--reward_functions {self.spec}: {self.name} needs {', '.join(missing)}; it can be "
                             f"given {given}")

    def __call__(self, batch: RewardInputs) -> torch.Tensor:
        values = rule_arguments(batch)
        scores = self.fn(**(values if self.takes_all else {k: v for k, v in values.items() if k in self.names}))
        if len(scores) != len(batch.answers):
            raise TrainingHalted(f"{self.describe()} returned {len(scores)} scores for {len(batch.answers)} answers")
        out = []
        for i, s in enumerate(scores):
            try:
                out.append(float(s))
            except (TypeError, ValueError):
                raise TrainingHalted(f"{self.describe()} returned {s!r} for answer {i} ({batch.answers[i][:60]!r}): "
                                     f"not a number")
        return torch.tensor(out, dtype=torch.float32)


BUILT_IN_ARGUMENTS = ["prompts", "answers", "references", "sources", "completions", "completion_ids"]


def rule_arguments(batch: RewardInputs) -> dict[str, list]:
    """What a rule reward may be given (RuleSource): the built-in lists, then the rows' columns."""
    turns = batch.messages or [None] * len(batch.answers)
    rows = batch.columns or [None] * len(batch.answers)
    values = {"prompts": batch.prompts, "answers": batch.answers, "references": batch.references,
              "sources": batch.sources,
              "completions": [a if m is None else [{"role": "assistant", "content": a}]
                              for a, m in zip(batch.answers, turns)],
              "completion_ids": [list(ids) for ids in batch.answer_ids]}
    for name in sorted({k for row in rows if row for k in row} - set(values)):
        values[name] = [(row or {}).get(name) for row in rows]
    return values


def source_device(index: int | None, flag: str) -> torch.device:
    """The GPU `index` (default: this process's own GPU) when there is one, else the CPU: where a
    reward source named by `flag` runs."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if index is None:
        return dist.device()
    if not 0 <= index < torch.cuda.device_count():
        raise ConfigError(f"{flag} {index}: this machine has {torch.cuda.device_count()} GPU(s)")
    return torch.device("cuda", index)


def combine(scores: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """sum_i w_i * r_i over sources. Args: name -> [B] scores, name -> weight. Returns [B]."""
    total = None
    for name, s in scores.items():
        term = weights[name] * s.float().cpu()
        total = term if total is None else total + term
    return total
