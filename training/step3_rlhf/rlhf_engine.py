"""DeepSpeedRLHFEngine: the four (five with EMA) models of PPO, each its own DeepSpeed engine.

- actor: trained causal LM, from the SFT model (ZeRO --actor_zero_stage, optional LoRA)
- ref: frozen copy of the SFT model (same stage; --offload_reference_model at stage 3)
- critic: trained scalar-head model, from the reward model (ZeRO --critic_zero_stage); none with
  --remove_critic_model
- reward: frozen reward model (same stage; --offload_reward_model at stage 3), when used
- ema: optional moving average of the actor (--enable_ema), a plain module on CPU
"""
from __future__ import annotations

import copy
import warnings

import torch

from utils import distributed as dist
from utils.ds_config import eval_ds_config, train_ds_config
from utils.models import (load_causal_lm, load_reward_model, load_trainable_lm, zero3_init_context)
from utils.trainer import init_engine


class DeepSpeedRLHFEngine:
    def __init__(self, cfg, tokenizer, total_steps: int):
        import deepspeed

        self.cfg = cfg
        world = dist.world_size()
        mbs = cfg.per_device_training_batch_size

        def train_cfg(stage):
            return train_ds_config(micro_batch_size=mbs, gradient_accumulation_steps=1, world_size=world,
                                   zero_stage=stage, offload=cfg.offload, dtype=cfg.dtype,
                                   gradient_clipping=cfg.gradient_clipping)

        def frozen(model, stage, offload):
            model.requires_grad_(False)
            ds = eval_ds_config(micro_batch_size=mbs, world_size=world, zero_stage=stage, offload=offload,
                                dtype=cfg.dtype)
            engine, *_ = deepspeed.initialize(model=model, config=ds)
            engine.eval()
            return engine

        actor_ds = train_cfg(cfg.actor_zero_stage)
        self.hybrid = cfg.enable_hybrid_engine and dist.on_gpu()
        if cfg.enable_hybrid_engine and not self.hybrid:
            warnings.warn("--enable_hybrid_engine needs a GPU (DeepSpeed's inference kernels have no CPU "
                          "implementation); generating with the training engine instead")
            dist.print_rank0("[rlhf] hybrid engine switched off: no GPU")
        if self.hybrid:
            actor_ds["hybrid_engine"] = {"enabled": True, "max_out_tokens": cfg.max_prompt_seq_len +
                                         cfg.max_answer_seq_len, "inference_tp_size": 1,
                                         "release_inference_cache": False, "pin_parameters": True,
                                         "tp_gather_partition_size": 8}
        actor = load_trainable_lm(cfg, tokenizer, actor_ds, path=cfg.actor_model_name_or_path)
        self.actor = init_engine(actor, cfg, total_steps, lr=cfg.actor_learning_rate, ds_config=actor_ds)

        ref_ds = eval_ds_config(micro_batch_size=mbs, world_size=world, zero_stage=cfg.actor_zero_stage,
                                offload=cfg.offload_reference_model, dtype=cfg.dtype)
        zero3_init_context(ref_ds)
        self.ref = frozen(load_causal_lm(cfg.actor_model_name_or_path, tokenizer, trust_remote_code=cfg.trust_remote_code,
                                         disable_dropout_=True), cfg.actor_zero_stage, cfg.offload_reference_model)

        self.critic = None
        if not cfg.remove_critic_model:
            critic_ds = train_cfg(cfg.critic_zero_stage)
            critic = load_trainable_lm(cfg, tokenizer, critic_ds, path=cfg.critic_model_name_or_path, reward=True)
            self.critic = init_engine(critic, cfg, total_steps, lr=cfg.critic_learning_rate, ds_config=critic_ds)

        self.reward = None
        self.reward_tokenizer = tokenizer
        if cfg.use_reward_model:
            if cfg.reward_tokenizer_name_or_path:
                from utils.models import load_tokenizer

                self.reward_tokenizer = load_tokenizer(cfg.reward_tokenizer_name_or_path,
                                                       trust_remote_code=cfg.trust_remote_code)
            rw_ds = eval_ds_config(micro_batch_size=mbs, world_size=world, zero_stage=cfg.critic_zero_stage,
                                   offload=cfg.offload_reward_model, dtype=cfg.dtype)
            zero3_init_context(rw_ds)
            rm = load_reward_model(cfg.reward_model_name_or_path, self.reward_tokenizer,
                                   trust_remote_code=cfg.trust_remote_code, disable_dropout_=True)
            self.reward = frozen(rm, cfg.critic_zero_stage, cfg.offload_reward_model)
        zero3_init_context({"zero_optimization": {"stage": 0}})

        self.ema = None
        if cfg.enable_ema:
            if cfg.actor_zero_stage == 3:
                raise ValueError("--enable_ema is supported with --actor_zero_stage 0-2")
            self.ema = copy.deepcopy(self.actor.module).to("cpu").eval().requires_grad_(False)

    @torch.no_grad()
    def update_ema(self) -> None:
        """ema = decay * ema + (1 - decay) * actor, after each actor step."""
        if self.ema is None:
            return
        d = self.cfg.ema_decay
        for e, p in zip(self.ema.parameters(), self.actor.module.parameters()):
            e.mul_(d).add_(p.detach().to(e.device, e.dtype), alpha=1 - d)

    def train(self) -> None:
        for m in (self.actor, self.critic):
            if m is not None:
                m.train()

    def eval(self) -> None:
        for m in (self.actor, self.critic):
            if m is not None:
                m.eval()
