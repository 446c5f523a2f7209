"""Harness of the exact-accumulation tests (tests/test_estimators.py): step 3's update of actor and
critic on a synthetic round of experience, in layouts that must give the same weights. In a fresh
process (`layouts`, one rank) or under the deepspeed launcher, two ranks:

    deepspeed --num_gpus 2 --module tests.step3_accumulation OUT.pt <step-3 flags>

Adam's first step is g / (|g| + eps) per weight, blind to a gradient's scale; with eps = lr = 1 and
gradients well below 1 it is close to g itself, so a step divided by the wrong count shows in the
weights.
"""
from __future__ import annotations

import sys
from dataclasses import fields, replace

import torch

MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
ROWS = 8           # rows of each rank
OUT_OF_LOSS = (3, 10)


def build(argv):
    from training.step3_rlhf.rlhf_engine import DeepSpeedRLHFEngine
    from training.step3_rlhf.update import PPOUpdater
    from utils.cli import parse_config
    from utils.config import RLHFConfig
    from utils.models import load_tokenizer_for
    from utils.run import start

    cfg = parse_config(RLHFConfig, argv)
    start(cfg)
    tok = load_tokenizer_for(cfg, cfg.actor_model_name_or_path, padding_side="left")
    rlhf = DeepSpeedRLHFEngine(cfg, tok, 10)
    return cfg, tok, rlhf, PPOUpdater(cfg, rlhf, tok)


def synthetic_round(cfg, tok, rlhf, n: int):
    """`n` rows of experience, the same on every rank: prompts of 2-6 tokens left-padded to 6, answers
    of 1-5 tokens right-padded to 5, old / reference log-probs near the actor's (so ratios differ from
    1 and some clip), random advantages, values and returns; rows OUT_OF_LOSS out of the loss, every
    other row with an SFT target."""
    from training.step3_rlhf.experience import Experience
    from training.step3_rlhf.sampler import forward_logprobs
    from utils import distributed as dist
    from utils.data import IGNORE_INDEX, Example

    g = torch.Generator().manual_seed(0)
    P, A = 6, 5
    prompt_len = torch.randint(2, P + 1, (n,), generator=g)
    answer_len = torch.randint(1, A + 1, (n,), generator=g)
    ids = torch.randint(5, len(tok), (n, P + A), generator=g)
    pos = torch.arange(P + A)
    attn = ((pos >= P - prompt_len[:, None]) & (pos < P + answer_len[:, None])).long()
    seq = torch.where(attn.bool(), ids, torch.full_like(ids, tok.pad_token_id))
    action = attn[:, 1:].float()
    action[:, :P - 1] = 0
    loss_mask = action.clone()
    loss_mask[[i for i in OUT_OF_LOSS if i < n]] = 0
    dev = dist.device()
    seq, attn, action, loss_mask = seq.to(dev), attn.to(dev), action.to(dev), loss_mask.to(dev)
    temps = torch.ones(n, device=dev)
    with torch.no_grad():
        _, logprobs = forward_logprobs(rlhf.actor, seq, attn, P - 1, temps)
    noise = lambda scale: (torch.randn(n, P + A - 1, generator=g) * scale).to(dev) * action
    old = logprobs + noise(0.3)
    answers = [seq[i, P:][attn[i, P:].bool()].tolist() for i in range(n)]
    sft = [Example(seq[i][attn[i].bool()].tolist(), [IGNORE_INDEX] * int(prompt_len[i]) + answers[i])
           if i % 2 == 0 else None for i in range(n)]
    known = {"sequences": seq, "attention_mask": attn, "action_mask": action, "loss_mask": loss_mask,
             "temperatures": temps, "rollout_logprobs": old, "logprobs": old, "ref_logprobs": old + noise(0.5),
             "values": noise(1.0), "rewards": torch.zeros_like(action), "advantages": noise(1.0),
             "returns": noise(1.0), "end_rewards": torch.zeros(n, device=dev), "prompt_index": list(range(n)),
             "sft_examples": sft}
    return Experience(**{f.name: known[f.name] for f in fields(Experience)})


