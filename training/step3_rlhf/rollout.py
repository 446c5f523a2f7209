"""PPO's rollout: sample answers, score them and shape rewards into an `Experience`.

One generation batch: sample with no autograd graph (stage 1) -> one teacher-forced forward of
the actor over all samples (stage 2: the old log-probs, which the policy loss shares) -> reward
sources. With --dynamic_sampling that is ESRL's first pass, and a second pass samples more where
the first says the samples teach (`esrl.py`); then the most confident samples are dropped. ->
one teacher-forced forward each of reference and critic -> per-token KL penalty and clipped end
reward -> GAE or a critic-free estimator (GRPO, RLOO, REINFORCE++: reward-to-go of the shaped
rewards; README "Advantage estimators"). Every formula is a pure function in `utils/losses.py`
or `esrl.py`; what steers the shaping (the KL coefficient, the reward normaliser, ESRL's
estimates, the baseline) is computed over all ranks, so every rank holds the same values, and
lives in `ExperienceMaker.state_dict()`.
"""
from __future__ import annotations

import math
import time
from collections import deque

import torch
import torch.nn.functional as F

from training.step3_rlhf.esrl import (CapabilityEstimator, allocate, answer_confidence, eliminate, kept_count,
                                     prompt_stats, sampling_need, second_pass_size, skipped, temperatures)
from training.step3_rlhf.experience import Experience, Samples, take
from utils import distributed as dist
from utils.data import IGNORE_INDEX, Example
from utils.data.rlhf import PromptExample
from utils.generation import SamplingSpec, generation_model, ignored_generation_settings, sample
from utils.losses import (adaptive_kl_coef, gae, group_baseline, grpo_advantages, kl_penalized_rewards,
                          masked_moments, reward_to_go, standardize, token_logprobs, uniform_groups, whiten)
from utils.models import lm_logits, stop_ids, token_values
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


