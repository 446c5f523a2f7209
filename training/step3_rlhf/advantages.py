"""Step 3's advantage estimators, one per --advantage_estimator, each owning its baseline and its
whitening (the formulas are pure functions in `utils/losses.py`; docs/step3.md "Advantage estimators"):

    gae           GAE with the critic's values (under ESRL: rewards less the leave-one-out mean of the
                  prompt's other samples, which groups give for free); whitened per generation batch
    grpo          (r - mean of the group) / (std of the group + eps), Bessel std; Dr. GRPO without it
    rloo          r less the leave-one-out mean of the group; not whitened unless asked
    reinforce_pp  r as it is, reward-to-go of the KL-penalised token rewards, whitened over the round

`shape` turns sequence rewards into what the estimator credits; `advantages` turns the KL-penalised
token rewards into advantages and returns; `finish_round` whitens over the whole round where the
estimator does. Statistics are over the rows that train (`loss_mask`) and every rank.
"""
from __future__ import annotations

import torch

from utils import distributed as dist
from utils.losses import gae, group_baseline, grpo_advantages, masked_moments, reward_to_go, whiten


class Estimator:
    """The baseline of a sample without siblings is a moving average over rounds of all ranks' mean
    reward (`moving_baseline`): the REINFORCE baseline of single samples, in `state_dict`."""

    def __init__(self, cfg, grouped: bool = False):
        self.cfg, self.grouped = cfg, grouped
        self.baseline: float | None = None

    def shape(self, end: torch.Tensor, prompt_index: list[int]) -> torch.Tensor:
        """Sequence rewards [N] as this estimator credits them."""
        if self.grouped:
            return end - group_baseline(end, prompt_index, self.moving_baseline(end))
        return end

    def advantages(self, rewards: torch.Tensor, values: torch.Tensor, action_mask: torch.Tensor,
                   loss_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(advantages, returns) [B, T] from token rewards, values, the answer mask and the loss mask."""
        adv = reward_to_go(rewards, action_mask, self.cfg.gamma)
        return adv, adv

    def finish_round(self, exps: list) -> None:
        """Round-wide work after every generation batch of the round is made (none by default)."""

    def moving_baseline(self, end: torch.Tensor) -> float:
        """The moving average of round means of all ranks' rewards before this round (this round's
        mean in the first); folds this round in."""
        m = dist.all_reduce_sum(float(end.mean())) / dist.world_size()
        fallback = self.baseline if self.baseline is not None else m
        d = self.cfg.baseline_decay
        self.baseline = m if self.baseline is None else d * self.baseline + (1 - d) * m
        return fallback


class GAE(Estimator):
    def advantages(self, rewards, values, action_mask, loss_mask):
        adv, returns = gae(rewards, values, action_mask, self.cfg.gamma, self.cfg.lam)
        return (whiten(adv, loss_mask) if self.cfg.whiten_advantages else adv), returns


class GRPO(Estimator):
    def shape(self, end, prompt_index):
        return grpo_advantages(end, prompt_index, self.cfg.norm_adv_by_std_in_grpo, fallback=self.moving_baseline(end))


class RLOO(Estimator):
    def __init__(self, cfg):
        super().__init__(cfg, grouped=True)

    def advantages(self, rewards, values, action_mask, loss_mask):
        returns = reward_to_go(rewards, action_mask, self.cfg.gamma)
        return (whiten(returns, loss_mask) if self.cfg.whiten_advantages else returns), returns


class ReinforcePP(Estimator):
    def finish_round(self, exps):
        """Whiten over the whole round, every rank's rows that train at once."""
        if not self.cfg.whiten_advantages:
            return
        moments = sum(masked_moments(e.advantages, e.loss_mask) for e in exps)
        moments = torch.tensor([dist.all_reduce_sum(v) for v in moments.tolist()], dtype=torch.float64)
        for e in exps:
            e.advantages = whiten(e.advantages, e.loss_mask, moments=moments)
            e.returns = e.advantages


def make_estimator(cfg) -> Estimator:
    est = cfg.advantage_estimator
    if est == "gae":
        return GAE(cfg, grouped=cfg.dynamic_sampling)
    return {"grpo": GRPO, "rloo": RLOO, "reinforce_pp": ReinforcePP}[est](cfg)
