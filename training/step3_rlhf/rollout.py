"""PPO's rollout, one generation batch as a straight pipeline:

    sample -> score   a sampler (`sampler.py`: plain, DAPO's refill, or ESRL) draws answers with no
                      autograd graph and calls the reward sources; it says which rows go on
    shape             sequence rewards clipped, normalised, credited by the estimator (`advantages.py`)
    actor/reference/critic
                      one teacher-forced forward each over the rows that go on: the actor's and the
                      reference's log-probs at each row's temperature, the critic's values
    Experience        per-token KL penalty, advantages and returns (`experience.py`)

What steers the shaping (the KL coefficient, the reward normaliser, ESRL's estimates, the baseline) is
computed over all ranks, so every rank holds the same values, and lives in `ExperienceMaker.state_dict()`.
"""
from __future__ import annotations

from collections import deque

import torch

from training.step3_rlhf.advantages import make_estimator
from training.step3_rlhf.experience import Experience, Samples, take
from training.step3_rlhf.heldout import held_out_rewards
from training.step3_rlhf.sampler import forward_logprobs, make_sampler
from utils import distributed as dist
from utils.data import IGNORE_INDEX, Example
from utils.data.rlhf import PromptExample
from utils.logging import PhaseClock
from utils.losses import adaptive_kl_coef, kl_penalized_rewards, standardize, uniform_groups
from utils.models import token_values
from utils.rewards import RewardInputs, combine


class AdaptiveKLController:
    """The KL coefficient: fixed, or (with a target) steered by `adaptive_kl_coef` with the KL of
    every rank's sequences."""

    def __init__(self, init: float, target: float | None, horizon: int):
        self.value, self.target, self.horizon = init, target, horizon

    def update(self, kl: float, n: int) -> None:
        if self.target is not None:
            self.value = adaptive_kl_coef(self.value, kl, self.target, n, self.horizon)


def all_ranks(values: list[float]) -> list[float]:
    """Every rank's values, in rank order, on every rank."""
    return [v for part in dist.all_gather_object(values) for v in part]


class RewardNormalizer:
    """Whiten sequence rewards with the mean/std of this round's rewards on all ranks (batch), or of a
    FIFO of the recent rewards of all ranks (queue): every rank normalises with the same statistics
    and holds the same queue, which a checkpoint then restores exactly. `gather` collects the
    ranks' values (all_ranks)."""

    def __init__(self, mode: str, size: int, gather=all_ranks):
        self.mode, self.queue, self.gather = mode, deque(maxlen=size), gather

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return r
        everyone = torch.tensor(self.gather(r.tolist()), dtype=r.dtype)
        if self.mode == "batch":
            ref = everyone
        else:
            self.queue.extend(everyone.tolist())
            ref = torch.tensor(list(self.queue))
        return standardize(r, ref)

    def state_dict(self) -> dict:
        return {"queue": list(self.queue)}

    def load_state_dict(self, s: dict) -> None:
        self.queue.clear()
        self.queue.extend(s["queue"])


