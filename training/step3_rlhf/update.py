"""PPO's update: clipped policy and value losses over micro-batches of `Experience`, plus the
actor's optional KL, SFT and pretraining losses (formulas in `utils/losses.py`). Each optimizer step
normalises its losses over all its micro-batches and ranks, exactly as the supervised `Trainer`."""
from __future__ import annotations

import time
from dataclasses import replace

import torch
import torch.nn.functional as F

from training.step3_rlhf.esrl import kept_count
from training.step3_rlhf.experience import Experience
from training.step3_rlhf.sampler import forward_logprobs
from utils import distributed as dist
from utils.data import IGNORE_INDEX, collate_lm
from utils.losses import (aggregate_loss_sum, aggregation_count, causal_lm_loss, entropy_from_logits, kl_estimate,
                          ppo_policy_loss_sum, ppo_value_loss_sum, prompt_lm_mask, token_logprobs,
                          truncated_is_weights)
from utils.models import labelled_logits, token_values


def optimizer_steps_per_round(cfg) -> int:
    """Optimizer steps of one round, exactly those `train_on` makes: each PPO epoch's micro-batches
    (generation batches x `minibatches_per_round`) in windows of --gradient_accumulation_steps (the
    last one may be shorter), each window stepped --ppo_mini_epochs times in a row. A round always ends
    with a step, so checkpoints never hold half-accumulated gradients. (A --critic_go_first_steps round
    makes one epoch's steps, the critic's alone.)"""
    windows = -(-cfg.generation_batches * minibatches_per_round(cfg) // cfg.gradient_accumulation_steps)
    return cfg.ppo_epochs * windows * cfg.ppo_mini_epochs


def minibatches_per_round(cfg) -> int:
    """PPO micro-batches per generation batch and PPO epoch: enough that none holds more than
    --per_device_training_batch_size sequences when a generation batch keeps the most it can
    (--num_samples_per_prompt per prompt; with ESRL, whose two passes together sample at most that
    many, less the eliminated fraction). Fixed, so the LR schedule and every rank's step count are
    known before training."""
    rows = cfg.per_device_generation_batch_size * cfg.num_samples_per_prompt
    if cfg.dynamic_sampling:
        rows = kept_count(rows, cfg.esrl_eliminate_ratio)
    return -(-rows // cfg.per_device_training_batch_size)


def micro_batches(exp: Experience, n: int, g: torch.Generator) -> list[Experience]:
    """`exp`'s rows in an order drawn from `g`, split into `n` micro-batches as even as can be. A part
    left empty (ESRL may keep fewer rows than `n`) holds a stand-in row outside the policy, KL, SFT
    and value losses, so every round and every rank make the same optimizer steps."""
    order = torch.randperm(exp.sequences.shape[0], generator=g)
    out = []
    for part in torch.tensor_split(order, n):
        if len(part):
            out.append(exp.rows(part.tolist()))
        else:
            stand_in = exp.rows([0])
            out.append(replace(stand_in, loss_mask=torch.zeros_like(stand_in.loss_mask), sft_examples=[None]))
    return out


# statistics reported as means over every loss token of the round; the others (losses) are means over
# its optimizer steps of each step's value
TOKEN_MEANS = ("clipfrac", "approx_kl", "ratio", "entropy", "vf_clipfrac")


class PPOUpdater:
    """Updates actor and critic from a round's experience. `ptx`: the --add_pretrained_loss text
    batches (a `BatchStream`), or None to use each minibatch's prompt tokens."""

    def __init__(self, cfg, engine, tokenizer, ptx=None):
        self.cfg, self.rlhf, self.tok, self.ptx = cfg, engine, tokenizer, ptx
        self.device = dist.device()

    def extra_batches(self, mb: Experience) -> dict[str, tuple]:
        """What the SFT and pretraining losses of micro-batch `mb` read, with each one's token count
        (known before any forward, so a window's counts are): "sft": the collated targets of its rows
        (None when none has one); "ptx": a text batch or, without a pretraining dataset, the mask of its
        own prompt tokens ([B, S-1], the fork's form, read from the policy forward's log-probs)."""
        cfg, out = self.cfg, {}
        if cfg.add_sft_loss:
            examples = [e for e in mb.sft_examples if e is not None]
            b = collate_lm(examples, self.tok.pad_token_id) if examples else None
            out["sft"] = (b, float((b.labels[:, 1:] != IGNORE_INDEX).sum()) if b is not None else 0.0)
        if cfg.add_pretrained_loss and self.ptx is not None:
            b = next(self.ptx)
            out["ptx"] = (b, float((b.labels[:, 1:] != IGNORE_INDEX).sum()))
        elif cfg.add_pretrained_loss:
            mask = prompt_lm_mask(mb.attention_mask, mb.action_mask)
            out["ptx"] = (mask, float(mask.sum()))
        return out

    def train_on(self, exps: list[Experience], round_index: int, critic_only: bool = False) -> dict:
        """`ppo_epochs` passes over the experience (`critic_only`, --critic_go_first_steps: one pass, the
        critic alone). A pass splits each generation batch into `minibatches_per_round` micro-batches in
        an order drawn from (--seed, `round_index`): new every round, the same on resume. Each
        --gradient_accumulation_steps consecutive micro-batches of a pass (the last group may be
        shorter) are one optimizer step's window, stepped --ppo_mini_epochs times in a row.

        Returns the round's statistics, the same on every rank: each loss (pg_loss, loss, kl_loss,
        sft_loss, ptx_loss, vf_loss) the mean over the optimizer steps of the step's loss over all its
        micro-batches and ranks; clipfrac, approx_kl, ratio, entropy and vf_clipfrac means over every
        loss token the round trained on."""
        cfg = self.cfg
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + round_index)
        n_mb, gas = minibatches_per_round(cfg), cfg.gradient_accumulation_steps
        sums: dict[str, torch.Tensor] = {}
        steps, tokens = 0, 0.0
        for _ in range(1 if critic_only else cfg.ppo_epochs):
            micro = [mb for exp in exps for mb in micro_batches(exp, n_mb, g)]
            for w in range(0, len(micro), gas):
                for _ in range(cfg.ppo_mini_epochs):
                    window_tokens, window_sums = self.train_window(micro[w:w + gas], critic_only)
                    steps, tokens = steps + 1, tokens + window_tokens
                    for k, v in window_sums.items():
                        sums[k] = sums.get(k, 0.0) + v
        names = list(sums)
        # one host sync per round, not one per statistic and micro-batch
        local = torch.stack([sums[k] for k in names]).tolist() if names else []
        stats = {k: dist.all_reduce_sum(v) / max(tokens if k in TOKEN_MEANS else steps, 1)
                 for k, v in zip(names, local)}
        stats["phase/update_s"] = time.perf_counter() - t0
        return stats

    def train_window(self, window: list[Experience], critic_only: bool = False) -> tuple[float, dict]:
        """One optimizer step of the actor (unless `critic_only`) and the critic over the micro-batches
        `window`. Each loss is its sum over the whole window on every rank divided by the window's count
        there: loss tokens, or for the policy and KL losses under a seq-mean --loss_agg_mode the rows
        that train; SFT and pretraining tokens for theirs. So two micro-batches step as one of both, and
        a short last window as a full one. Returns the window's loss tokens on all ranks and this rank's
        statistics (0-d tensors on the device): each loss's share of the step's value, token sums of
        the others."""
        cfg = self.cfg
        extras = [{} if critic_only else self.extra_batches(mb) for mb in window]
        local = {"tokens": sum(float(mb.loss_mask.sum()) for mb in window)}
        if not critic_only:
            local["policy"] = sum(float(aggregation_count(mb.loss_mask, cfg.loss_agg_mode)) for mb in window)
            local.update({k: sum(e[k][1] for e in extras) for k in extras[0]})
        counts = {k: dist.all_reduce_sum(v) for k, v in local.items()}
        sums: dict[str, torch.Tensor] = {}
        for i, (mb, extra) in enumerate(zip(window, extras)):
            for k, v in self.step(mb, i == len(window) - 1, critic_only, extra, counts).items():
                sums[k] = sums.get(k, 0.0) + v
        return counts["tokens"], sums

    def step(self, mb: Experience, boundary: bool, critic_only: bool, extra: dict,
             counts: dict[str, float]) -> dict[str, torch.Tensor]:
        """One micro-batch of an optimizer step: its loss sums divided by the window's `counts` (all
        ranks), backpropagated times gas x world, which undoes DeepSpeed's 1/gas and its mean over ranks
        (as `utils.trainer`); the optimizers step when `boundary` (the window's last micro-batch).
        `extra`: its `extra_batches`. Returns its statistics as 0-d tensors, left on the device."""
        cfg, mask = self.cfg, mb.loss_mask
        actor, critic = self.rlhf.actor, self.rlhf.critic
        scale = cfg.gradient_accumulation_steps * dist.world_size()
        out: dict[str, torch.Tensor] = {}
        if not critic_only:
            actor.set_gradient_accumulation_boundary(boundary)
            # the LM head from the last prompt token on (every row of a generation batch has the same
            # prompt width); the fork's pretraining loss without a dataset reads the prompts' log-probs too
            answer = mb.action_mask > 0
            start = 0 if cfg.add_pretrained_loss and self.ptx is None else int(answer.any(0).float().argmax())
            logits, logprobs = forward_logprobs(actor, mb.sequences, mb.attention_mask, start, mb.temperatures)
            weights = (truncated_is_weights(mb.logprobs, mb.rollout_logprobs, cfg.rollout_is_cap)
                       if cfg.rollout_is_cap else None)
            pg_sum, _, st = ppo_policy_loss_sum(logprobs, mb.logprobs, mb.advantages, mask, cfg.cliprange_low,
                                                cfg.cliprange_high, cfg.loss_agg_mode, cfg.max_answer_seq_len,
                                                weights=weights)
            out["pg_loss"] = pg_sum / max(counts["policy"], 1.0)
            loss = cfg.factor_rl_loss * out["pg_loss"]
            if cfg.use_kl_loss:
                kl_sum, _ = aggregate_loss_sum(kl_estimate(logprobs, mb.ref_logprobs, cfg.kl_estimator), mask,
                                               cfg.loss_agg_mode, cfg.max_answer_seq_len)
                out["kl_loss"] = kl_sum / max(counts["policy"], 1.0)
                loss = loss + cfg.kl_loss_coef * out["kl_loss"]
            lm_logprobs = logprobs
            if "ptx" in extra and isinstance(extra["ptx"][0], torch.Tensor) and bool((mb.temperatures != 1).any()):
                # the LM loss on the prompts is the model's own, at temperature 1, not the sampler's
                lm_logprobs = F.pad(token_logprobs(logits, mb.sequences[:, start:]), (start, 0))
            for name, factor in (("sft", cfg.factor_sft_loss), ("ptx", cfg.factor_pretrained_loss)):
                if name in extra:
                    out[f"{name}_loss"] = self.lm_loss_sum(extra[name][0], lm_logprobs) / max(counts[name], 1.0)
                    loss = loss + factor * out[f"{name}_loss"]
            actor.backward(loss * scale)
            with torch.no_grad():
                # of the distribution that sampled
                entropy = (entropy_from_logits(logits[:, :-1] / mb.temperatures.to(logits)[:, None, None])
                           * mask[:, start:]).sum()
            out.update({"loss": loss, "entropy": entropy, **st})
        if critic is not None:
            critic.set_gradient_accumulation_boundary(boundary)
            values = token_values(critic, mb.sequences, mb.attention_mask)[:, :-1]
            vf_sum, vf_clipped, _ = ppo_value_loss_sum(values, mb.values, mb.returns, mask, cfg.cliprange_value)
            out["vf_loss"] = vf_sum / max(counts["tokens"], 1.0)
            critic.backward(out["vf_loss"] * scale)
            out["vf_clipfrac"] = vf_clipped
        if boundary and cfg.align_overflow and not critic_only:
            align_overflow(actor, critic)
        if not critic_only:
            actor.step()
            if boundary:
                self.rlhf.update_ema()
        if critic is not None:
            critic.step()
        return {k: v.detach().float() for k, v in out.items()}

    def lm_loss_sum(self, batch, logprobs: torch.Tensor) -> torch.Tensor:
        """Summed next-token loss of an SFT or pretraining batch (a forward of the actor), or of the
        prompt tokens a [B, S-1] mask marks in the policy forward's `logprobs`; 0 for None."""
        if batch is None:
            return logprobs.new_zeros(())
        if isinstance(batch, torch.Tensor):
            return -(logprobs * batch).sum()
        b = batch.to(self.device)
        return causal_lm_loss(*labelled_logits(self.rlhf.actor, b.input_ids, b.attention_mask, b.labels))[0]


def align_overflow(actor, critic) -> None:
    """fp16 (--align_overflow): when one model's gradients overflowed, the other skips its step too,
    so actor and critic stay on the same data (DeepSpeed's fp16 optimizers expose the check)."""
    def overflowed(engine):
        opt = getattr(engine, "optimizer", None)
        return bool(opt is not None and hasattr(opt, "check_overflow") and opt.check_overflow(external=True))
    a = overflowed(actor)
    c = overflowed(critic) if critic is not None else False
    if a != c:
        skipping = critic if a else actor
        skipping.optimizer.skip_step = True
        dist.print_rank0(f"[ppo] fp16 overflow in the {'actor' if a else 'critic'}: both skip this step")