def forward_logprobs(model, seq: torch.Tensor, attn: torch.Tensor, start: int = 0,
                     temperatures: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced pass over [B, S] sequences: (logits [B, S-start, V] of positions start.., divided
    by each row's temperature [B] when given, and the log-prob of each next token under them
    [B, S-1], 0 before `start`). Scoring at the temperature that sampled keeps old log-probs, the
    ratio and the KL about the policy that drew the tokens. Only the answer's predictions are used
    (start = P-1 for P prompt positions), so the LM head runs from there on."""
    logits = lm_logits(model, seq, attn, keep=seq.shape[1] - start)
    if temperatures is not None:
        logits = logits / temperatures.to(logits.device, logits.dtype)[:, None, None]
    return logits, F.pad(token_logprobs(logits, seq[:, start:]), (start, 0))


class ExperienceMaker:
    """Turns generation batches of prompts into `Experience` (and greedy held-out scores)."""

    def __init__(self, cfg, engine, tokenizer, sources: dict, weights: dict):
        self.cfg, self.rlhf, self.tok = cfg, engine, tokenizer
        self.sources, self.weights = sources, weights
        self.device = dist.device()
        self.kl = AdaptiveKLController(cfg.kl_ctl, cfg.target_kl if cfg.adaptive_kl else None, cfg.kl_horizon)
        self.normalizer = RewardNormalizer(cfg.reward_normalization, cfg.reward_queue_size)
        self.esrl = (CapabilityEstimator(cfg.esrl_confidence_weight, cfg.esrl_capability_decay)
                     if cfg.dynamic_sampling else None)
        self.baseline = None   # moving average of rewards: the REINFORCE baseline of single samples
        # per process: sequences and answer tokens sampled (and rewarded), sequences through the reference
        # and critic passes and the update
        self.counters = {"sampled_sequences": 0, "sampled_tokens": 0, "scored_sequences": 0}
        self.t_gen = 0.0   # seconds of generation in the batch in progress
        self.last_sample: tuple[str, str] | None = None   # (prompt, answer) of the latest round, for printing
        actor = getattr(engine.actor, "module", engine.actor)
        self.stops = stop_ids(actor, tokenizer)
        self.spec = SamplingSpec(cfg.max_answer_seq_len, self.stops, tokenizer.pad_token_id, cfg.temperature,
                                 cfg.top_k, cfg.top_p)
        ignored = ignored_generation_settings(getattr(actor, "generation_config", None))
        if ignored:
            dist.print_rank0("[sampling] the actor's generation_config sets " +
                             ", ".join(f"{k}={v}" for k, v in ignored.items()) + ": ignored; step 3 samples "
                             "from --temperature, --top_p and --top_k alone, the distribution its log-probs score")

    def state_dict(self) -> dict:
        """The reward shaping's running state (equal on every rank) and this rank's counters."""
        return {"kl_ctl": self.kl.value, "normalizer": self.normalizer.state_dict(),
                "esrl": self.esrl.state_dict() if self.esrl is not None else None, "baseline": self.baseline,
                "counters": dict(self.counters), "sources": {k: v.state_dict() for k, v in self.sources.items()}}

    def load_state_dict(self, s: dict) -> None:
        self.kl.value, self.baseline, self.counters = s["kl_ctl"], s["baseline"], dict(s["counters"])
        self.normalizer.load_state_dict(s["normalizer"])
        if self.esrl is not None and s["esrl"] is not None:
            self.esrl.load_state_dict(s["esrl"])
        for name, st in s["sources"].items():
            self.sources[name].load_state_dict(st)

    # -- sampling ----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: list[PromptExample], temps: torch.Tensor | None = None, greedy: bool = False):
        """Draw one answer per row with the sampling specification (stage 1 of two-stage sampling:
        KV cache, no autograd graph). temps: [B] per-row temperatures (default: --temperature);
        greedy: argmax decoding. Returns `utils.generation.Drawn`."""
        cfg = self.cfg
        spec = SamplingSpec(**{**self.spec.__dict__, "greedy": greedy})
        self.rlhf.actor.eval()
        with generation_model(self.rlhf.actor, gather=cfg.ds3_gather_for_generation,
                              world_size=dist.world_size()) as (model, synced):
            drawn = sample(model, [p.prompt_ids for p in prompts], spec, temps, device=self.device,
                           synced_gpus=synced,
                           cache_implementation=None if self.rlhf.hybrid else cfg.cache_implementation)
        self.rlhf.actor.train()
        return drawn

    # -- experience ----------------------------------------------------------------------------
    def sample(self, prompts: list[PromptExample], prompt_index: list[int], rows: list[int],
               temps: torch.Tensor | None = None) -> Samples:
        """One pass of two-stage sampling over `rows` (positions in `prompts`, one per sample): generate
        with no graph (stage 1), one teacher-forced actor pass for the log-probs of every sampled token
        at its row's temperature (stage 2), then the reward sources. temps: [len(rows)] per-row
        temperatures, or None (--temperature)."""
        t = time.perf_counter()
        chosen = [prompts[r] for r in rows]
        if temps is None:
            temps = torch.full((len(rows),), float(self.cfg.temperature))
        temps = temps.float()
        d = self.generate(chosen, temps)
        self.t_gen += time.perf_counter() - t
        seq, attn, P = d.sequences, d.attention_mask, d.prompt_len
        action_mask = attn[:, 1:].clone().float()
        action_mask[:, : P - 1] = 0
        rollout_logprobs = F.pad(d.logprobs, (P - 1, 0))
        self.rlhf.eval()
        logits, logprobs = forward_logprobs(self.rlhf.actor, seq, attn, P - 1, temps.to(self.device))
        confidence = None
        if self.esrl is not None:
            # at temperature 1: ESRL's own temperature choice must not make a prompt look surer
            confidence = answer_confidence(logits[:, :-1] * temps.to(logits.device, logits.dtype)[:, None, None],
                                           action_mask[:, P - 1:]).cpu()
        del logits
        self.counters["sampled_sequences"] += len(rows)
        self.counters["sampled_tokens"] += int(action_mask.sum())
        inputs = self.reward_inputs(chosen, d.answers)
        scores = {name: src(inputs) for name, src in self.sources.items()}
        raws = {name: src.raw for name, src in self.sources.items() if src.raw is not None}
        return Samples(chosen, [prompt_index[r] for r in rows], list(rows), d.answers, seq, attn, action_mask,
                       temps.to(self.device), rollout_logprobs, logprobs, confidence, scores, raws,
                       combine(scores, self.weights) + self.cfg.reward_bias, P)

    def sample_esrl(self, prompts: list[PromptExample], prompt_index: list[int]) -> tuple[Samples, torch.Tensor, dict]:
        """ESRL's two passes (esrl.py): --esrl_min_samples of every prompt, then the rest of the budget to
        the prompts whose first pass says more samples teach. Returns both passes' samples (the second's
        join their prompts' groups), per row whether its prompt skipped the second pass, and statistics."""
        cfg, est, n = self.cfg, self.esrl, len(prompts)
        m, cap = cfg.esrl_min_samples, cfg.esrl_max_samples - cfg.esrl_min_samples
        temps = temperatures(est.capability(prompt_index), cfg.esrl_temperature_min, cfg.esrl_temperature_max)
        rows = [i for i in range(n) for _ in range(m)]
        s = self.sample(prompts, prompt_index, rows, temps[rows])
        mean, spread, agree = prompt_stats(self.with_eos_penalty(s.base, s.answers), rows, n)
        conf = prompt_stats(s.confidence, rows, n)[0]
        est.update(self._gather(dict(zip(prompt_index, conf.tolist()))),
                   self._gather(dict(zip(prompt_index, mean.tolist()))))
        capability = est.capability(prompt_index)
        skip = skipped(mean, agree, capability, est.reward_best, est.reward_worst, cfg.esrl_skip_capability)
        need = sampling_need(capability, spread, math.sqrt(est.reward_var), skip)
        # every rank samples the most any rank wants, so generation and scoring stay in lockstep
        total = int(dist.all_reduce_max(second_pass_size(need, cap, n * (cfg.num_samples_per_prompt - m))))
        if total:
            extra = [i for i, e in enumerate(allocate(need, cap, total)) for _ in range(e)]
            s = Samples.cat(s, self.sample(prompts, prompt_index, extra, temps[extra]), self.tok.pad_token_id)
        stats = {"esrl/capability": float(capability.mean()), "esrl/temperature": float(temps.mean()),
                 "esrl/samples_per_prompt": len(s.rows) / n, "esrl/skipped": float(skip.float().mean()),
                 "esrl/second_pass": total / n}
        return s, skip[s.rows], stats

    @torch.no_grad()
    def make_experience(self, prompts: list[PromptExample], prompt_index: list[int]) -> tuple[Experience, dict]:
        cfg = self.cfg
        t0, self.t_gen = time.perf_counter(), 0.0
        if self.esrl is not None:
            s, skip, stats = self.sample_esrl(prompts, prompt_index)
            kept = kept_count(len(s.rows), cfg.esrl_eliminate_ratio)
        else:
            k = cfg.num_samples_per_prompt
            s = self.sample(prompts, prompt_index, [i for i in range(len(prompts)) for _ in range(k)])
            skip, stats = torch.zeros(len(s.rows), dtype=torch.bool), {}
            kept = len(s.rows)
        self.counters["scored_sequences"] += kept
        end = s.base
        if cfg.shuffle_reward_score_randomly:
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.counters["scored_sequences"])
            end = end[torch.randperm(len(end), generator=g)]
        end = self.with_eos_penalty(end, s.answers)
        # the reward is clipped, never a shaped value: a group estimator's advantages keep summing to 0
        clipped = end.clamp(-cfg.clip_reward_value, cfg.clip_reward_value)
        inputs = self.reward_inputs(s.prompts, s.answers)
        sft_examples = self.sft_targets(s.prompts, s.answers, inputs) if cfg.add_sft_loss else [None] * len(end)
        self.last_sample = (inputs.prompts[0], inputs.answers[0])
        # rewards, baselines and left-out groups over every sample; the passes below over the kept ones
        shaped = self.shape_rewards(self.normalizer(clipped), s.prompt_index)
        enter = self.loss_rows(clipped, s.prompt_index, skip, stats)
        stats.update(self.reward_stats(s, end))
        keep = list(range(len(s.rows)))
        if self.esrl is not None:
            conf = s.confidence
            keep = eliminate(conf, cfg.esrl_eliminate_ratio, ~enter).tolist()
            stats.update({"esrl/confidence": float(conf.mean()), "esrl/kept": len(keep) / len(s.rows)})
        exp, kl = self.experience(s.take(keep), end[keep], shaped[keep], enter[keep], take(sft_examples, keep))
        stats.update({"kl": float(kl.sum(1).mean()), "kl_ctl": self.kl.value, "time/generation": self.t_gen,
                      "time/experience": time.perf_counter() - t0 - self.t_gen})
        # the KL of all ranks' sequences, so kl_ctl stays the same on every rank
        n_all = dist.all_reduce_sum(float(len(keep)))
        self.kl.update(dist.all_reduce_sum(float(kl.sum())) / n_all, int(n_all))
        return exp, stats

    def experience(self, s: Samples, end: torch.Tensor, shaped: torch.Tensor, enter: torch.Tensor,
                   sft_examples: list) -> tuple[Experience, torch.Tensor]:
        """The reference and critic passes over the rows `s`, KL-penalised token rewards from their
        shaped sequence rewards [B] and advantages; `enter` [B] bool: the rows in the loss.
        Returns the experience and the per-token KL [B, S-1]."""
        cfg, P = self.cfg, s.prompt_len
        seq, attn, action_mask, logprobs = s.sequences, s.attention_mask, s.action_mask, s.logprobs
        if self.rlhf.ref is not None:
            _, ref_logprobs = forward_logprobs(self.rlhf.ref, seq, attn, P - 1, s.temperatures)
        else:  # --remove_kl_penalty: no reference, so the KL term is exactly 0
            ref_logprobs = logprobs
        if self.rlhf.critic is not None:
            values = token_values(self.rlhf.critic, seq, attn)[:, :-1]
        else:
            values = torch.zeros_like(logprobs)
        self.rlhf.train()
        kl_ctl = self.kl.value if cfg.use_kl_in_reward else 0.0
        rewards, kl = kl_penalized_rewards(logprobs, ref_logprobs, action_mask, shaped.to(self.device), kl_ctl,
                                           cfg.kl_estimator if cfg.use_kl_in_reward else "k1")
        if cfg.advantage_estimator == "gae":
            advantages, returns = gae(rewards, values, action_mask, cfg.gamma, cfg.lam)
        else:
            advantages = returns = reward_to_go(rewards, action_mask, cfg.gamma)
        loss_mask = action_mask * enter.to(self.device, action_mask.dtype)[:, None]
        if cfg.whiten_advantages and cfg.advantage_estimator in ("gae", "rloo"):
            # over the rows that train: rows left out must not move the mean and std of the others
            advantages = whiten(advantages, loss_mask)
        return Experience(seq, attn, action_mask, loss_mask, s.temperatures, s.rollout_logprobs, logprobs,
                          ref_logprobs, values, rewards, advantages, returns, end, list(s.prompt_index),
                          sft_examples), kl

    def loss_rows(self, end: torch.Tensor, prompt_index: list[int], skip: torch.Tensor, stats: dict) -> torch.Tensor:
        """[N] bool, the rows that enter the loss: all but the uniform groups (every sample one reward)
        under --drop_uniform_groups, else all but the uniform groups of prompts ESRL skipped (`skip` [N])."""
        uniform = uniform_groups(end, prompt_index)
        left_out = uniform if self.cfg.drop_uniform_groups else uniform & skip
        if self.cfg.drop_uniform_groups:
            stats["dropped_uniform"] = float(uniform.float().mean())
        if self.esrl is not None:
            stats["esrl/left_out"] = float(left_out.float().mean())
        return ~left_out

    def reward_stats(self, s: Samples, end: torch.Tensor) -> dict:
        """Rewards, lengths and EOS rate of every sampled row."""
        stats = {f"reward/{k}": float(v.mean()) for k, v in s.scores.items()}
        stats.update({f"reward/{k}_std": float(v.float().std(unbiased=False)) for k, v in s.scores.items()})
        # sources that normalise their scores also report them as they came (e.g. COMET)
        stats.update({f"reward/{k}_raw": float(v.mean()) for k, v in s.raws.items()})
        stats.update({"reward/total": float(end.mean()), "reward/total_std": float(end.std(unbiased=False)),
                      "response_length": float(s.action_mask.sum(1).mean()),
                      "eos_rate": float(self.has_eos(s.answers).float().mean())})
        return stats

    @staticmethod
    def mismatch_stats(exps: list[Experience]) -> dict:
        """How far the recomputed old log-probs are from those recorded while sampling, over the
        answer tokens that train in the round, every rank's: rollout/logprob_diff_max and _mean of
        |recorded - recomputed|. ~0 when sampling and scoring see one distribution (fp32: ~1e-6); with
        --top_p / --top_k the recorded log-prob is of the truncated, renormalised distribution, so the
        difference is log(1 / kept mass) where a step truncated."""
        peak, total, count = 0.0, 0.0, 0.0
        for e in exps:
            d = (e.rollout_logprobs - e.logprobs).abs() * e.loss_mask
            peak = max(peak, float(d.max()) if d.numel() else 0.0)
            total, count = total + float(d.sum()), count + float(e.loss_mask.sum())
        count = dist.all_reduce_sum(count)
        return {"rollout/logprob_diff_max": dist.all_reduce_max(peak),
                "rollout/logprob_diff_mean": dist.all_reduce_sum(total) / max(count, 1.0)}

    def has_eos(self, answers: list[list[int]]) -> torch.Tensor:
        """[B] bool: the answer ended with a stop id (within --max_answer_seq_len)."""
        return torch.tensor([bool(a) and a[-1] in self.stops for a in answers])

    def with_eos_penalty(self, end: torch.Tensor, answers: list[list[int]]) -> torch.Tensor:
        """Sequence rewards [B] plus --missing_eos_penalty on the answers that end without EOS."""
        if self.cfg.missing_eos_penalty is None:
            return end
        return end + self.cfg.missing_eos_penalty * (~self.has_eos(answers)).float()

    def shape_rewards(self, end: torch.Tensor, prompt_index: list[int]) -> torch.Tensor:
        """Sequence rewards [N] as the estimator credits them: GRPO and RLOO compare each sample with
        its prompt's other samples; GAE does too under ESRL (its groups of samples are free baselines);
        REINFORCE++ and plain GAE take them as they are."""
        est = self.cfg.advantage_estimator
        if est == "grpo":
            return grpo_advantages(end, prompt_index, self.cfg.norm_adv_by_std_in_grpo,
                                   fallback=self.moving_baseline(end))
        if est == "rloo" or (est == "gae" and self.esrl is not None):
            return end - group_baseline(end, prompt_index, self.moving_baseline(end))
        return end

    def finish_round(self, exps: list[Experience]) -> None:
        """REINFORCE++: whiten the advantages over the whole round, every rank's rows at once (the
        other estimators finish per generation batch)."""
        cfg = self.cfg
        if cfg.advantage_estimator != "reinforce_pp" or not cfg.whiten_advantages:
            return
        moments = sum(masked_moments(e.advantages, e.loss_mask) for e in exps)
        moments = torch.tensor([dist.all_reduce_sum(v) for v in moments.tolist()], dtype=torch.float64)
        for e in exps:
            e.advantages = whiten(e.advantages, e.loss_mask, moments=moments)
            e.returns = e.advantages

    def moving_baseline(self, end: torch.Tensor) -> float:
        """The baseline of a sample with no siblings: the moving average of round means of all ranks'
        rewards before this round (this round's mean in the first). Folds this round in."""
        m = dist.all_reduce_sum(float(end.mean())) / dist.world_size()
        fallback = self.baseline if self.baseline is not None else m
        d = self.cfg.baseline_decay
        self.baseline = m if self.baseline is None else d * self.baseline + (1 - d) * m
        return fallback

    def sft_targets(self, prompts: list[PromptExample], answers: list[list[int]], inputs: RewardInputs) -> list:
        """Each row's --add_sft_loss target: its prompt's reference answer, or with
        --update_reference_with_sampling the sampled answer where every source's raw scores, combined,
        rate it above the reference (scored without touching running statistics)."""
        targets = [p.sft for p in prompts]
        if not self.cfg.update_reference_with_sampling:
            return targets
        ref_ids = [[t for t in p.sft.labels if t != IGNORE_INDEX] if p.sft else [] for p in prompts]
        refs = RewardInputs(prompts=inputs.prompts, answers=[p.reference for p in prompts],
                            references=inputs.references, sources=inputs.sources, prompt_ids=inputs.prompt_ids,
                            answer_ids=ref_ids, messages=inputs.messages, columns=inputs.columns)
        sampled = combine({k: s.raw_scores(inputs).float().cpu() for k, s in self.sources.items()}, self.weights)
        reference = combine({k: s.raw_scores(refs).float().cpu() for k, s in self.sources.items()}, self.weights)
        for i, p in enumerate(prompts):
            if p.sft is not None and sampled[i] > reference[i]:
                targets[i] = Example(p.prompt_ids + answers[i], [IGNORE_INDEX] * len(p.prompt_ids) + answers[i])
        return targets

    def reward_inputs(self, prompts: list[PromptExample], answers: list[list[int]]) -> RewardInputs:
        tok = self.tok
        texts = [tok.decode([t for t in a if t not in self.stops], skip_special_tokens=True) for a in answers]
        return RewardInputs(prompts=[p.prompt for p in prompts], answers=texts,
                            references=[p.reference for p in prompts], sources=[p.source for p in prompts],
                            prompt_ids=[p.prompt_ids for p in prompts], answer_ids=answers,
                            messages=[p.messages for p in prompts], columns=[p.columns for p in prompts])

    @staticmethod
    def _gather(d: dict[int, float]) -> dict[int, float]:
        out: dict[int, float] = {}
        for part in dist.all_gather_object(d):
            out.update(part)
        return out

    # -- held-out evaluation -------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, prompts: list[PromptExample]) -> dict[str, float]:
        """Greedy answers to held-out prompts (sharded over ranks), scored by every reward source
        without touching running statistics; returns eval/reward/<name> means over all prompts."""
        bs = self.cfg.per_device_generation_batch_size
        rank, world = dist.rank(), dist.world_size()
        per_rank = -(-len(prompts) // world)
        mine = list(range(rank * per_rank, min((rank + 1) * per_rank, len(prompts))))
        # equal work on every rank (ZeRO-3 forwards are collective): pad with a repeat, not counted
        n_real = len(mine)
        mine += [mine[-1] if mine else 0] * (per_rank - n_real)
        sums: dict[str, float] = {}
        for start in range(0, per_rank, bs):
            batch = [prompts[i] for i in mine[start:start + bs]]
            real = max(0, min(n_real - start, len(batch)))
            answers = self.generate(batch, greedy=True).answers
            inputs = self.reward_inputs(batch, answers)
            scores = {name: src.raw_scores(inputs).float().cpu() for name, src in self.sources.items()}
            scores["total"] = combine(scores, self.weights)
            for k, v in scores.items():
                sums[k] = sums.get(k, 0.0) + float(v[:real].sum())
        return {f"eval/reward/{k}": dist.all_reduce_sum(v) / max(len(prompts), 1) for k, v in sums.items()}
