"""Step 2's frozen reference: a DeepSpeed engine of its own, or its log-probs computed once."""
from __future__ import annotations

from typing import Callable

import torch

from utils import distributed as dist
from utils.config import DPOConfig
from utils.engines import frozen_engine, total_steps
from utils.models import TORCH_DTYPES, load_causal_lm

from .objectives import response_logps


def build_reference(cfg: DPOConfig, tokenizer):
    """The frozen reference as a DeepSpeed engine without optimizer (own ZeRO stage)."""
    return frozen_engine(lambda: load_causal_lm(cfg.reference_model_name_or_path or cfg.model_name_or_path, tokenizer,
                                                trust_remote_code=cfg.trust_remote_code, disable_dropout_=True,
                                                resize_embeddings=cfg.add_eot_token, dtype=TORCH_DTYPES[cfg.dtype]),
                         micro_batch_size=cfg.per_device_train_batch_size, zero_stage=cfg.reference_zero_stage,
                         offload=cfg.offload_reference_model, dtype=cfg.dtype)


@torch.no_grad()
def precompute_reference(reference, examples: list, collate: Callable, batch_size: int) -> None:
    """Store the reference's answer log-probs on every example (`set_reference`). A batch holds two
    rows per example, the second half after the first (chosen / rejected, or completion / KL
    completion). Each rank scores its `dist.share` (a rank with fewer batches repeats a forward and
    discards it), then every rank receives all of them. The shares and batches are
    Trainer.evaluate's, so on the test split the reference scores each example in the batch the
    policy is evaluated in."""
    if not examples:
        return
    device = dist.device()
    share, per_rank = dist.share(len(examples))
    mine = [examples[i] for i in share]
    scores: list[tuple[float, float]] = []
    for b in range(-(-per_rank // batch_size)):
        chunk = mine[b * batch_size:(b + 1) * batch_size]
        lp = response_logps(reference, collate(chunk or examples[:1]).to(device), average=False)[0].cpu()
        scores += [(float(lp[j]), float(lp[len(chunk) + j])) for j in range(len(chunk))]
    gathered = [s for part in dist.all_gather_object(scores) for s in part]
    for e, pair in zip(examples, gathered, strict=True):
        e.set_reference(pair)


def covers_every_example(cfg: DPOConfig, n_train: int) -> bool:
    """Whether the run trains on each example at least once (the default for precomputing)."""
    steps = total_steps(n_train, cfg, dist.world_size())
    return steps * cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * dist.world_size() >= n_train
