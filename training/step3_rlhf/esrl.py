"""ESRL (Wang et al. 2024, "Efficient Sampling-based Reinforcement Learning for Sequence
Generation"): dynamic sampling driven by an estimate of the model's capability per prompt, here
spending a group budget (GRPO's --num_samples_per_prompt) where the samples teach.

Capability of prompt x, in [0, 1] (docs/step3.md "ESRL" has the same formulas):
    conf(x)  = exp(mean_t log sum_v pi(v | x, y_<t)^2) over the answer positions of its first-pass
               samples, pi at temperature 1 as recorded while sampling (`answer_confidence`: the
               expected probability of the model's own next token, which the sampling
               temperature does not move)
    score(x) = sigmoid((R(x) - mu_R) / (sigma_R + 1e-8)), R(x) its mean first-pass reward and mu_R,
               sigma^2_R moving averages of each batch's mean and variance of prompt rewards
    c(x)     = w * conf(x) + (1 - w) * score(x),   w = --esrl_confidence_weight
Per-prompt terms are moving averages over that prompt's visits, d = --esrl_capability_decay:
v <- d * v + (1 - d) * v_new. A prompt not seen yet takes the moving averages over all
prompts. r_best / r_worst are the highest / lowest prompt reward R seen so far.

One generation batch of n prompts, K = --num_samples_per_prompt (the budget: K samples per prompt
on average, as plain GRPO), m = --esrl_min_samples (2), k_max = --esrl_max_samples (2K, so what
skipped prompts save may go to the hardest). Temperatures t_min + c(x) * (t_max - t_min), c from
before the batch (hotter when capable, so the samples still differ), for every sample of x.

1. First pass: m samples of every prompt, and for a prompt visited before the extra samples planned
   from its estimates (below), all in one generation call. Their rewards and confidences update the
   estimates (gathered over ranks, so every rank holds the same).
2. From a prompt's samples: its mean reward R_i, spread s_i (population std) and agree_i (all
   rewards equal), and c_i, sigma_R, r_best, r_worst after the update:
       skip_i = agree_i and (c_i > c_skip  or  R_i >= r_best > r_worst),   c_skip = --esrl_skip_capability
       w_i    = 0 if skip_i else (1 - c_i) + s_i / (sigma_R + 1e-8)
   A prompt whose samples disagree always teaches, so it is never skipped; one the model answers
   alike and well (the best reward seen, or capability above c_skip) gets no more samples. Extra
   samples: prompt i gets one for each of its quotients w_i / j, j = 1 .. k_max - m, among the T
   largest of its prompts (D'Hondt; ties to the smaller j, then the earlier prompt), with
       T = min(n' * (K - m), (k_max - m) * #{i: w_i > 0})      over n' prompts.
   A prompt visited before is planned with the w_i of its last visit's spread (a moving average) and
   skip decision and its capability now, among the batch's visited prompts, before sampling. The
   others get a second pass from their first m samples, T the largest any rank wants (a rank
   wanting fewer gives the rest to zero-weight prompts in turn, so every rank samples as many). No
   round samples more than n * K, but where ranks' batches hold different numbers of new prompts.
3. All of a prompt's samples form its group (group baselines use all of them). A skipped prompt
   whose whole group got one reward is left out of the loss (`loss_mask`). Those rows skip the
   actor, reference and critic passes and the update, and so do the most confident of the rest
   until at least the fraction --esrl_eliminate_ratio of the batch is eliminated (their rewards
   still count in the baselines).
"""
from __future__ import annotations

import math

import torch


def temperatures(capability: torch.Tensor, t_min: float, t_max: float) -> torch.Tensor:
    """t_min + c * (t_max - t_min) per prompt. [B] -> [B]."""
    return t_min + capability.clamp(0, 1) * (t_max - t_min)


