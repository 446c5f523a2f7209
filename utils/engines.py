"""DeepSpeed engines of every step: the optimizer and its parameter groups, the LR schedule's
length, the DeepSpeed config of a trained model, trained and frozen engines, and what an engine
adds to a metrics row."""
from __future__ import annotations

import json
import math
from typing import Callable

import torch

from . import distributed as dist
from .config import read_deepspeed_config
from .ds_config import eval_ds_config, merge_user_config, train_ds_config
from .errors import ConfigError
from .models import count_parameters, zero3_init_context


def optimizer_groups(model: torch.nn.Module, weight_decay: float, lora_lr: float | None = None) -> list[dict]:
    """AdamW groups: no decay on biases and normalisation weights (1-d tensors); with `lora_lr`,
    the LoRA adapters in groups of their own at that learning rate."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decays = not (p.ndim < 2 or name.endswith(".bias"))
        groups.setdefault((lora_lr is not None and "lora_" in name, decays), []).append(p)
    out = []
    for lora in (False, True):
        for decays in (True, False):
            if params := groups.get((lora, decays)):
                g = {"params": params, "weight_decay": weight_decay if decays else 0.0}
                out.append({**g, "lr": lora_lr} if lora else g)
    return out


def make_optimizer(model, *, lr: float, weight_decay: float, betas: tuple[float, float], offload: bool,
                   lora_lr: float | None = None):
    groups = optimizer_groups(model, weight_decay, lora_lr)
    if offload and dist.on_gpu():
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=lr, betas=betas)
    # fused: one kernel per parameter group instead of a loop of small ops (on CPU too since torch 2.4)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)


def ds_config_for(cfg, *, micro_batch_size: int | None = None, zero_stage: int | None = None,
                  what: str = "model") -> dict:
    """The DeepSpeed config of a trained model, from its step's config dataclass, with the user's
    --deepspeed_config merged over it (printed once per model)."""
    world = dist.world_size()
    ours = train_ds_config(
        micro_batch_size=micro_batch_size or cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        world_size=world, zero_stage=cfg.zero_stage if zero_stage is None else zero_stage,
        offload=cfg.offload, dtype=cfg.dtype, gradient_clipping=cfg.gradient_clipping,
    )
    if not cfg.deepspeed_config:
        return ours

    user = read_deepspeed_config(cfg.deepspeed_config)
    merged = merge_user_config(ours, user)
    expected = merged["train_micro_batch_size_per_gpu"] * merged["gradient_accumulation_steps"] * world
    if merged.get("train_batch_size") != expected:
        if user.get("train_batch_size", "auto") != "auto":
            raise ConfigError(f"--deepspeed_config {cfg.deepspeed_config}: train_batch_size "
                              f"{user['train_batch_size']} is not micro-batch x accumulation x processes "
                              f"= {expected}")
        merged["train_batch_size"] = expected
    dist.print_rank0(f"[deepspeed] {what} config: {json.dumps(merged, sort_keys=True)}")
    return merged


def start_engine(model, cfg, n_train: int, ds_config: dict, what: str = "model"):
    """Report the parameter counts and wrap `model` in a DeepSpeed engine for the whole run."""
    trainable, total = count_parameters(model)
    dist.print_rank0(f"[model] {what} from {cfg.model_name_or_path}: {total:,} parameters, {trainable:,} trained")
    engine = init_engine(model, cfg, total_steps(n_train, cfg, dist.world_size()), ds_config=ds_config)
    if cfg.torch_compile:
        engine.compile()
    return engine


def init_engine(model, cfg, total_steps: int, *, ds_config: dict, part=None):
    """deepspeed.initialize with our optimizer and an HF learning-rate schedule, unless the
    user's --deepspeed_config brings its own "optimizer" / "scheduler" (then DeepSpeed builds them).
    `part` (step 3's actor or critic `ModelPart`) supplies learning rate and weight decay; else `cfg`."""
    import deepspeed
    from transformers import get_scheduler

    opts = part or cfg
    lr, wd = opts.learning_rate, opts.weight_decay
    lora_lr = opts.lora_learning_rate if getattr(opts, "lora_dim", 0) else None
    if "optimizer" in ds_config:
        opt, params = None, optimizer_groups(model, wd, lora_lr)
    else:
        opt, params = make_optimizer(model, lr=lr, weight_decay=wd, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                     offload=cfg.offload, lora_lr=lora_lr), None
    sched = None
    if "scheduler" not in ds_config and opt is not None:
        sched = get_scheduler(cfg.lr_scheduler_type, optimizer=opt, num_warmup_steps=warmup_steps(cfg, total_steps),
                              num_training_steps=max(total_steps, 1))
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, model_parameters=params, lr_scheduler=sched,
                                      config=ds_config)
    if dist.world_size() == 1 and ds_config.get("zero_optimization", {}).get("stage", 0) == 0:
        # one process: the allreduce is the identity, but ZeRO-0 first flattens every gradient into
        # a buffer (a transient copy of all gradients, the peak of each optimizer step)
        engine.enable_backward_allreduce = False
    return engine


