"""DeepSpeedRLHFEngine: the four (five with EMA) models of PPO, each its own DeepSpeed engine.

- actor: trained causal LM, from the SFT model (ZeRO --actor_zero_stage, optional LoRA)
- ref: frozen copy of the SFT model (same stage; --offload_reference_model at stage 3); none with
  --remove_kl_penalty
- critic: trained scalar-head model, from the reward model (ZeRO --critic_zero_stage); none with
  --remove_critic_model
- reward: frozen reward model (same stage; --offload_reward_model at stage 3), when used
- ema: optional moving average of the actor (--enable_ema), a plain module on CPU
"""
from __future__ import annotations

import copy

import torch

from utils import distributed as dist
from utils.ds_config import eval_ds_config
from utils.models import TORCH_DTYPES, load_causal_lm, load_reward_model, load_trainable_lm, zero3_init_context
from utils.trainer import ds_config_for, init_engine


class DeepSpeedRLHFEngine:
    def __init__(self, cfg, tokenizer, total_steps: int):
        import deepspeed

        self.cfg = cfg
        world = dist.world_size()
        mbs = cfg.per_device_training_batch_size

        def frozen(model, stage, offload):
            model.requires_grad_(False)
            ds = eval_ds_config(micro_batch_size=mbs, world_size=world, zero_stage=stage, offload=offload,
                                dtype=cfg.dtype)
            engine, *_ = deepspeed.initialize(model=model, config=ds)
            engine.eval()
            return engine

        actor_ds = ds_config_for(cfg, micro_batch_size=mbs, zero_stage=cfg.actor_zero_stage, what="actor")
        self.hybrid = cfg.enable_hybrid_engine and dist.on_gpu()
        if self.hybrid:
            actor_ds["hybrid_engine"] = hybrid_engine_config(cfg)
        if cfg.enable_mixed_precision_lora and dist.on_gpu():
            # ZeRO++: frozen base weights quantized, the LoRA adapters train in full precision
            actor_ds["zero_optimization"]["zero_quantized_nontrainable_weights"] = True
        actor_side = cfg.side("actor")
        actor = load_trainable_lm(actor_side, tokenizer, actor_ds)
        self.actor = init_engine(actor, cfg, total_steps, ds_config=actor_ds, side=actor_side)
        if self.hybrid:
            adapt_inference_layers(self.actor)

        self.ref = None
        if not cfg.remove_kl_penalty:
            ref_ds = eval_ds_config(micro_batch_size=mbs, world_size=world, zero_stage=cfg.actor_zero_stage,
                                    offload=cfg.offload_reference_model, dtype=cfg.dtype)
            zero3_init_context(ref_ds)
            ref = load_causal_lm(cfg.actor_model_name_or_path, tokenizer, trust_remote_code=cfg.trust_remote_code,
                                 disable_dropout_=True, resize_embeddings=cfg.add_eot_token,
                                 dtype=TORCH_DTYPES[cfg.dtype])
            self.ref = frozen(ref, cfg.actor_zero_stage, cfg.offload_reference_model)

        self.critic = None
        if not cfg.remove_critic_model:
            critic_ds = ds_config_for(cfg, micro_batch_size=mbs, zero_stage=cfg.critic_zero_stage, what="critic")
            critic_side = cfg.side("critic")
            critic = load_trainable_lm(critic_side, tokenizer, critic_ds, reward=True)
            self.critic = init_engine(critic, cfg, total_steps, ds_config=critic_ds, side=critic_side)

        self.reward = None
        self.reward_tokenizer = tokenizer
        if cfg.use_reward_model:
            if cfg.reward_tokenizer_name_or_path:
                from utils.models import load_tokenizer

                self.reward_tokenizer = load_tokenizer(cfg.reward_tokenizer_name_or_path,
                                                       trust_remote_code=cfg.trust_remote_code,
                                                       eot_token=cfg.eot_token if cfg.add_eot_token else None)
            rw_ds = eval_ds_config(micro_batch_size=mbs, world_size=world, zero_stage=cfg.critic_zero_stage,
                                   offload=cfg.offload_reward_model, dtype=cfg.dtype)
            zero3_init_context(rw_ds)
            rm = load_reward_model(cfg.reward_model_name_or_path, self.reward_tokenizer,
                                   trust_remote_code=cfg.trust_remote_code, disable_dropout_=True,
                                   resize_embeddings=cfg.add_eot_token, dtype=TORCH_DTYPES[cfg.dtype])
            self.reward = frozen(rm, cfg.critic_zero_stage, cfg.offload_reward_model)
        zero3_init_context({"zero_optimization": {"stage": 0}})

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


def adapt_inference_layers(engine) -> int:
    """Make the hybrid engine's inference layers keep the decoder-layer contract of the installed
    transformers; returns how many were adapted.

    In generation DeepSpeed swaps every decoder layer's forward for its inference kernel's, which
    keeps the contract of transformers before 4.48: it returns a tuple (hidden states, present
    key/values) and reads the attention mask as additive floats. Decoder layers that take
    `past_key_values` (Llama, Mistral, Qwen2... since then) return the hidden states alone and get a
    boolean 4-D mask (or none), so the next layer received a tuple and generation crashed. The
    kernels keep their own key/value cache, so the tuple's second part is not needed."""
    import inspect

    containers = getattr(engine, "_inference_containers", [])
    originals = getattr(engine, "_orig_modules", [])
    if not containers or "past_key_values" not in inspect.signature(type(originals[0]).forward).parameters:
        return 0
    for c in containers:
        c.module.forward = _tensor_contract(c.module.forward, c.module.config.dtype)
    return len(containers)


def _tensor_contract(forward, dtype: torch.dtype):
    def adapted(*args, **kwargs):
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dtype == torch.bool:
            kwargs["attention_mask"] = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
                ~mask, torch.finfo(dtype).min)
        out = forward(*args, **kwargs)
        return out[0] if isinstance(out, tuple) else out
    return adapted


def ema_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A frozen CPU copy in fp32 whatever the training dtype: in bf16 a (1 - 0.992) update mostly
    rounds away."""
    return copy.deepcopy(module).to("cpu", torch.float32).eval().requires_grad_(False)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, module: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * module, parameter by parameter."""
    for e, p in zip(ema.parameters(), module.parameters()):
        e.mul_(decay).add_(p.detach().to(e.device, e.dtype), alpha=1 - decay)
