"""PPO's update: clipped policy and value losses over minibatches of `Experience`, plus the
actor's optional KL, SFT and pretraining losses (formulas in `utils/losses.py`)."""
from __future__ import annotations

import time

import torch

from training.step3_rlhf.esrl import kept_count
from training.step3_rlhf.rollout import Experience, forward_logprobs
from utils import distributed as dist
from utils.data import collate_lm
from utils.losses import (aggregate_loss, causal_lm_loss, entropy_from_logits, kl_estimate, masked_mean,
                          ppo_policy_loss, ppo_value_loss)
from utils.models import labelled_logits, token_values


def optimizer_steps_per_round(cfg) -> int:
    """Optimizer steps of one round: its PPO minibatch updates (passes x generation batches x
    minibatches x --ppo_mini_epochs) in windows of --gradient_accumulation_steps; a round always
    ends with a step, so checkpoints never hold half-accumulated gradients."""
    updates = cfg.ppo_epochs * cfg.generation_batches * minibatches_per_round(cfg) * cfg.ppo_mini_epochs
    return -(-updates // cfg.gradient_accumulation_steps)


def minibatches_per_round(cfg) -> int:
    """PPO minibatches (optimizer steps) per generation batch and PPO epoch: enough that none holds
    more than --per_device_training_batch_size sequences when a generation batch keeps the most it
    can (--num_samples_per_prompt per prompt; with ESRL, whose two passes together sample at most
    that many, less the eliminated fraction). Fixed, so the LR schedule and every rank's step count
    are known before training."""
    rows = cfg.per_device_generation_batch_size * cfg.num_samples_per_prompt
    if cfg.dynamic_sampling:
        rows = kept_count(rows, cfg.esrl_eliminate_ratio)
    return -(-rows // cfg.per_device_training_batch_size)


class PPOUpdater:
    """Updates actor and critic from a round's experience. `ptx`: the --add_pretrained_loss text
    batches (a `BatchStream`), or None to use each minibatch's prompt tokens."""

    def __init__(self, cfg, engine, tokenizer, ptx=None):
        self.cfg, self.rlhf, self.tok, self.ptx = cfg, engine, tokenizer, ptx
        self.device = dist.device()

    def extra_losses(self, exp: Experience, logprobs: torch.Tensor) -> dict[str, torch.Tensor]:
        """The SFT loss on each row's target, and the pretraining loss on text batches or, without a
        pretraining dataset, on the minibatch's own prompt tokens (the fork's form, which reuses the
        policy forward's log-probs `logprobs` [B, S-1])."""
        out = {}
        if self.cfg.add_sft_loss:
            examples = [e for e in exp.sft_examples if e is not None]
            if examples:
                b = collate_lm(examples, self.tok.pad_token_id).to(self.device)
                s, n = causal_lm_loss(*labelled_logits(self.rlhf.actor, b.input_ids, b.attention_mask, b.labels))
                out["sft"] = s / n.clamp_min(1)
        if self.cfg.add_pretrained_loss and self.ptx is not None:
            b = next(self.ptx).to(self.device)
            s, n = causal_lm_loss(*labelled_logits(self.rlhf.actor, b.input_ids, b.attention_mask, b.labels))
            out["ptx"] = s / n.clamp_min(1)
        elif self.cfg.add_pretrained_loss:
            prompt_tokens = exp.attention_mask[:, 1:].float() * (1 - exp.action_mask)
            out["ptx"] = masked_mean(-logprobs, prompt_tokens)
        return out

    def train_on(self, exps: list[Experience], round_index: int, critic_only: bool = False) -> dict:
        """`ppo_epochs` passes over the experience in minibatches, each updated `ppo_mini_epochs` times
        in a row; gradients accumulate over --gradient_accumulation_steps updates and the round ends on
        an optimizer step. `critic_only` (--critic_go_first_steps): one pass, the critic alone.
        The minibatch order is drawn from (--seed, `round_index`): new every round, the same on
        resume. Returns mean statistics."""
        cfg = self.cfg
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + round_index)
        n_mb = minibatches_per_round(cfg)
        updates = []
        for _ in range(1 if critic_only else cfg.ppo_epochs):
            for exp in exps:
                order = torch.randperm(exp.sequences.shape[0], generator=g)
                for part in torch.tensor_split(order, min(n_mb, len(order))):
                    updates += [exp.rows(part.tolist())] * cfg.ppo_mini_epochs
        sums: dict[str, torch.Tensor] = {}
        for k, mb in enumerate(updates):
            boundary = (k + 1) % cfg.gradient_accumulation_steps == 0 or k == len(updates) - 1
            for k_, v in self.step(mb, boundary, critic_only).items():
                sums[k_] = sums.get(k_, 0.0) + v
        # one host sync per round, not one per statistic and minibatch
        means = torch.stack(list(sums.values())).div(max(len(updates), 1)).tolist() if sums else []
        stats = dict(zip(sums, means))
        stats["time/training"] = time.perf_counter() - t0
        return stats

    def step(self, mb: Experience, boundary: bool = True, critic_only: bool = False) -> dict[str, torch.Tensor]:
        """One PPO update of the actor (unless `critic_only`) and the critic on a minibatch; the
        optimizers step when `boundary` (the end of an accumulation window). Returns its
        statistics as 0-d tensors, left on the device."""
        cfg, mask = self.cfg, mb.loss_mask
        actor, critic = self.rlhf.actor, self.rlhf.critic
        out: dict[str, torch.Tensor] = {}
        if not critic_only:
            actor.set_gradient_accumulation_boundary(boundary)
            # the LM head from the last prompt token on (every row of a generation batch has the same
            # prompt width); the fork's pretraining loss without a dataset reads the prompts' log-probs too
            answer = mb.action_mask > 0
            start = 0 if cfg.add_pretrained_loss and self.ptx is None else int(answer.any(0).float().argmax())
            logits, logprobs = forward_logprobs(actor, mb.sequences, mb.attention_mask, start)
            pg_loss, st = ppo_policy_loss(logprobs, mb.logprobs, mb.advantages, mask, cfg.cliprange_low,
                                          cfg.cliprange_high, cfg.loss_agg_mode, cfg.max_answer_seq_len)
            with torch.no_grad():
                entropy = masked_mean(entropy_from_logits(logits[:, :-1]), mask[:, start:])
            extras = self.extra_losses(mb, logprobs)
            loss = cfg.factor_rl_loss * pg_loss
            if cfg.use_kl_loss:
                kl_loss = aggregate_loss(kl_estimate(logprobs, mb.ref_logprobs, cfg.kl_estimator), mask,
                                         cfg.loss_agg_mode, cfg.max_answer_seq_len)
                loss = loss + cfg.kl_loss_coef * kl_loss
                extras["kl"] = kl_loss
            if "sft" in extras:
                loss = loss + cfg.factor_sft_loss * extras["sft"]
            if "ptx" in extras:
                loss = loss + cfg.factor_pretrained_loss * extras["ptx"]
            actor.backward(loss)
            out = {"pg_loss": pg_loss, "loss": loss, "clipfrac": st["clipfrac"], "approx_kl": st["approx_kl"],
                   "ratio": st["ratio"], "entropy": entropy}
            out.update({f"{k}_loss": v for k, v in extras.items()})
        if critic is not None:
            critic.set_gradient_accumulation_boundary(boundary)
            values = token_values(critic, mb.sequences, mb.attention_mask)[:, :-1]
            vf_loss, vf_clipfrac = ppo_value_loss(values, mb.values, mb.returns, mask, cfg.cliprange_value)
            critic.backward(vf_loss)
            out.update({"vf_loss": vf_loss, "vf_clipfrac": vf_clipfrac})
        if boundary and cfg.align_overflow and not critic_only:
            align_overflow(actor, critic)
        if not critic_only:
            actor.step()
            if boundary:
                self.rlhf.update_ema()
        if critic is not None:
            critic.step()
        return {k: v.detach().float() for k, v in out.items()}


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
