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
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from transformers import LogitsProcessor, LogitsProcessorList

from training.step3_rlhf.esrl import (CapabilityEstimator, allocate, eliminate, kept_count, prompt_stats,
                                     sampling_need, second_pass_size, sequence_confidence, skipped, temperatures)
from utils import distributed as dist
from utils.data import IGNORE_INDEX, Example
from utils.data.rlhf import PromptExample
from utils.generation import generation_model, left_pad
from utils.losses import (adaptive_kl_coef, gae, group_baseline, grpo_advantages, kl_penalized_rewards,
                          masked_moments, reward_to_go, standardize, token_logprobs, uniform_groups, whiten)
from utils.models import lm_logits, token_values
from utils.rewards import RewardInputs, combine


def take(v, idx: list[int]):
    """Rows `idx` of a tensor (first dimension), a list, or each tensor of a dict."""
    if isinstance(v, dict):
        return {k: take(x, idx) for k, x in v.items()}
    return [v[i] for i in idx] if isinstance(v, list) else v[idx]


@dataclass
class Experience:
    """One generation batch. S = prompt length (left-padded) + answer length (right-padded);
    position t of the [B, S-1] tensors is the prediction of token t+1."""
    sequences: torch.Tensor       # [B, S] long
    attention_mask: torch.Tensor  # [B, S] long
    action_mask: torch.Tensor     # [B, S-1] float, 1 where token t+1 is an answer token (EOS included)
    loss_mask: torch.Tensor       # [B, S-1] float, action_mask less the rows left out of the update
                                  #   (--drop_uniform_groups, ESRL's skipped prompts)
    logprobs: torch.Tensor        # [B, S-1] actor log-probs when sampled ("old")
    ref_logprobs: torch.Tensor    # [B, S-1] reference log-probs
    values: torch.Tensor          # [B, S-1] critic values when sampled (zeros without a critic)
    rewards: torch.Tensor         # [B, S-1] KL-penalised per-token rewards
    advantages: torch.Tensor      # [B, S-1]
    returns: torch.Tensor         # [B, S-1]
    end_rewards: torch.Tensor     # [B] combined sequence reward, before clipping
    prompt_index: list[int]       # which PromptExample each row came from
    sft_examples: list            # [B] the --add_sft_loss target of each row (Example or None)

    def rows(self, idx: list[int]) -> "Experience":
        return Experience(**{f.name: take(getattr(self, f.name), idx) for f in fields(self)})


@dataclass
class Samples:
    """Sampled and scored rows of one generation batch, laid out as in `Experience` (prompts
    left-padded to width P, answers right-padded)."""
    prompts: list[PromptExample]
    prompt_index: list[int]       # which PromptExample each row came from
    rows: list[int]               # each row's prompt position in the generation batch
    answers: list[list[int]]      # answer ids (EOS kept when generated)
    sequences: torch.Tensor       # [B, S] long
    attention_mask: torch.Tensor  # [B, S] long
    action_mask: torch.Tensor     # [B, S-1] float
    logprobs: torch.Tensor        # [B, S-1] the actor's, when sampled
    scores: dict                  # reward source name -> [B] scores
    raws: dict                    # name -> [B] unnormalised scores of the sources that normalise
    base: torch.Tensor            # [B] combined reward + --reward_bias (no EOS penalty yet)
    prompt_len: int               # P

    def take(self, idx: list[int]) -> "Samples":
        return Samples(**{f.name: take(getattr(self, f.name), idx) for f in fields(self) if f.name != "prompt_len"},
                       prompt_len=self.prompt_len)

    def widened(self, prompt_len: int, width: int, pad_id: int) -> "Samples":
        """The same rows with prompts left-padded to `prompt_len` and sequences right-padded to `width`
        (the [B, S-1] tensors shift with them, so each value stays with its token)."""
        left = prompt_len - self.prompt_len
        pad = (left, width - left - self.sequences.shape[1])
        return Samples(self.prompts, self.prompt_index, self.rows, self.answers,
                       F.pad(self.sequences, pad, value=pad_id), F.pad(self.attention_mask, pad),
                       F.pad(self.action_mask, pad), F.pad(self.logprobs, pad), self.scores, self.raws, self.base,
                       prompt_len)

    @staticmethod
    def cat(a: "Samples", b: "Samples", pad_id: int) -> "Samples":
        """a's rows, then b's, in one layout."""
        P = max(a.prompt_len, b.prompt_len)
        width = P + max(x.sequences.shape[1] - x.prompt_len for x in (a, b))
        a, b = a.widened(P, width, pad_id), b.widened(P, width, pad_id)
        return Samples(a.prompts + b.prompts, a.prompt_index + b.prompt_index, a.rows + b.rows, a.answers + b.answers,
                       *(torch.cat([getattr(a, k), getattr(b, k)]) for k in
                         ("sequences", "attention_mask", "action_mask", "logprobs")),
                       {k: torch.cat([a.scores[k], b.scores[k]]) for k in a.scores},
                       {k: torch.cat([a.raws[k], b.raws[k]]) for k in a.raws}, torch.cat([a.base, b.base]), P)


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


