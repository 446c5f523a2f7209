"""Step 3's held-out evaluation: greedy answers to held-out prompts, scored by every reward source."""
from __future__ import annotations

import torch

from utils import distributed as dist
from utils.rewards import combine


@torch.no_grad()
def held_out_rewards(sampler, prompts: list, batch_size: int) -> dict[str, float]:
    """Greedy answers of `sampler`'s actor to `prompts` (sharded over ranks), scored by every reward
    source without touching running statistics; returns eval/reward/<name> means over all prompts."""
    mine, per_rank = dist.share(len(prompts))
    # equal work on every rank: pad with a repeat, not counted
    n_real = len(mine)
    mine += [mine[-1] if mine else 0] * (per_rank - n_real)
    sums: dict[str, float] = {}
    for start in range(0, per_rank, batch_size):
        batch = [prompts[i] for i in mine[start:start + batch_size]]
        real = max(0, min(n_real - start, len(batch)))
        inputs = sampler.reward_inputs(batch, sampler.generate(batch, greedy=True).answers)
        scores = {name: src.raw_scores(inputs).float().cpu() for name, src in sampler.sources.items()}
        scores["total"] = combine(scores, sampler.weights)
        for k, v in scores.items():
            sums[k] = sums.get(k, 0.0) + float(v[:real].sum())
    return {f"eval/reward/{k}": dist.all_reduce_sum(v) / max(len(prompts), 1) for k, v in sums.items()}
