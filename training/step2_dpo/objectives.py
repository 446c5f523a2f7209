"""Step 2's preference objectives: (policy engine, batch) -> LossOutput, one class per data shape.

DPOObjective takes pairs (DPO, cDPO, IPO, SimPO, ORPO, + RPO), KTOObjective unpaired answers,
RRHFObjective ranked answers; `method_for` gives a loss type's tokenizer, collator, objective
and unit. The formulas are in utils/losses.py; a reference's log-probs come precomputed on the
batch (NaN when not) or from the live reference engine.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch

from utils import distributed as dist
from utils.config import DPOConfig
from utils.data.feedback import KTOBatch, RankedBatch, collate_kto, collate_ranked, tokenize_kto, tokenize_ranked
from utils.data.preference import PreferenceBatch, collate_preferences, tokenize_preferences
from utils.losses import (dpo_loss, ipo_loss, kto_loss, kto_reference_point, orpo_loss, response_lengths, rrhf_loss,
                          same_group, sequence_logprobs, simpo_loss)
from utils.models import labelled_logits
from utils.trainer import LossOutput


def response_logps(model, batch, average: bool, rows: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
    """([R] summed or length-averaged answer log-probs, [R] length-averaged ones) of `rows` of a
    batch with input_ids, attention_mask and labels."""
    labels = batch.labels[rows]
    total = sequence_logprobs(*labelled_logits(model, batch.input_ids[rows], batch.attention_mask[rows], labels))
    mean = total / response_lengths(labels)
    return (mean if average else total), mean


class WithReference:
    """The reference's summed answer log-probs of a batch's rows: precomputed, or from the live engine."""

    def __init__(self, cfg: DPOConfig, reference=None):
        self.cfg, self.reference = cfg, reference

    def ref_logps(self, batch) -> torch.Tensor:
        if not torch.isnan(batch.ref_logps).any():
            return batch.ref_logps
        with torch.no_grad():
            return response_logps(self.reference, batch, average=False)[0]


class DPOObjective(WithReference):
    def __call__(self, policy, batch: PreferenceBatch) -> LossOutput:
        cfg, P = self.cfg, batch.n_pairs
        average = cfg.loss_type in ("simpo", "orpo")
        logps, mean_logps = response_logps(policy, batch, average)
        chosen, rejected = logps[:P], logps[P:2 * P]
        metrics = {"logps/chosen": (float(chosen.detach().sum()), P),
                   "logps/rejected": (float(rejected.detach().sum()), P)}
        if cfg.uses_reference:
            ref = self.ref_logps(batch)
            ref_chosen, ref_rejected = ref[:P], ref[P:2 * P]
            if cfg.loss_type == "sigmoid":
                losses = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, cfg.beta, cfg.label_smoothing)
            else:
                losses = ipo_loss(chosen, rejected, ref_chosen, ref_rejected, cfg.beta)
            r_chosen = cfg.beta * (chosen - ref_chosen).detach()
            r_rejected = cfg.beta * (rejected - ref_rejected).detach()
        elif cfg.loss_type == "simpo":
            losses = simpo_loss(chosen, rejected, cfg.beta, cfg.simpo_gamma)
            r_chosen, r_rejected = cfg.beta * chosen.detach(), cfg.beta * rejected.detach()
        else:
            losses, ratio = orpo_loss(chosen, rejected, cfg.beta)
            r_chosen, r_rejected = cfg.beta * chosen.detach(), cfg.beta * rejected.detach()
            metrics["log_odds_ratio"] = (float(ratio.detach().sum()), P)
        if cfg.rpo_alpha:
            nll = -mean_logps[:P]
            losses = losses + cfg.rpo_alpha * nll
            metrics["nll/chosen"] = (float(nll.detach().sum()), P)
        metrics.update({
            "rewards/chosen": (float(r_chosen.sum()), P),
            "rewards/rejected": (float(r_rejected.sum()), P),
            "rewards/accuracy": (float((r_chosen > r_rejected).sum()), P),
            "rewards/margin": (float((r_chosen - r_rejected).sum()), P),
        })
        return LossOutput(losses.sum(), float(P), metrics)


class KTOObjective(WithReference):
    """KTO with its reference point z0 estimated, as in the paper and TRL, on the batch's KL rows
    (each prompt with another row's completion) over every rank, without gradient."""

    def __call__(self, policy, batch: KTOBatch) -> LossOutput:
        cfg, N = self.cfg, batch.n
        logps = response_logps(policy, batch, average=False, rows=slice(0, N))[0]
        with torch.no_grad():
            kl_logps = response_logps(policy, batch, average=False, rows=slice(N, 2 * N))[0]
        ref = self.ref_logps(batch)
        z0 = kto_reference_point(dist.all_reduce_sum(float((kl_logps - ref[N:]).sum())), dist.all_reduce_sum(N))
        losses = kto_loss(logps, ref[:N], batch.desirable, torch.tensor(z0, device=logps.device), cfg.beta,
                          cfg.desirable_weight, cfg.undesirable_weight)
        rewards = cfg.beta * (logps.detach() - ref[:N])
        good, n_good = batch.desirable, int(batch.desirable.sum())
        metrics = {"kl": (z0, 1),
                   "rewards/chosen": (float(rewards[good].sum()), n_good),
                   "rewards/rejected": (float(rewards[~good].sum()), N - n_good),
                   "logps/chosen": (float(logps.detach()[good].sum()), n_good),
                   "logps/rejected": (float(logps.detach()[~good].sum()), N - n_good)}
        return LossOutput(losses.sum(), float(N), metrics)


class RRHFObjective:
    """RRHF: reference-free; every answer of a prompt in one forward."""

    def __init__(self, cfg: DPOConfig, reference=None):
        self.cfg = cfg

    def __call__(self, policy, batch: RankedBatch) -> LossOutput:
        avg = response_logps(policy, batch, average=True)[0]
        total, rank, ft = rrhf_loss(avg, batch.scores, batch.groups, self.cfg.rrhf_weight)
        G = batch.n_prompts
        p, s = avg.detach(), batch.scores
        ordered = (s.unsqueeze(1) < s.unsqueeze(0)) & same_group(batch.groups, s.device)   # [i, j]: i below j
        metrics = {"rank_loss": (float(rank.detach().sum()), G), "sft_loss": (float(ft.detach().sum()), G),
                   "rewards/accuracy": (float((ordered & (p.unsqueeze(1) < p.unsqueeze(0))).sum()),
                                        float(ordered.sum()))}
        return LossOutput(total.sum(), float(G), metrics)


@dataclass
class Method:
    """What a loss type reads and how it trains."""
    tokenize: Callable          # (records, tokenizer, max_len) -> (examples, LengthStats)
    collate: Callable           # (examples, pad_id) -> batch
    objective: type             # (cfg, reference) -> (policy, batch) -> LossOutput
    count: Callable             # batch -> number of items its loss averages over
    unit: str


def method_for(loss_type: str) -> Method:
    if loss_type == "kto":
        return Method(tokenize_kto, collate_kto, KTOObjective, lambda b: b.n, "answers")
    if loss_type == "rrhf":
        return Method(tokenize_ranked, collate_ranked, RRHFObjective, lambda b: b.n_prompts, "prompts")
    return Method(partial(tokenize_preferences, pairs_only=True), collate_preferences, DPOObjective,
                  lambda b: b.n_pairs, "pairs")
