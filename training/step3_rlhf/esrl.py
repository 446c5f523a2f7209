"""ESRL (Wang et al. 2024, "Efficient Sampling-based Reinforcement Learning for Sequence
Generation"): dynamic sampling driven by an estimate of the model's capability per prompt.

Capability of prompt x, in [0, 1] (README "ESRL" has the same formulas):
    conf(x)  = exp(mean log pi(y_t | x, y_<t)) over the answer tokens of its last samples
    score(x) = sigmoid((R(x) - mu_R) / (sigma_R + 1e-8)), R(x) its mean reward and mu_R,
               sigma^2_R moving averages of each round's mean and variance of prompt rewards
    c(x)     = w * conf(x) + (1 - w) * score(x),   w = --esrl_confidence_weight
Per-prompt terms are moving averages over that prompt's visits, d = --esrl_capability_decay:
v <- d * v + (1 - d) * v_new. A prompt not seen yet takes the moving averages over all
prompts, so the estimate for unseen prompts rises as the model improves.

From c(x):
    samples(x)     = round(k_max - c(x) * (k_max - k_min))      fewer samples when capable
    temperature(x) = t_min + c(x) * (t_max - t_min)             hotter when capable, so the
                                                                 few samples still differ
and after sampling, the fraction --esrl_eliminate_ratio of the batch with the highest
sequence confidence is dropped before the reward, reference and critic passes.
"""
from __future__ import annotations

import math

import torch


def sample_counts(capability: torch.Tensor, k_min: int, k_max: int) -> list[int]:
    """round(k_max - c * (k_max - k_min)) per prompt. capability: [B] in [0, 1]."""
    k = torch.round(k_max - capability.clamp(0, 1) * (k_max - k_min)).long()
    return k.clamp(k_min, k_max).tolist()


def temperatures(capability: torch.Tensor, t_min: float, t_max: float) -> torch.Tensor:
    """t_min + c * (t_max - t_min) per prompt. [B] -> [B]."""
    return t_min + capability.clamp(0, 1) * (t_max - t_min)


def sequence_confidence(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """exp(mean log-prob of the answer tokens): the geometric-mean token probability. [B, T] -> [B]."""
    m = mask.to(logprobs.dtype)
    return torch.exp((logprobs * m).sum(1) / m.sum(1).clamp_min(1))


def kept_count(n: int, ratio: float) -> int:
    """Samples left of n after elimination: n - floor(ratio * n)."""
    return n - int(math.floor(ratio * n + 1e-9))


def eliminate(confidence: torch.Tensor, ratio: float) -> torch.Tensor:
    """Indices kept after dropping floor(ratio * N) most confident samples (ties: lower index kept).

    confidence: [N]. Returns sorted long indices [N - floor(ratio * N)].
    """
    n = confidence.numel()
    drop = n - kept_count(n, ratio)
    if drop == 0:
        return torch.arange(n)
    order = torch.argsort(-confidence, stable=True)
    return torch.sort(order[drop:]).values


def equalize_counts(counts: list[int], capability: torch.Tensor, total: int) -> list[int]:
    """Raise the sample counts to `total` (the largest total over ranks), one extra sample at a time
    to the least capable prompt with the fewest samples, so every rank samples, scores and trains on
    the same number of sequences (DeepSpeed steps and ZeRO-3 forwards stay in lockstep)."""
    counts = list(counts)
    while sum(counts) < total:
        i = min(range(len(counts)), key=lambda j: (counts[j], float(capability[j]), j))
        counts[i] += 1
    return counts


class CapabilityEstimator:
    """Per-prompt moving averages of confidence and reward, plus running (moving-average) means
    over all prompts. Identical on every rank: each round's per-prompt values are gathered."""

    def __init__(self, confidence_weight: float, decay: float):
        self.w, self.decay = confidence_weight, decay
        self.conf: dict[int, float] = {}
        self.reward: dict[int, float] = {}
        self.conf_mean: float | None = None     # moving average of the round means
        self.reward_mean: float | None = None
        self.reward_var: float = 0.0

    def _ema(self, old, new):
        return new if old is None else self.decay * old + (1 - self.decay) * new

    def score(self, r: float) -> float:
        """sigmoid((r - mu_R) / (sigma_R + 1e-8)); 0.5 before any reward is seen."""
        if self.reward_mean is None:
            return 0.5
        z = (r - self.reward_mean) / (math.sqrt(self.reward_var) + 1e-8)
        return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))

    def capability(self, prompts: list[int]) -> torch.Tensor:
        """c(x) per prompt index. Returns [B] float in [0, 1]."""
        out = []
        for i in prompts:
            conf = self.conf.get(i, self.conf_mean if self.conf_mean is not None else 0.0)
            r = self.reward.get(i, self.reward_mean)
            out.append(self.w * conf + (1 - self.w) * (self.score(r) if r is not None else 0.5))
        return torch.tensor(out, dtype=torch.float32)

    def update(self, confidence: dict[int, float], reward: dict[int, float]) -> None:
        """Fold in one round (already gathered over ranks): per prompt, its mean sequence
        confidence and, for prompts with scored samples, its mean reward."""
        for i, c in confidence.items():
            self.conf[i] = self._ema(self.conf.get(i), c)
        for i, r in reward.items():
            self.reward[i] = self._ema(self.reward.get(i), r)
        if confidence:
            self.conf_mean = self._ema(self.conf_mean, sum(confidence.values()) / len(confidence))
        if reward:
            vals = list(reward.values())
            m = sum(vals) / len(vals)
            v = sum((x - m) ** 2 for x in vals) / len(vals)
            if self.reward_mean is None:
                self.reward_mean, self.reward_var = m, v
            else:
                self.reward_mean = self._ema(self.reward_mean, m)
                self.reward_var = self._ema(self.reward_var, v)

    def state_dict(self) -> dict:
        return {"conf": dict(self.conf), "reward": dict(self.reward), "conf_mean": self.conf_mean,
                "reward_mean": self.reward_mean, "reward_var": self.reward_var}

    def load_state_dict(self, s: dict) -> None:
        self.conf, self.reward = {int(k): v for k, v in s["conf"].items()}, {int(k): v for k, v in s["reward"].items()}
        self.conf_mean, self.reward_mean, self.reward_var = s["conf_mean"], s["reward_mean"], s["reward_var"]
