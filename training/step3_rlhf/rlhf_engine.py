"""DeepSpeedRLHFEngine: the four (five with EMA) models of PPO, each its own DeepSpeed engine.

- actor: trained causal LM, from the SFT model (ZeRO --actor_zero_stage, optional LoRA)
- ref: frozen copy of the SFT model (same stage; --offload_reference_model at stage 3); none with
  --remove_kl_penalty (or no KL in the reward nor in the loss)
- critic: trained scalar-head model, from the reward model (ZeRO --critic_zero_stage); none with a
  critic-free --advantage_estimator (grpo, rloo, reinforce_pp; --remove_critic_model)
- reward: frozen reward model (same stage; --offload_reward_model at stage 3), when used
- ema: optional moving average of the actor (--enable_ema), a plain module on CPU
"""
from __future__ import annotations

import copy

import torch

from utils import distributed as dist
from utils.models import (TORCH_DTYPES, check_positions, load_causal_lm, load_reward_model, load_tokenizer,
                          load_trainable_lm, zero3_init_context)
from utils.engines import ds_config_for, frozen_engine, init_engine


class DeepSpeedRLHFEngine:
    def __init__(self, cfg, tokenizer, total_steps: int):
        self.cfg = cfg
        mbs = cfg.per_device_training_batch_size
        actor_ds = ds_config_for(cfg, micro_batch_size=mbs, zero_stage=cfg.actor_zero_stage, what="actor")
        if cfg.enable_mixed_precision_lora and dist.on_gpu():
            # ZeRO++: frozen base weights quantized, the LoRA adapters train in full precision
            actor_ds["zero_optimization"]["zero_quantized_nontrainable_weights"] = True
        actor_part = cfg.model_part("actor")
        actor = load_trainable_lm(actor_part, tokenizer, actor_ds)
        self.hybrid = cfg.enable_hybrid_engine and dist.on_gpu()
        if self.hybrid:
            why_not = hybrid_engine_unsupported(actor)
            if why_not:
                dist.print_rank0(f"[hybrid engine] off: {why_not}; generating with the model's own forward")
                self.hybrid = False
            else:
                actor_ds["hybrid_engine"] = hybrid_engine_config(cfg)
        self.actor = init_engine(actor, cfg, total_steps, ds_config=actor_ds, part=actor_part)

        self.ref = None
        if not cfg.remove_kl_penalty:
            self.ref = frozen_engine(
                lambda: load_causal_lm(cfg.actor_model_name_or_path, tokenizer, trust_remote_code=cfg.trust_remote_code,
                                       disable_dropout_=True, resize_embeddings=cfg.add_eot_token,
                                       dtype=TORCH_DTYPES[cfg.dtype]),
                micro_batch_size=mbs, zero_stage=cfg.actor_zero_stage, offload=cfg.offload_reference_model,
                dtype=cfg.dtype)

        self.critic = None
        if not cfg.remove_critic_model:
            critic_ds = ds_config_for(cfg, micro_batch_size=mbs, zero_stage=cfg.critic_zero_stage, what="critic")
            critic_part = cfg.model_part("critic")
            critic = load_trainable_lm(critic_part, tokenizer, critic_ds, reward=True)
            self.critic = init_engine(critic, cfg, total_steps, ds_config=critic_ds, part=critic_part)

        self.reward = None
        self.reward_tokenizer = tokenizer
        if cfg.use_reward_model:
            if cfg.reward_tokenizer_name_or_path:
                self.reward_tokenizer = load_tokenizer(cfg.reward_tokenizer_name_or_path,
                                                       trust_remote_code=cfg.trust_remote_code,
                                                       eot_token=cfg.eot_token if cfg.add_eot_token else None)
            self.reward = frozen_engine(
                lambda: load_reward_model(cfg.reward_model_name_or_path, self.reward_tokenizer,
                                          trust_remote_code=cfg.trust_remote_code, disable_dropout_=True,
                                          resize_embeddings=cfg.add_eot_token, dtype=TORCH_DTYPES[cfg.dtype]),
                micro_batch_size=mbs, zero_stage=cfg.critic_zero_stage, offload=cfg.offload_reward_model,
                dtype=cfg.dtype)
        zero3_init_context({"zero_optimization": {"stage": 0}})
        length = cfg.max_prompt_seq_len + cfg.max_answer_seq_len
        for model, path in ((self.actor, cfg.actor_model_name_or_path), (self.critic, cfg.critic_model_name_or_path),
                            (self.reward, cfg.reward_model_name_or_path)):
            if model is not None:
                check_positions(model, length, "--max_prompt_seq_len + --max_answer_seq_len", path)

        self.ema = ema_copy(self.actor.module) if cfg.enable_ema else None

    def update_ema(self) -> None:
        """After each actor step."""
        if self.ema is not None:
            ema_update(self.ema, self.actor.module, self.cfg.ema_decay)

    def train(self) -> None:
        for m in (self.actor, self.critic):
            if m is not None:
                m.train()

    def eval(self) -> None:
        for m in (self.actor, self.critic):
            if m is not None:
                m.eval()