class Runner:
    """Runs rounds from the same starting weights and a fresh optimizer each time."""

    def __init__(self, cfg, rlhf, updater):
        self.cfg, self.rlhf, self.updater = cfg, rlhf, updater
        self.engines = [e for e in (rlhf.actor, rlhf.critic) if e is not None]
        self.start = [{k: v.detach().clone() for k, v in e.module.state_dict().items()} for e in self.engines]

    def round(self, exps, **flags) -> tuple[torch.Tensor, dict, list[int]]:
        """One `train_on` round with the config changed by `flags`: (every trained weight flattened,
        the round's statistics, each engine's optimizer steps)."""
        for k, v in flags.items():
            setattr(self.cfg, k, v)
        before = []
        for engine, state in zip(self.engines, self.start):
            engine.module.load_state_dict(state)
            engine.optimizer.state.clear()
            for group in engine.optimizer.param_groups:
                group["lr"], group["eps"] = 1.0, 1.0
            before.append(engine.global_steps)
        stats = self.updater.train_on(exps, 0)
        weights = torch.cat([p.detach().float().flatten().cpu() for e in self.engines for p in e.module.parameters()
                             if p.requires_grad])
        return weights, stats, [e.global_steps - b for e, b in zip(self.engines, before)]


def layouts(argv) -> dict:
    """At one rank: per --loss_agg_mode, ROWS rows as two micro-batches of one window ("two") and as
    one micro-batch, a short window ("one"); 2 x ROWS rows as two micro-batches of ROWS ("all", what
    two ranks of ROWS rows each must equal); the optimizer steps of 12 rows in 3 micro-batches with
    --ppo_mini_epochs 1 and 2."""
    from training.step3_rlhf.update import optimizer_steps_per_round

    cfg, tok, rlhf, updater = build(argv)
    run = Runner(cfg, rlhf, updater)
    full = synthetic_round(cfg, tok, rlhf, 2 * ROWS)
    mine = full.rows(list(range(ROWS)))
    out = {}
    for mode in MODES:
        two, two_stats, _ = run.round([mine], loss_agg_mode=mode, per_device_generation_batch_size=ROWS,
                                      per_device_training_batch_size=ROWS // 2)
        one, one_stats, _ = run.round([mine], per_device_training_batch_size=ROWS)
        both, _, _ = run.round([full], per_device_generation_batch_size=2 * ROWS, per_device_training_batch_size=ROWS)
        # numpy: a tensor would travel back to the test through shared memory the exiting process frees
        out[mode] = {"two": two.numpy(), "one": one.numpy(), "all": both.numpy(), "two_stats": two_stats,
                     "one_stats": one_stats}
    twelve = full.rows(list(range(12)))
    steps = {}
    for mini in (1, 2):
        _, _, taken = run.round([twelve], loss_agg_mode="token-mean", per_device_generation_batch_size=12,
                                per_device_training_batch_size=4, ppo_mini_epochs=mini)
        steps[mini] = (taken, optimizer_steps_per_round(cfg))
    out["steps"] = steps
    # the same rows sampled at temperature 0.5: the policy is scored tempered (entropy changes), the
    # dataset-free pretraining loss on the prompts stays the model's own, at temperature 1
    cold = replace(mine, temperatures=mine.temperatures * 0.5)
    _, warm_stats, _ = run.round([mine], loss_agg_mode="token-mean", per_device_generation_batch_size=ROWS,
                                 per_device_training_batch_size=ROWS, ppo_mini_epochs=1)   # one step: its losses
    _, cold_stats, _ = run.round([cold])
    out["tempered"] = {k: (warm_stats[k], cold_stats[k]) for k in ("ptx_loss", "entropy")}
    return out


def two_ranks(path: str, argv: list[str]) -> None:
    """Each rank trains on its ROWS rows of the same synthetic 2 x ROWS: per mode, "two" and "one"
    as in `layouts`; rank 0 saves them to `path`."""
    from utils import distributed as dist

    cfg, tok, rlhf, updater = build(argv)
    run = Runner(cfg, rlhf, updater)
    full = synthetic_round(cfg, tok, rlhf, 2 * ROWS)
    mine = full.rows(list(range(dist.rank() * ROWS, (dist.rank() + 1) * ROWS)))
    out = {}
    for mode in MODES:
        two, two_stats, _ = run.round([mine], loss_agg_mode=mode, per_device_generation_batch_size=ROWS,
                                      per_device_training_batch_size=ROWS // 2)
        one, one_stats, _ = run.round([mine], per_device_training_batch_size=ROWS)
        out[mode] = {"two": two, "one": one, "two_stats": two_stats, "one_stats": one_stats}
    if dist.rank() == 0:
        torch.save(out, path)
    dist.barrier()
    dist.teardown()


if __name__ == "__main__":
    # the launcher puts --local_rank=N before the script's own arguments
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    two_ranks(args[0], args[1:])