class ExperienceMaker:
    """Turns generation batches of prompts into `Experience` (and greedy held-out scores). `pool`: the
    training prompts, from which DAPO's refill draws."""

    def __init__(self, cfg, engine, tokenizer, sources: dict, weights: dict, pool: list[PromptExample] = ()):
        self.cfg, self.rlhf, self.tok = cfg, engine, tokenizer
        self.sources, self.weights = sources, weights
        self.device = dist.device()
        self.kl = AdaptiveKLController(cfg.kl_ctl, cfg.target_kl if cfg.adaptive_kl else None, cfg.kl_horizon)
        self.normalizer = RewardNormalizer(cfg.reward_normalization, cfg.reward_queue_size)
        # per process: sequences and answer tokens sampled (and rewarded), sequences through the reference
        # and critic passes and the update
        self.counters = {"sampled_sequences": 0, "sampled_tokens": 0, "trained_sequences": 0}
        self.clock = PhaseClock()
        self.sampler = make_sampler(cfg, engine, tokenizer, sources, weights, self.counters, self.clock, list(pool))
        self.estimator = make_estimator(cfg)
        self.last_sample: tuple[str, str] | None = None   # (prompt, answer) of the latest round, for printing

    def state_dict(self) -> dict:
        """The reward shaping's running state (equal on every rank) and this rank's counters."""
        return {"kl_ctl": self.kl.value, "normalizer": self.normalizer.state_dict(),
                "esrl": self.sampler.state_dict(), "baseline": self.estimator.baseline,
                "counters": dict(self.counters), "sources": {k: v.state_dict() for k, v in self.sources.items()}}

    def load_state_dict(self, s: dict) -> None:
        self.kl.value, self.estimator.baseline = s["kl_ctl"], s["baseline"]
        self.counters.clear()
        self.counters.update(s["counters"])
        if "scored_sequences" in self.counters:   # its name in checkpoints before it was renamed
            self.counters["trained_sequences"] = self.counters.pop("scored_sequences")
        self.normalizer.load_state_dict(s["normalizer"])
        self.sampler.load_state_dict(s["esrl"])
        for name, st in s["sources"].items():
            self.sources[name].load_state_dict(st)

    # -- one generation batch ------------------------------------------------------------------
    @torch.no_grad()
    def make_experience(self, prompts: list[PromptExample], prompt_index: list[int]) -> tuple[Experience, dict]:
        """sample -> score -> shape -> reference/critic -> Experience, and the batch's statistics.
        Rewards, baselines and the rows left out are decided over every sample; the reference and
        critic passes and the update see the rows the sampler keeps (ESRL eliminates some)."""
        draw = self.sampler(prompts, prompt_index)
        s, stats = draw.samples, draw.stats
        end = self.sampler.end_rewards(s)
        clipped = self.sampler.clipped(end)
        shaped = self.estimator.shape(self.normalizer(clipped), s.prompt_index)
        trains = self.loss_rows(clipped, s.prompt_index, draw.skip, stats)
        stats.update(self.reward_stats(s, end))
        keep = self.sampler.keep(s, trains, stats)
        self.counters["trained_sequences"] += len(keep)
        inputs = self.sampler.reward_inputs(s.prompts, s.answers)
        self.last_sample = (inputs.prompts[0], inputs.answers[0])
        sft_examples = sft_targets(self, s.prompts, s.answers, inputs) if self.cfg.add_sft_loss else [None] * len(end)
        exp, kl = self.experience(s.take(keep), end[keep], shaped[keep], trains[keep], take(sft_examples, keep))
        stats.update({"kl": float(kl.sum(1).mean()), "kl_ctl": self.kl.value})
        # the KL of all ranks' sequences, so kl_ctl stays the same on every rank
        n_all = dist.all_reduce_sum(float(len(keep)))
        self.kl.update(dist.all_reduce_sum(float(kl.sum())) / n_all, int(n_all))
        return exp, stats

    def experience(self, s: Samples, end: torch.Tensor, shaped: torch.Tensor, trains: torch.Tensor,
                   sft_examples: list) -> tuple[Experience, torch.Tensor]:
        """The actor, reference and critic passes over the rows `s`, KL-penalised token rewards from
        their shaped sequence rewards [B], advantages; `trains` [B] bool: the rows in the loss. Returns
        the experience and the per-token KL [B, S-1]."""
        cfg, P = self.cfg, s.prompt_len
        seq, attn, action_mask = s.sequences, s.attention_mask, s.action_mask
        self.rlhf.eval()
        with self.clock("actor_logprobs"):   # "old" log-probs, once, over the rows that train
            _, logprobs = forward_logprobs(self.rlhf.actor, seq, attn, P - 1, s.temperatures)
        with self.clock("reference_critic"):
            if self.rlhf.ref is not None:
                _, ref_logprobs = forward_logprobs(self.rlhf.ref, seq, attn, P - 1, s.temperatures)
            else:  # --remove_kl_penalty: no reference, so the KL term is exactly 0
                ref_logprobs = logprobs
            values = (token_values(self.rlhf.critic, seq, attn)[:, :-1] if self.rlhf.critic is not None
                      else torch.zeros_like(logprobs))
        self.rlhf.train()
        kl_ctl = self.kl.value if cfg.use_kl_in_reward else 0.0
        rewards, kl = kl_penalized_rewards(logprobs, ref_logprobs, action_mask, shaped.to(self.device), kl_ctl,
                                           cfg.kl_estimator if cfg.use_kl_in_reward else "k1")
        loss_mask = action_mask * trains.to(self.device, action_mask.dtype)[:, None]
        advantages, returns = self.estimator.advantages(rewards, values, action_mask, loss_mask)
        return Experience(seq, attn, action_mask, loss_mask, s.temperatures, s.rollout_logprobs, logprobs,
                          ref_logprobs, values, rewards, advantages, returns, end, list(s.prompt_index),
                          sft_examples), kl

    def loss_rows(self, end: torch.Tensor, prompt_index: list[int], skip: torch.Tensor, stats: dict) -> torch.Tensor:
        """[N] bool, the rows that enter the loss: all but the uniform groups (every sample one reward)
        under --drop_uniform_groups, else all but the uniform groups of prompts the sampler gave up on
        (`skip` [N]: ESRL's skipped prompts, a short refill's uniform fill)."""
        uniform = uniform_groups(end, prompt_index)
        left_out = uniform if self.cfg.drop_uniform_groups else uniform & skip
        if self.cfg.drop_uniform_groups:
            stats["dropped_uniform"] = float(uniform.float().mean())
        if self.cfg.dynamic_sampling:
            stats["esrl/left_out"] = float(left_out.float().mean())
        return ~left_out

    # -- a round -------------------------------------------------------------------------------
    def finish_round(self, exps: list[Experience]) -> dict:
        """Round-wide work once every generation batch is made (REINFORCE++'s whitening), and the
        round's statistics of the sampler: the log-prob mismatch and the time of each phase."""
        self.estimator.finish_round(exps)
        return {**mismatch_stats(exps), **self.phase_stats()}

    def phase_stats(self) -> dict:
        """Seconds of each rollout phase this round (the mean over ranks: phase/generation_s,
        phase/actor_logprobs_s, phase/scoring_s, phase/reference_critic_s) and the answer tokens all ranks
        generated per second of generation (phase/generated_tokens_per_s)."""
        seconds, counts = self.clock.pop()
        world = dist.world_size()
        out = {f"phase/{k}_s": dist.all_reduce_sum(seconds.get(k, 0.0)) / world
               for k in ("generation", "actor_logprobs", "scoring", "reference_critic")}
        tokens = dist.all_reduce_sum(counts.get("generated_tokens", 0.0))
        if out["phase/generation_s"] > 0:
            out["phase/generated_tokens_per_s"] = tokens / out["phase/generation_s"]
        return out

    def reward_stats(self, s: Samples, end: torch.Tensor) -> dict:
        """Rewards, lengths and stop rate of every sampled row."""
        stats = {f"reward/{k}": float(v.mean()) for k, v in s.scores.items()}
        stats.update({f"reward/{k}_std": float(v.float().std(unbiased=False)) for k, v in s.scores.items()})
        # sources that normalise their scores also report them as they came (e.g. COMET)
        stats.update({f"reward/{k}_raw": float(v.mean()) for k, v in s.raws.items()})
        stats.update({"reward/total": float(end.mean()), "reward/total_std": float(end.std(unbiased=False)),
                      "response_length": float(s.action_mask.sum(1).mean()),
                      "eos_rate": float(self.sampler.has_eos(s.answers).float().mean())})
        return stats

    @torch.no_grad()
    def evaluate(self, prompts: list[PromptExample]) -> dict[str, float]:
        return held_out_rewards(self.sampler, prompts, self.cfg.per_device_generation_batch_size)


