"""Step 3's samplers: a generation batch of prompts -> scored `Samples`, which prompts ESRL skipped,
and which rows go on to the reference, critic and update.

`Sampler.draw` is one generation pass: `utils.generation.sample` with no autograd graph under the one
sampling specification built from the flags (it records each drawn token's log-prob), then every
reward source. The teacher-forced pass of two-stage sampling (the old log-probs the policy loss
shares) runs later, in the rollout, over the rows the sampler keeps. A sampler is called once per
generation batch:

    Sampler         --num_samples_per_prompt answers of every prompt, in one pass
    RefillSampler   the same, and uniform groups (every sample one reward) replaced by new prompts'
                    groups until the batch holds as many groups that teach (DAPO's dynamic sampling)
    ESRLSampler     ESRL's planned or two-pass sampling on a group budget, and its elimination of
                    confident samples
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from training.step3_rlhf.esrl import (CapabilityEstimator, allocate, answer_confidence, eliminate, prompt_stats,
                                     sampling_need, second_pass_size, skipped, temperatures)
from training.step3_rlhf.experience import Samples
from utils import distributed as dist
from utils.data.rlhf import PromptExample
from utils.generation import SamplingSpec, generation_model, ignored_generation_settings, sample
from utils.losses import token_logprobs, uniform_groups
from utils.models import lm_logits, stop_ids
from utils.errors import TrainingHalted
from utils.rewards import RewardInputs, combine


def forward_logprobs(model, seq: torch.Tensor, attn: torch.Tensor, start: int = 0,
                     temperatures: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced pass over [B, S] sequences: (the model's logits [B, S-start, V] of positions
    start.., and the log-prob of each next token [B, S-1], 0 before `start`, under the logits divided
    by each row's temperature [B] when given). Scoring at the temperature that sampled keeps old
    log-probs, the ratio and the KL about the policy that drew the tokens. Only the answer's
    predictions are used (start = P-1 for P prompt positions), so the LM head runs from there on."""
    logits = lm_logits(model, seq, attn, keep=seq.shape[1] - start)
    tempered = logits if temperatures is None else logits / temperatures.to(logits.device, logits.dtype)[:, None, None]
    return logits, F.pad(token_logprobs(tempered, seq[:, start:]), (start, 0))


def grouped(n: int, k: int) -> list[int]:
    """Each of n prompt positions k times in a row: [0]*k + [1]*k + ..."""
    return [i for i in range(n) for _ in range(k)]


@dataclass
class Draw:
    """What a sampler returns for one generation batch."""
    samples: Samples
    skip: torch.Tensor   # [N] bool: the sampler gave up on the row's prompt (ESRL's skipped prompts, the
                         #   uniform groups a short refill keeps): its group leaves the loss if uniform
    stats: dict