def forward_logprobs(model, seq: torch.Tensor, attn: torch.Tensor, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced pass over [B, S] sequences: (logits [B, S-start, V] of positions start.., the
    log-prob of each next token [B, S-1], 0 before `start`). Only the answer's predictions are
    used (start = P-1 for P prompt positions), so the LM head runs from there on."""
    logits = lm_logits(model, seq, attn, keep=seq.shape[1] - start)
    return logits, F.pad(token_logprobs(logits, seq[:, start:]), (start, 0))


class RowTemperature(LogitsProcessor):
    """Divide each row's next-token logits by its own temperature (ESRL's per-prompt temperature)."""

    def __init__(self, temps: torch.Tensor):
        self.temps = temps

    def __call__(self, input_ids, scores):
        return scores / self.temps.to(scores.device, scores.dtype)[:, None]


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
        """Sample one answer per row (stage 1 of two-stage sampling: KV cache, no autograd graph).
        temps: [B] per-row temperatures (default: --temperature for all); greedy: argmax decoding.
        Returns (sequences [B,S], attention_mask [B,S], answer ids per row (EOS kept when
        generated), prompt length P)."""
        cfg, tok = self.cfg, self.tok
        ids, mask = left_pad([p.prompt_ids for p in prompts], tok.pad_token_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        self.rlhf.actor.eval()
        per_row = LogitsProcessorList([RowTemperature(temps)]) if temps is not None else None
        sampling = {} if greedy else {"temperature": 1.0 if per_row else cfg.temperature, "top_p": cfg.top_p,
                                      "top_k": cfg.top_k or None, "logits_processor": per_row}
        if cfg.cache_implementation and not self.rlhf.hybrid:
            sampling["cache_implementation"] = cfg.cache_implementation
        with generation_model(self.rlhf.actor, gather=cfg.ds3_gather_for_generation,
                              world_size=dist.world_size()) as (model, synced):
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=cfg.max_answer_seq_len,
                                 do_sample=not greedy, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id, synced_gpus=synced, use_cache=True, **sampling)
        self.rlhf.actor.train()
        P = ids.shape[1]
        answers = []
        for row in out[:, P:].tolist():
            cut = row[: row.index(tok.eos_token_id) + 1] if tok.eos_token_id in row else row
            answers.append(cut)
        N = max(1, max(len(a) for a in answers))
        ans = torch.full((len(prompts), N), tok.pad_token_id, dtype=torch.long)
        amask = torch.zeros((len(prompts), N), dtype=torch.long)
        for i, a in enumerate(answers):
            ans[i, :len(a)] = torch.tensor(a, dtype=torch.long)
            amask[i, :len(a)] = 1
        seq = torch.cat([ids.cpu(), ans], 1)
        attn = torch.cat([mask.cpu(), amask], 1)
        return seq.to(self.device), attn.to(self.device), answers, P

    # -- experience ----------------------------------------------------------------------------
    def sample(self, prompts: list[PromptExample], prompt_index: list[int], rows: list[int],
               temps: torch.Tensor | None = None) -> Samples:
        """One pass of two-stage sampling over `rows` (positions in `prompts`, one per sample): generate
        with no graph (stage 1), one teacher-forced actor pass for the log-probs of every sampled token
        (stage 2), then the reward sources. temps: [len(rows)] per-row temperatures, or None."""
        t = time.perf_counter()
        chosen = [prompts[r] for r in rows]
        seq, attn, answers, P = self.generate(chosen, temps)
        self.t_gen += time.perf_counter() - t
        action_mask = attn[:, 1:].clone().float()
        action_mask[:, : P - 1] = 0
        self.rlhf.eval()
        _, logprobs = forward_logprobs(self.rlhf.actor, seq, attn, P - 1)
        self.counters["sampled_sequences"] += len(rows)
        self.counters["sampled_tokens"] += int(action_mask.sum())
        inputs = self.reward_inputs(chosen, answers)
        scores = {name: src(inputs) for name, src in self.sources.items()}
        raws = {name: src.raw for name, src in self.sources.items() if src.raw is not None}
        return Samples(chosen, [prompt_index[r] for r in rows], list(rows), answers, seq, attn, action_mask, logprobs,
                       scores, raws, combine(scores, self.weights) + self.cfg.reward_bias, P)

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
        conf = prompt_stats(sequence_confidence(s.logprobs, s.action_mask), rows, n)[0]
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
        inputs = self.reward_inputs(s.prompts, s.answers)
        sft_examples = self.sft_targets(s.prompts, s.answers, inputs) if cfg.add_sft_loss else [None] * len(end)
        self.last_sample = (inputs.prompts[0], inputs.answers[0])
        # rewards, baselines and left-out groups over every sample; the passes below over the kept ones
        shaped = self.shape_rewards(self.normalizer(end), s.prompt_index)
        enter = self.loss_rows(end, s.prompt_index, skip, stats)
        stats.update(self.reward_stats(s, end))
        keep = list(range(len(s.rows)))
        if self.esrl is not None:
            conf = sequence_confidence(s.logprobs, s.action_mask).cpu()
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
            _, ref_logprobs = forward_logprobs(self.rlhf.ref, seq, attn, P - 1)
        else:  # --remove_kl_penalty: no reference, so the KL term is exactly 0
            ref_logprobs = logprobs
        if self.rlhf.critic is not None:
            values = token_values(self.rlhf.critic, seq, attn)[:, :-1]
        else:
            values = torch.zeros_like(logprobs)
        self.rlhf.train()
        kl_ctl = self.kl.value if cfg.use_kl_in_reward else 0.0
        rewards, kl = kl_penalized_rewards(logprobs, ref_logprobs, action_mask, shaped.to(self.device), kl_ctl,
                                           cfg.clip_reward_value, cfg.kl_estimator if cfg.use_kl_in_reward else "k1")
        if cfg.advantage_estimator == "gae":
            advantages, returns = gae(rewards, values, action_mask, cfg.gamma, cfg.lam)
        else:
            advantages = returns = reward_to_go(rewards, action_mask, cfg.gamma)
        if cfg.whiten_advantages and cfg.advantage_estimator in ("gae", "rloo"):
            advantages = whiten(advantages, action_mask)
        loss_mask = action_mask * enter.to(self.device, action_mask.dtype)[:, None]
        return Experience(seq, attn, action_mask, loss_mask, logprobs, ref_logprobs, values, rewards, advantages,
                          returns, end, list(s.prompt_index), sft_examples), kl

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

    def has_eos(self, answers: list[list[int]]) -> torch.Tensor:
        """[B] bool: the answer ended with EOS (within --max_answer_seq_len)."""
        return torch.tensor([bool(a) and a[-1] == self.tok.eos_token_id for a in answers])

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
        moments = sum(masked_moments(e.advantages, e.action_mask) for e in exps)
        moments = torch.tensor([dist.all_reduce_sum(v) for v in moments.tolist()], dtype=torch.float64)
        for e in exps:
            e.advantages = whiten(e.advantages, e.action_mask, moments=moments)
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
        texts = [tok.decode([t for t in a if t != tok.eos_token_id], skip_special_tokens=True) for a in answers]
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
            _, _, answers, _ = self.generate(batch, greedy=True)
            inputs = self.reward_inputs(batch, answers)
            scores = {name: src.raw_scores(inputs).float().cpu() for name, src in self.sources.items()}
            scores["total"] = combine(scores, self.weights)
            for k, v in scores.items():
                sums[k] = sums.get(k, 0.0) + float(v[:real].sum())
        return {f"eval/reward/{k}": dist.all_reduce_sum(v) / max(len(prompts), 1) for k, v in sums.items()}