def hybrid_engine_config(cfg) -> dict:
    """DeepSpeed's hybrid-engine section from the step-3 flags (as DeepSpeed-Chat sets it)."""
    return {"enabled": True, "max_out_tokens": cfg.max_prompt_seq_len + cfg.max_answer_seq_len,
            "inference_tp_size": cfg.inference_tp_size, "release_inference_cache": cfg.release_inference_cache,
            "pin_parameters": not cfg.unpin_actor_parameters, "tp_gather_partition_size": cfg.tp_gather_partition_size}


def hybrid_engine_unsupported(model: torch.nn.Module) -> str | None:
    """Why DeepSpeed's hybrid engine cannot generate for `model`, or None when it can.

    In generation the hybrid engine swaps each decoder layer's forward for its inference kernel's,
    written for the layer contract of transformers before the Cache classes (a tuple out, a legacy
    key/value tuple, an additive mask). DeepSpeed itself keeps OPT off that path once its layer takes
    `past_key_values` / `cache_position`; on Llama it does not, and on an H100 (DeepSpeed 0.19.8,
    transformers 4.57) generation first crashed on the tuple, and with the contract adapted ran 3x
    faster but with greedy tokens different from the model's own from the first step (logits
    apart by up to 1.9). So every such layer keeps its own forward."""
    import inspect

    from deepspeed.module_inject.replace_policy import replace_policies

    kernels = set()
    for policy in replace_policies:
        policy(None)  # as DeepSpeed does: sets the policy's transformers layer class, if installed
        orig = policy._orig_layer_class
        kernels.update(orig if isinstance(orig, list) else [orig] if orig is not None else [])
    layers = {type(m) for m in model.modules() if type(m) in kernels}
    if not layers:
        return f"DeepSpeed has no inference kernels for {type(model).__name__}"
    modern = sorted(c.__name__ for c in layers
                    if {"past_key_values", "cache_position"} & set(inspect.signature(c.forward).parameters))
    if modern:
        return (f"DeepSpeed's inference kernels for {', '.join(modern)} expect the decoder-layer contract from "
                f"before transformers' Cache classes (on Llama they crashed; adapted, they generated other tokens "
                f"than the model)")
    return None


def ema_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A frozen CPU copy in fp32 whatever the training dtype: in bf16 a (1 - 0.992) update mostly
    rounds away."""
    return copy.deepcopy(module).to("cpu", torch.float32).eval().requires_grad_(False)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, module: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * module, parameter by parameter."""
    for e, p in zip(ema.parameters(), module.parameters()):
        e.mul_(decay).add_(p.detach().to(e.device, e.dtype), alpha=1 - decay)