class Sampler:
    """Plain or grouped sampling: --num_samples_per_prompt answers of every prompt in one pass.
    `counters` (the experience maker's, per process) count what is sampled; `clock` times the phases."""

    def __init__(self, cfg, engine, tokenizer, sources: dict, weights: dict, counters: dict, clock):
        self.cfg, self.rlhf, self.tok = cfg, engine, tokenizer
        self.sources, self.weights, self.counters, self.clock = sources, weights, counters, clock
        self.device = dist.device()
        actor = getattr(engine.actor, "module", engine.actor)
        self.stops = stop_ids(actor, tokenizer)
        self.spec = SamplingSpec(cfg.max_answer_seq_len, self.stops, tokenizer.pad_token_id, cfg.temperature,
                                 cfg.top_k, cfg.top_p)
        ignored = ignored_generation_settings(getattr(actor, "generation_config", None))
        if ignored:
            dist.print_rank0("[sampling] the actor's generation_config sets " +
                             ", ".join(f"{k}={v}" for k, v in ignored.items()) + ": ignored; step 3 samples "
                             "from --temperature, --top_p and --top_k alone, the distribution its log-probs score")

    # -- one pass ------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: list[PromptExample], temps: torch.Tensor | None = None, greedy: bool = False,
                 collision: bool = False):
        """One answer per prompt (KV cache, no autograd graph). temps: [B] per-row temperatures (default
        --temperature); greedy: argmax decoding; collision: record `log_collision` at each answer token.
        Returns `utils.generation.Drawn`."""
        spec = SamplingSpec(**{**self.spec.__dict__, "greedy": greedy})
        self.rlhf.actor.eval()
        with generation_model(self.rlhf.actor, gather=self.cfg.ds3_gather_for_generation,
                              world_size=dist.world_size()) as (model, synced):
            drawn = sample(model, [p.prompt_ids for p in prompts], spec, temps, device=self.device,
                           synced_gpus=synced, collision=collision,
                           cache_implementation=None if self.rlhf.hybrid else self.cfg.cache_implementation)
        self.rlhf.actor.train()
        return drawn

    @torch.no_grad()
    def draw(self, prompts: list[PromptExample], prompt_index: list[int], rows: list[int],
             temps: torch.Tensor | None = None, confidence: bool = False) -> Samples:
        """One pass over `rows` (positions in `prompts`, one per sample): sampled, then scored by every
        reward source. temps: [len(rows)] per-row temperatures, or None (--temperature); confidence:
        also ESRL's `answer_confidence` of each sample, from the model's own distribution as recorded
        while sampling."""
        chosen = [prompts[r] for r in rows]
        temps = (torch.full((len(rows),), float(self.cfg.temperature)) if temps is None else temps).float()
        with self.clock("generation"):
            d = self.generate(chosen, temps, collision=confidence)
        seq, attn, P = d.sequences, d.attention_mask, d.prompt_len
        action_mask = attn[:, 1:].clone().float()
        action_mask[:, : P - 1] = 0
        conf = answer_confidence(d.log_collision, attn[:, P:]).cpu() if confidence else None
        self.counters["sampled_sequences"] += len(rows)
        self.counters["sampled_tokens"] += int(action_mask.sum())
        self.clock.count("generated_tokens", float(action_mask.sum()))
        inputs = self.reward_inputs(chosen, d.answers)
        with self.clock("scoring"):
            scores = self.score(inputs)
        raws = {name: src.raw for name, src in self.sources.items() if src.raw is not None}
        return Samples(chosen, [prompt_index[r] for r in rows], list(rows), d.answers, seq, attn, action_mask,
                       temps.to(self.device), F.pad(d.logprobs, (P - 1, 0)), conf, scores, raws,
                       combine(scores, self.weights) + self.cfg.reward_bias, P)

    def score(self, inputs: RewardInputs) -> dict[str, torch.Tensor]:
        """Every source's [B] scores. A score that is not a finite number halts the run on every rank
        at once (one rank alone would leave the others waiting in their next collective), naming the
        source and the answer; every source is still called first, since a reward model's forward is
        collective under ZeRO-3."""
        scores, problem = {}, None
        for name, src in self.sources.items():
            try:
                scores[name] = src(inputs)
            except TrainingHalted as e:
                problem = problem or str(e)
                continue
            bad = (~torch.isfinite(scores[name].float())).nonzero()
            if len(bad) and problem is None:
                i = int(bad[0])
                problem = (f"{src.describe()} scored answer {i} ({inputs.answers[i][:60]!r}) "
                           f"{float(scores[name][i])}: not finite")
        problems = [p for p in dist.all_gather_object(problem) if p]
        if problems:
            raise TrainingHalted(problems[0])
        return scores

    def reward_inputs(self, prompts: list[PromptExample], answers: list[list[int]]) -> RewardInputs:
        texts = [self.tok.decode([t for t in a if t not in self.stops], skip_special_tokens=True) for a in answers]
        return RewardInputs(prompts=[p.prompt for p in prompts], answers=texts,
                            references=[p.reference for p in prompts], sources=[p.source for p in prompts],
                            prompt_ids=[p.prompt_ids for p in prompts], answer_ids=answers,
                            messages=[p.messages for p in prompts], columns=[p.columns for p in prompts])

    def has_eos(self, answers: list[list[int]]) -> torch.Tensor:
        """[B] bool: the answer ended with a stop id (within --max_answer_seq_len)."""
        return torch.tensor([bool(a) and a[-1] in self.stops for a in answers])

    def end_rewards(self, s: Samples) -> torch.Tensor:
        """[N] sequence rewards: the combined score plus --missing_eos_penalty on answers without a stop
        id (with --shuffle_reward_score_randomly, the scores shuffled first: the fork's sanity check)."""
        end = s.base
        if self.cfg.shuffle_reward_score_randomly:
            g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.counters["sampled_sequences"])
            end = end[torch.randperm(len(end), generator=g)]
        if self.cfg.missing_eos_penalty is not None:
            end = end + self.cfg.missing_eos_penalty * (~self.has_eos(s.answers)).float()
        return end

    def clipped(self, end: torch.Tensor) -> torch.Tensor:
        """The sequence reward as every later stage sees it: clipped to +-clip_reward_value, never a
        shaped value (a group estimator's advantages keep summing to 0)."""
        return end.clamp(-self.cfg.clip_reward_value, self.cfg.clip_reward_value)

    # -- the stage -----------------------------------------------------------------------------
    def __call__(self, prompts: list[PromptExample], prompt_index: list[int]) -> Draw:
        s = self.draw(prompts, prompt_index, grouped(len(prompts), self.cfg.num_samples_per_prompt))
        return Draw(s, torch.zeros(len(s.rows), dtype=torch.bool), {})

    def keep(self, s: Samples, trains: torch.Tensor, stats: dict) -> list[int]:
        """The rows that go on to the reference, critic and update: all."""
        return list(range(len(s.rows)))

    def state_dict(self) -> dict | None:
        return None

    def load_state_dict(self, state: dict | None) -> None:
        pass