def mismatch_stats(exps: list[Experience]) -> dict:
    """How far the recomputed old log-probs are from those recorded while sampling, over the answer
    tokens that train in the round, every rank's: rollout/logprob_diff_max and _mean of |recorded -
    recomputed|. ~0 when sampling and scoring see one distribution (fp32: ~1e-6); with --top_p /
    --top_k the recorded log-prob is of the truncated, renormalised distribution, so the difference
    is log(1 / kept mass) where a step truncated."""
    peak, total, count = 0.0, 0.0, 0.0
    for e in exps:
        d = (e.rollout_logprobs - e.logprobs).abs() * e.loss_mask
        peak = max(peak, float(d.max()) if d.numel() else 0.0)
        total, count = total + float(d.sum()), count + float(e.loss_mask.sum())
    count = dist.all_reduce_sum(count)
    return {"rollout/logprob_diff_max": dist.all_reduce_max(peak),
            "rollout/logprob_diff_mean": dist.all_reduce_sum(total) / max(count, 1.0)}


def sft_targets(maker, prompts: list[PromptExample], answers: list[list[int]], inputs: RewardInputs) -> list:
    """Each row's --add_sft_loss target: its prompt's reference answer, or with
    --update_reference_with_sampling the sampled answer where every source's raw scores, combined, rate
    it above the reference (scored without touching running statistics). `maker`: its cfg, sources
    and weights."""
    targets = [p.sft for p in prompts]
    if not maker.cfg.update_reference_with_sampling:
        return targets
    ref_ids = [[t for t in p.sft.labels if t != IGNORE_INDEX] if p.sft else [] for p in prompts]
    refs = RewardInputs(prompts=inputs.prompts, answers=[p.reference for p in prompts],
                        references=inputs.references, sources=inputs.sources, prompt_ids=inputs.prompt_ids,
                        answer_ids=ref_ids, messages=inputs.messages, columns=inputs.columns)
    sampled = combine({k: s.raw_scores(inputs).float().cpu() for k, s in maker.sources.items()}, maker.weights)
    reference = combine({k: s.raw_scores(refs).float().cpu() for k, s in maker.sources.items()}, maker.weights)
    for i, p in enumerate(prompts):
        if p.sft is not None and sampled[i] > reference[i]:
            targets[i] = Example(p.prompt_ids + answers[i], [IGNORE_INDEX] * len(p.prompt_ids) + answers[i])
    return targets