def frozen_engine(load: Callable[[], torch.nn.Module], *, micro_batch_size: int, zero_stage: int, offload: bool,
                  dtype: str):
    """A model that never trains (a reference, a reward model) as a DeepSpeed engine without an
    optimizer, in eval mode, under its own ZeRO stage: `load` runs after that stage's config is
    announced to transformers, so at stage 3 the weights are partitioned as they load."""
    import deepspeed

    ds = eval_ds_config(micro_batch_size=micro_batch_size, world_size=dist.world_size(), zero_stage=zero_stage,
                        offload=offload, dtype=dtype)
    zero3_init_context(ds)
    model = load()
    model.requires_grad_(False)
    engine, *_ = deepspeed.initialize(model=model, config=ds)
    engine.eval()
    return engine


def engine_stats(engines: dict) -> dict[str, float]:
    """What a metrics row adds beyond the losses: the peak device memory of this process so far
    (GiB, on GPU) and, per fp16 engine, the optimizer steps its dynamic loss scaler skipped and the
    current scale, so a run that keeps overflowing shows it in metrics.jsonl."""
    out: dict[str, float] = {}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["memory/max_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
    for name, engine in engines.items():
        if engine is None or not engine.fp16_enabled():
            continue
        out[f"{name}/skipped_steps"] = float(engine.skipped_steps)
        scale = getattr(engine.optimizer, "cur_scale", None)
        if scale is not None:
            out[f"{name}/loss_scale"] = float(scale)
    return out


def grad_norms(engines: dict) -> dict[str, float]:
    """The global gradient norm of each engine's last optimizer step, by name. fp16 engines are left
    out: their loss scaler skips an overflowing step (counted in `skipped_steps`) instead of taking it."""
    out = {}
    for name, engine in engines.items():
        norm = engine.get_global_grad_norm() if engine is not None and not engine.fp16_enabled() else None
        if norm is not None:
            out[f"the {name} gradient norm"] = float(norm)
    return out


def non_finite_weights(engines: dict) -> list[str]:
    """The names of the engines whose weights hold a NaN or an inf on any rank (each rank checks its
    own ZeRO-3 partition). Collective: every rank gets the same list."""
    bad = []
    for name, engine in engines.items():
        mine = any(t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all())
                   for t in (getattr(p, "ds_tensor", p.data) for p in engine.module.parameters()))
        if dist.all_reduce_max(float(mine)) > 0:
            bad.append(name)
    return bad


def warmup_steps(cfg, total: int) -> int:
    """--num_warmup_steps, else --warmup_ratio of the run's `total` optimizer steps rounded up, as
    transformers does (step 3's config has no --warmup_ratio)."""
    return cfg.num_warmup_steps or math.ceil(getattr(cfg, "warmup_ratio", 0.0) * total)


def total_steps(n_examples: int, cfg, world_size: int) -> int:
    """Optimizer steps of a whole run (what the LR schedule spans)."""
    per_rank = -(-n_examples // world_size)
    windows = (-(-per_rank // cfg.per_device_train_batch_size)) // cfg.gradient_accumulation_steps
    total = windows * cfg.num_train_epochs
    return min(total, cfg.max_steps) if cfg.max_steps else total