class RefillSampler(Sampler):
    """DAPO's dynamic sampling (Yu et al. 2025): a group whose samples all get one reward has zero
    advantage under a group baseline and teaches nothing, so it is replaced. After the batch's own
    groups, each further pass samples new prompts (drawn at random from the training prompts not in the
    batch, seeded by --seed and this process's sample count, so a resumed run draws the same), as many
    as the rank that misses most misses groups, at most --refill_uniform_groups more passes; every rank
    makes the same passes of the same size. A batch still short after the last pass is filled with
    uniform groups, which then enter no loss and no statistic (as --drop_uniform_groups)."""

    def __init__(self, cfg, engine, tokenizer, sources, weights, counters, clock, pool: list[PromptExample]):
        super().__init__(cfg, engine, tokenizer, sources, weights, counters, clock)
        self.pool = pool

    def __call__(self, prompts: list[PromptExample], prompt_index: list[int]) -> Draw:
        k, wanted = self.cfg.num_samples_per_prompt, len(prompts)
        s = self.draw(prompts, prompt_index, grouped(wanted, k))
        passes = 1
        while passes <= self.cfg.refill_uniform_groups:
            # as many new prompts on every rank (the most any rank misses), so every forward of the
            # pass, ZeRO-3's collective ones included, runs as often on each
            missing = int(dist.all_reduce_max(float(max(wanted - self.teaching_groups(s), 0))))
            if not missing:
                break
            g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.counters["sampled_sequences"])
            taken = set(s.prompt_index)   # a prompt already in the batch would join its group
            new = [i for i in torch.randperm(len(self.pool), generator=g).tolist() if i not in taken][:missing]
            extra = self.draw([self.pool[i] for i in new], new, grouped(len(new), k))
            s = Samples.cat(s, extra, self.tok.pad_token_id)
            passes += 1
        # the wanted number of groups: those that teach first, in the order drawn, then uniform ones
        uniform = self.uniform(s)
        teach = [g for g in range(len(s.rows) // k) if not bool(uniform[g * k])]
        fill = [g for g in range(len(s.rows) // k) if bool(uniform[g * k])]
        chosen = sorted((teach + fill)[:wanted])
        rows = [g * k + j for g in chosen for j in range(k)]
        short = max(0, wanted - len(teach))
        return Draw(s.take(rows), uniform[rows], {"refill/passes": float(passes), "refill/short": short / wanted})

    def teaching_groups(self, s: Samples) -> int:
        return (len(s.rows) - int(self.uniform(s).sum())) // self.cfg.num_samples_per_prompt

    def uniform(self, s: Samples) -> torch.Tensor:
        """[N] bool: the row's group (its prompt's samples; no prompt is drawn twice) got one reward."""
        return uniform_groups(self.clipped(self.end_rewards(s)), s.prompt_index)


class ESRLSampler(Sampler):
    """ESRL's sampling on a group budget (`esrl.py`): a prompt visited before gets its samples planned
    from its estimates and drawn in one pass with the first pass of the others; those take
    --esrl_min_samples, then the rest of their budget goes to the ones whose first samples say more
    teach. Every prompt's samples form its group. Then `keep` drops --esrl_eliminate_ratio of the batch
    before the actor, reference and critic passes and the update: the rows out of the loss first, then
    the most confident."""

    def __init__(self, cfg, engine, tokenizer, sources, weights, counters, clock):
        super().__init__(cfg, engine, tokenizer, sources, weights, counters, clock)
        self.esrl = CapabilityEstimator(cfg.esrl_confidence_weight, cfg.esrl_capability_decay)

    def __call__(self, prompts: list[PromptExample], prompt_index: list[int]) -> Draw:
        cfg, est, n = self.cfg, self.esrl, len(prompts)
        m, cap, extra_each = (cfg.esrl_min_samples, cfg.esrl_max_samples - cfg.esrl_min_samples,
                              cfg.num_samples_per_prompt - cfg.esrl_min_samples)
        temps = temperatures(est.capability(prompt_index), cfg.esrl_temperature_min, cfg.esrl_temperature_max)
        known = est.known(prompt_index)
        planned = est.planned_need(prompt_index)
        ahead = allocate(planned, cap, second_pass_size(planned, cap, int(known.sum()) * extra_each))
        rows = [i for i in range(n) for _ in range(m + ahead[i])]
        s = self.draw(prompts, prompt_index, rows, temps[rows], confidence=True)
        mean, spread, agree = prompt_stats(self.end_rewards(s), rows, n)
        conf = prompt_stats(s.confidence, rows, n)[0]
        est.update(gather(dict(zip(prompt_index, conf.tolist()))), gather(dict(zip(prompt_index, mean.tolist()))))
        capability = est.capability(prompt_index)
        skip = skipped(mean, agree, capability, est.reward_best, est.reward_worst, cfg.esrl_skip_capability)
        est.record(gather(dict(zip(prompt_index, spread.tolist()))), gather(dict(zip(prompt_index, skip.tolist()))))
        # the second pass is for the prompts seen for the first time; every rank samples the most any
        # rank wants, so generation and scoring stay in lockstep
        need = torch.where(known, torch.zeros_like(spread), sampling_need(capability, spread,
                                                                          math.sqrt(est.reward_var), skip))
        total = int(dist.all_reduce_max(second_pass_size(need, cap, int((~known).sum()) * extra_each)))
        if total:
            extra = [i for i, e in enumerate(allocate(need, cap, total)) for _ in range(e)]
            s = Samples.cat(s, self.draw(prompts, prompt_index, extra, temps[extra], confidence=True),
                            self.tok.pad_token_id)
        stats = {"esrl/capability": float(capability.mean()), "esrl/temperature": float(temps.mean()),
                 "esrl/samples_per_prompt": len(s.rows) / n, "esrl/skipped": float(skip.float().mean()),
                 "esrl/planned": float(known.float().mean()), "esrl/second_pass": total / n}
        return Draw(s, skip[s.rows], stats)

    def keep(self, s: Samples, trains: torch.Tensor, stats: dict) -> list[int]:
        keep = eliminate(s.confidence, self.cfg.esrl_eliminate_ratio, ~trains).tolist()
        stats.update({"esrl/confidence": float(s.confidence.mean()), "esrl/kept": len(keep) / len(s.rows)})
        return keep

    def state_dict(self) -> dict:
        return self.esrl.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        if state is not None:
            self.esrl.load_state_dict(state)


def gather(d: dict[int, float]) -> dict[int, float]:
    """Every rank's {prompt index: value}, merged."""
    out: dict[int, float] = {}
    for part in dist.all_gather_object(d):
        out.update(part)
    return out


def make_sampler(cfg, engine, tokenizer, sources, weights, counters, clock, pool: list[PromptExample]) -> Sampler:
    if cfg.dynamic_sampling:
        return ESRLSampler(cfg, engine, tokenizer, sources, weights, counters, clock)
    if cfg.refill_uniform_groups:
        return RefillSampler(cfg, engine, tokenizer, sources, weights, counters, clock, pool)
    return Sampler(cfg, engine, tokenizer, sources, weights, counters, clock)
