"""Step 3's typed containers: `Samples` (what the sampler drew and the reward sources scored) and
`Experience` (what the update trains on). Layout of both: S = prompt length P (left-padded) +
answer length (right-padded); position t of the [B, S-1] tensors is the prediction of token t+1."""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from utils.data.rlhf import PromptExample


def take(v, idx: list[int]):
    """Rows `idx` of a tensor (first dimension), a list, or each tensor of a dict; None stays None."""
    if v is None:
        return None
    if isinstance(v, dict):
        return {k: take(x, idx) for k, x in v.items()}
    return [v[i] for i in idx] if isinstance(v, list) else v[idx]


@dataclass
class Experience:
    """One generation batch, ready for the update."""
    sequences: torch.Tensor         # [B, S] long
    attention_mask: torch.Tensor    # [B, S] long
    action_mask: torch.Tensor       # [B, S-1] float, 1 where token t+1 is an answer token (its stop id included)
    loss_mask: torch.Tensor         # [B, S-1] float, action_mask less the rows left out of the update
                                    #   (--drop_uniform_groups, ESRL's skipped prompts)
    temperatures: torch.Tensor      # [B] the temperature each row was sampled at; every log-prob is of logits / it
    rollout_logprobs: torch.Tensor  # [B, S-1] each sampled token's log-prob as recorded while sampling
    logprobs: torch.Tensor          # [B, S-1] actor log-probs recomputed by a teacher-forced pass ("old")
    ref_logprobs: torch.Tensor      # [B, S-1] reference log-probs
    values: torch.Tensor            # [B, S-1] critic values when sampled (zeros without a critic)
    rewards: torch.Tensor           # [B, S-1] KL-penalised per-token rewards
    advantages: torch.Tensor        # [B, S-1]
    returns: torch.Tensor           # [B, S-1]
    end_rewards: torch.Tensor       # [B] combined sequence reward, before clipping
    prompt_index: list[int]         # which PromptExample each row came from
    sft_examples: list              # [B] the --add_sft_loss target of each row (Example or None)

    def rows(self, idx: list[int]) -> "Experience":
        return Experience(**{f.name: take(getattr(self, f.name), idx) for f in fields(self)})


# the [B, S-1] tensors of `Samples`, which move with the tokens when the layout widens
_TOKEN_FIELDS = ("action_mask", "rollout_logprobs")


@dataclass
class Samples:
    """Sampled and scored rows of one generation batch, laid out as in `Experience`."""
    prompts: list[PromptExample]
    prompt_index: list[int]            # which PromptExample each row came from
    rows: list[int]                    # each row's prompt position in the generation batch
    answers: list[list[int]]           # answer ids (the stop id kept when generated)
    sequences: torch.Tensor            # [B, S] long
    attention_mask: torch.Tensor       # [B, S] long
    action_mask: torch.Tensor          # [B, S-1] float
    temperatures: torch.Tensor         # [B]
    rollout_logprobs: torch.Tensor     # [B, S-1] as recorded while sampling
    confidence: torch.Tensor | None    # [B] ESRL's confidence of each sample (None without ESRL)
    scores: dict                       # reward source name -> [B] scores
    raws: dict                         # name -> [B] unnormalised scores of the sources that normalise
    base: torch.Tensor                 # [B] combined reward + --reward_bias (no EOS penalty yet)
    prompt_len: int                    # P

    def take(self, idx: list[int]) -> "Samples":
        return Samples(**{f.name: take(getattr(self, f.name), idx) for f in fields(self) if f.name != "prompt_len"},
                       prompt_len=self.prompt_len)

    def widened(self, prompt_len: int, width: int, pad_id: int) -> "Samples":
        """The same rows with prompts left-padded to `prompt_len` and sequences right-padded to `width`
        (the [B, S-1] tensors shift with them, so each value stays with its token)."""
        left = prompt_len - self.prompt_len
        pad = (left, width - left - self.sequences.shape[1])
        moved = {k: F.pad(getattr(self, k), pad) for k in _TOKEN_FIELDS}
        return Samples(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **moved,
                          "sequences": F.pad(self.sequences, pad, value=pad_id),
                          "attention_mask": F.pad(self.attention_mask, pad), "prompt_len": prompt_len})

    @staticmethod
    def cat(a: "Samples", b: "Samples", pad_id: int) -> "Samples":
        """a's rows, then b's, in one layout."""
        P = max(a.prompt_len, b.prompt_len)
        width = P + max(x.sequences.shape[1] - x.prompt_len for x in (a, b))
        a, b = a.widened(P, width, pad_id), b.widened(P, width, pad_id)

        def join(x, y):
            if isinstance(x, dict):
                return {k: join(x[k], y[k]) for k in x}
            if x is None:
                return None
            return x + y if isinstance(x, list) else torch.cat([x, y])
        return Samples(**{f.name: join(getattr(a, f.name), getattr(b, f.name)) for f in fields(a)
                          if f.name != "prompt_len"}, prompt_len=P)