def answer_confidence(log_collision: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """exp(mean_t log sum_v pi(v | x, y_<t)^2) over the answer positions: the geometric mean of the
    probability the model (at temperature 1) expects its own next token to have, E_{v~pi}[pi(v)],
    along each sample's prefixes. ESRL's confidence is the sample's generation probability; that of
    the sampled token itself rises when ESRL samples a prompt cooler (the draws keep to the modes),
    so a hard prompt drawn cold would look sure and be eliminated first. The expectation does not
    depend on the temperature that drew the token.

    log_collision: [B, T] `utils.losses.log_collision` of the next-token logits at temperature 1
    (recorded while sampling); mask: [B, T] 1 on answer positions. Returns [B].
    """
    m = mask.to(torch.float32)
    return torch.exp((log_collision.float() * m).sum(1) / m.sum(1).clamp_min(1))


def kept_count(n: int, ratio: float) -> int:
    """Samples left of n after elimination: n - floor(ratio * n)."""
    return n - int(math.floor(ratio * n + 1e-9))


def eliminate(confidence: torch.Tensor, ratio: float, idle: torch.Tensor | None = None) -> torch.Tensor:
    """Indices kept after elimination: every sample out of the loss (`idle`: it would cost the actor,
    reference and critic passes and the update and teach nothing) and, while fewer than
    floor(ratio * N) are dropped, the most confident of the rest (ties: lower index kept). At least one
    sample stays, the least confident idle one when all are idle, so the update's micro-batches have a
    row to stand in.

    confidence: [N]; idle: [N] bool or None. Returns sorted long indices.
    """
    n = confidence.numel()
    idle = torch.zeros(n, dtype=torch.bool) if idle is None else idle.cpu()
    drop = min(max(n - kept_count(n, ratio), int(idle.sum())), n - 1)
    if drop == 0:
        return torch.arange(n)
    order = torch.argsort(-confidence, stable=True)
    order = order[torch.argsort((~idle[order]).long(), stable=True)]
    return torch.sort(order[drop:]).values


def prompt_stats(values: torch.Tensor, rows: list[int], n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per prompt, over its samples: mean, population std (the spread) and whether all are equal.

    values: [N]; rows: the prompt (0 .. n-1) of each value, every prompt at least once.
    Returns ([n] float64, [n] float64, [n] bool).
    """
    idx, v = torch.tensor(rows), values.detach().cpu().double()
    count = torch.zeros(n, dtype=v.dtype).index_add_(0, idx, torch.ones_like(v))
    mean = torch.zeros(n, dtype=v.dtype).index_add_(0, idx, v) / count
    var = torch.zeros(n, dtype=v.dtype).index_add_(0, idx, (v - mean[idx]) ** 2) / count
    high = torch.full((n,), -math.inf, dtype=v.dtype).scatter_reduce(0, idx, v, "amax")
    low = torch.full((n,), math.inf, dtype=v.dtype).scatter_reduce(0, idx, v, "amin")
    return mean, var.sqrt(), high == low


def skipped(mean: torch.Tensor, agree: torch.Tensor, capability: torch.Tensor, best: float, worst: float,
            threshold: float) -> torch.Tensor:
    """skip_i = agree_i and (c_i > threshold or R_i >= r_best > r_worst): the prompts answered alike
    and well. best > worst keeps a task whose rewards never varied (nothing solved yet) sampling.
    mean, capability: [n] float; agree: [n] bool. Returns [n] bool."""
    at_best = mean >= best if best > worst else torch.zeros_like(agree)
    return agree & ((capability.double() > threshold) | at_best)


def sampling_need(capability: torch.Tensor, spread: torch.Tensor, reward_std: float,
                  skip: torch.Tensor) -> torch.Tensor:
    """w_i = (1 - c_i) + s_i / (sigma_R + 1e-8), 0 where skip_i: low capability (low confidence or
    reward below the running mean) and disagreement both ask for more samples.
    capability, spread: [n]; skip: [n] bool. Returns [n] float64 >= 0."""
    w = (1 - capability.double()) + spread.double() / (reward_std + 1e-8)
    return torch.where(skip, torch.zeros_like(w), w)


def second_pass_size(weights: torch.Tensor, cap: int, budget: int) -> int:
    """Samples this rank's second pass wants: min(budget, cap * #{i: w_i > 0}), budget = n * (K - m)
    (0 when the first pass alone spends it)."""
    return max(0, min(budget, cap * int((weights > 0).sum())))


def allocate(weights: torch.Tensor, cap: int, total: int) -> list[int]:
    """Extra samples per prompt: prompt i gets one for each of its quotients w_i / j, j = 1 .. cap,
    among the `total` largest of all prompts' quotients (D'Hondt's highest averages; ties go to the
    smaller j, then the earlier prompt, so zero-weight prompts are filled in turn, after every
    positive one is full). weights: [n] >= 0; total <= n * cap. Returns n counts in 0 .. cap."""
    n = weights.numel()
    if total > n * cap:
        raise ValueError(f"{total} samples do not fit {n} prompts of at most {cap} each")
    quotients = weights.double()[None, :] / torch.arange(1, cap + 1, dtype=torch.float64)[:, None]   # [cap, n]
    # a stable sort of the flattened [j, i] grid breaks ties by j, then i
    chosen = torch.argsort(-quotients.reshape(-1), stable=True)[:total]
    return torch.bincount(chosen % n, minlength=n).tolist()


class CapabilityEstimator:
    """Per-prompt moving averages of confidence and reward, plus running (moving-average) means
    over all prompts and the best/worst prompt reward seen. Identical on every rank: each batch's
    per-prompt values are gathered."""

    def __init__(self, confidence_weight: float, decay: float):
        self.w, self.decay = confidence_weight, decay
        self.conf: dict[int, float] = {}
        self.reward: dict[int, float] = {}
        self.conf_mean: float | None = None     # moving average of the batch means
        self.reward_mean: float | None = None
        self.reward_var: float = 0.0
        self.reward_best: float = -math.inf    # highest / lowest prompt reward seen
        self.reward_worst: float = math.inf
        self.spread: dict[int, float] = {}     # per prompt: moving average of its rewards' spread
        self.skip: dict[int, bool] = {}        # per prompt: whether its latest visit was skipped

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
        """Fold in one batch (already gathered over ranks): per prompt, its mean sequence
        confidence and mean reward."""
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
            self.reward_best, self.reward_worst = max(self.reward_best, *vals), min(self.reward_worst, *vals)

    def record(self, spread: dict[int, float], skip: dict[int, bool]) -> None:
        """Fold in one batch's (gathered) per-prompt reward spread and skip decision: what the next
        visit of the prompt plans its samples from."""
        for i, v in spread.items():
            self.spread[i] = self._ema(self.spread.get(i), v)
        self.skip.update(skip)

    def known(self, prompts: list[int]) -> torch.Tensor:
        """[B] bool: the prompt was visited before, so its samples can be planned before sampling."""
        return torch.tensor([i in self.spread for i in prompts], dtype=torch.bool)

    def planned_need(self, prompts: list[int]) -> torch.Tensor:
        """`sampling_need` of each prompt from its previous visits alone (spread and skip as then,
        capability as now); 0 for prompts not visited yet. Returns [B] float64."""
        known = self.known(prompts)
        spread = torch.tensor([self.spread.get(i, 0.0) for i in prompts], dtype=torch.float64)
        skip = torch.tensor([self.skip.get(i, True) for i in prompts], dtype=torch.bool)
        need = sampling_need(self.capability(prompts), spread, math.sqrt(self.reward_var), skip)
        return torch.where(known, need, torch.zeros_like(need))

    def state_dict(self) -> dict:
        return {"conf": dict(self.conf), "reward": dict(self.reward), "conf_mean": self.conf_mean,
                "reward_mean": self.reward_mean, "reward_var": self.reward_var, "reward_best": self.reward_best,
                "reward_worst": self.reward_worst, "spread": dict(self.spread), "skip": dict(self.skip)}

    def load_state_dict(self, s: dict) -> None:
        self.conf, self.reward = {int(k): v for k, v in s["conf"].items()}, {int(k): v for k, v in s["reward"].items()}
        self.conf_mean, self.reward_mean, self.reward_var = s["conf_mean"], s["reward_mean"], s["reward_var"]
        # checkpoints of the one-pass ESRL hold no extremes: they start again from the next round
        self.reward_best, self.reward_worst = s.get("reward_best", -math.inf), s.get("reward_worst", math.inf)
        # and checkpoints from before planning none: every prompt is sampled in two passes until revisited
        self.spread = {int(k): v for k, v in s.get("spread", {}).items()}
        self.skip = {int(k): bool(v) for k, v in s.get("skip", {}).items()}
