"""Step 3: RLHF with PPO (actor, critic, frozen reference and reward sources).

    python -m training.step3_rlhf.main --actor_model_name_or_path SFT_DIR --critic_model_name_or_path RM_DIR \\
        --data_path PROMPTS --output_dir O
    deepspeed --num_gpus 8 --module training.step3_rlhf.main --actor_zero_stage 3 --critic_zero_stage 3 \\
        --enable_hybrid_engine ...
    ... --reward_functions examples.demo.task:reward --use_reward_model false   # rule reward only

Prompts use the SFT format (`output` = reference answer, used by --add_sft_loss). Saves
`actor/` (and `critic/`, `actor_ema/`) as HF folders; `--save_steps` + `--resume` continue
a run exactly.
"""
from __future__ import annotations

import time

from transformers import AutoModelForSequenceClassification

from training.step3_rlhf.ppo_trainer import PPOTrainer, optimizer_steps_per_round
from training.step3_rlhf.rlhf_engine import DeepSpeedRLHFEngine
from utils import distributed as dist
from utils.checkpoint import latest_tag, load_checkpoint, rng_state, save_checkpoint, save_hf_model, set_rng_state
from utils.config import ConfigError, RLHFConfig, parse_config
from utils.data import epoch_batches, load_step_records, tokenize_records
from utils.data.collate import BatchStream
from utils.data.readers import read_dataset
from utils.data.rlhf import tokenize_prompts
from utils.logging import MetricsLogger, progress
from utils.models import load_tokenizer_for
from utils.predict import make_predict_hook
from utils.rewards import RewardModelSource, RuleSource
from utils.rewards.comet import build_comet_sources
from utils.run import Preemption, finish, start, user_errors


def load_pretraining_batches(cfg, tokenizer) -> BatchStream:
    """Packed text batches for --add_pretrained_loss with a dataset, endless, sharded over ranks."""
    raw = read_dataset(cfg.unsupervised_dataset_name, config_name=cfg.unsupervised_dataset_config_name)
    examples, _ = tokenize_records(raw.train, tokenizer, cfg.max_seq_len, "text")
    if not examples:
        raise ConfigError(f"--unsupervised_dataset_name {cfg.unsupervised_dataset_name}: no text")
    return BatchStream(examples, cfg.per_device_training_batch_size, tokenizer.pad_token_id, rank=dist.rank(),
                       world_size=dist.world_size(), seed=cfg.seed)


def build_sources(cfg, rlhf, comet: list) -> tuple[dict, dict]:
    """name -> reward source and name -> weight, in a fixed order on every rank."""
    sources, weights = {}, {}
    if cfg.use_reward_model:
        same = cfg.reward_tokenizer_name_or_path is None
        sources["reward_model"] = RewardModelSource(rlhf.reward, rlhf.reward_tokenizer, same,
                                                    cfg.per_device_training_batch_size, dist.device())
        weights["reward_model"] = cfg.reward_model_weight
    if len(set(cfg.reward_functions)) < len(cfg.reward_functions):
        raise ConfigError("--reward_functions names a function twice (use --reward_function_weights to weigh it)")
    for spec, w in zip(cfg.reward_functions, cfg.reward_function_weights):
        try:
            src = RuleSource(spec)
        except ValueError as e:
            raise ConfigError(str(e))
        if src.name in sources:  # two modules' functions of one name: both count, under their full specs
            src.name = spec
        sources[src.name], weights[src.name] = src, w
    for src, w in zip(comet, cfg.weights_comet_model):
        sources[src.name], weights[src.name] = src, w
    return sources, weights


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(RLHFConfig, argv)
    start(cfg)
    with user_errors():
        tokenizer = load_tokenizer_for(cfg, cfg.actor_model_name_or_path, padding_side="left")
        data = load_step_records(cfg.data_path, cfg.data_split, step=2, seed=cfg.data_seed)
        prompts = tokenize_prompts(data.train, tokenizer, cfg.max_prompt_seq_len, cfg.max_seq_len, cfg.add_sft_loss,
                                   cfg.data_output_path)
        predict = make_predict_hook(cfg, tokenizer, cfg.max_prompt_seq_len)
        ptx = (load_pretraining_batches(cfg, tokenizer)
               if cfg.add_pretrained_loss and cfg.unsupervised_dataset_name else None)
        held_out = read_dataset(cfg.eval_data_path).train if cfg.eval_data_path else data.test
        eval_prompts = tokenize_prompts(held_out, tokenizer, cfg.max_prompt_seq_len, cfg.max_seq_len, False)
        if cfg.eval_steps and not eval_prompts:
            raise ConfigError("--eval_steps needs held-out prompts: --eval_data_path, or a test split in --data_path")
        # COMET models load before the DeepSpeed engines, so a bad path fails in seconds
        comet = build_comet_sources(cfg, all(p.reference for p in prompts)) if cfg.use_comet_model else []
        per_epoch = len(epoch_batches(len(prompts), cfg.per_device_generation_batch_size, rank=0,
                                      world_size=dist.world_size(), seed=cfg.seed, epoch=0))
        # optimizer steps the LR schedule spans (independent of --max_steps, so a run stopped
        # early and resumed follows the same schedule)
        total = per_epoch // cfg.generation_batches * cfg.num_train_epochs * optimizer_steps_per_round(cfg)
        rlhf = DeepSpeedRLHFEngine(cfg, tokenizer, max(total, 1))
        sources, weights = build_sources(cfg, rlhf, comet)
    dist.print_rank0(f"[data] {len(prompts)} prompts; reward sources: " +
                     ", ".join(f"{k} x {w:g}" for k, w in weights.items()))
    for src in comet:
        dist.print_rank0(f"[comet] {src.name} = {src.spec} on {src.device}, "
                         f"{'src+mt+ref' if src.use_reference else 'src+mt'}")
    trainer = PPOTrainer(cfg, rlhf, tokenizer, sources, weights, ptx)
    logger = MetricsLogger(cfg.output_dir, tensorboard=cfg.enable_tensorboard,
                           tensorboard_path=cfg.tensorboard_path, name="rlhf", append=cfg.resume)
    ckpt_dir = f"{cfg.output_dir}/checkpoints"
    engines = {k: v for k, v in (("actor", rlhf.actor), ("critic", rlhf.critic)) if v is not None}
    state = {"epoch": 0, "batch": 0, "step": 0}
    if cfg.resume and (tag := latest_tag(ckpt_dir)):
        client = load_checkpoint(engines, ckpt_dir, tag)
        state = dict(client["state"])
        set_rng_state(client["rng"][dist.rank()])
        trainer.kl.value = client["kl_ctl"]
        trainer.normalizer.queue.extend(client["reward_queue"])
        trainer.load_state_dict(client["trainer"])
        for name, st in client.get("reward_sources", {}).items():
            sources[name].load_state_dict(st)
        if rlhf.ema is not None and client.get("ema") is not None:
            rlhf.ema.load_state_dict(client["ema"])
        if ptx is not None and client.get("ptx") is not None:
            ptx.load_state_dict(client["ptx"])
        dist.print_rank0(f"[resume] {ckpt_dir}/{tag}: epoch {state['epoch']}, step {state['step']}")

    preemption = Preemption()
    rounds_per_epoch = per_epoch // cfg.generation_batches
    bar = progress(rounds_per_epoch * cfg.num_train_epochs, state["step"], desc="ppo", disable=cfg.disable_tqdm)
    history = []
    for epoch in range(state["epoch"], cfg.num_train_epochs):
        batches = epoch_batches(len(prompts), cfg.per_device_generation_batch_size, rank=dist.rank(),
                                world_size=dist.world_size(), seed=cfg.seed, epoch=epoch)
        for r in range(state["batch"], rounds_per_epoch):
            exps, stats = [], {}
            for b in batches[r * cfg.generation_batches:(r + 1) * cfg.generation_batches]:
                exp, s = trainer.make_experience([prompts[i] for i in b], b)
                exps.append(exp)
                for k, v in s.items():
                    stats[k] = stats.get(k, 0.0) + v / cfg.generation_batches
            stats.update(trainer.train_on(exps, critic_only=epoch == 0 and r < cfg.critic_go_first_steps))
            stats.update({f"count/{k}": v for k, v in trainer.counters.items()})
            last = state["step"] + 1 == rounds_per_epoch * cfg.num_train_epochs or state["step"] + 1 == cfg.max_steps
            if cfg.eval_steps and ((state["step"] + 1) % cfg.eval_steps == 0 or last):
                t = time.perf_counter()
                stats.update(trainer.evaluate(eval_prompts))
                stats["time/eval"] = time.perf_counter() - t
            state = {"epoch": epoch, "batch": r + 1, "step": state["step"] + 1}
            stats = {k: dist.all_reduce_sum(v) / dist.world_size() for k, v in sorted(stats.items())}
            logger.log(state["step"], stats)
            if predict:
                predict(rlhf.actor, epoch, state["step"])
            history.append({"step": state["step"], **stats})
            bar.update(1)
            bar.set_postfix(reward=f"{stats['reward/total']:.3f}", kl=f"{stats['kl']:.3f}")
            if cfg.print_answers and state["step"] % cfg.print_answers_interval == 0:
                prompt, answer = trainer.last_sample
                dist.print_rank0(f"[answer] step {state['step']}\n--- prompt ---\n{prompt}\n--- answer ---\n{answer}")
            saved = bool(cfg.save_steps and state["step"] % cfg.save_steps == 0)
            preempted = preemption.due()
            if saved or preempted:
                client = {"state": state, "rng": dist.all_gather_object(rng_state()), "kl_ctl": trainer.kl.value,
                          "reward_queue": list(trainer.normalizer.queue),
                          "reward_sources": {k: v.state_dict() for k, v in sources.items()},
                          "trainer": trainer.state_dict(),
                          "ema": rlhf.ema.state_dict() if rlhf.ema is not None else None,
                          "ptx": ptx.state_dict() if ptx is not None else None}
                save_checkpoint(engines, ckpt_dir, f"step{state['step']}", client, cfg.save_total_limit)
                if preempted:
                    logger.close()
                    preemption.stop(ckpt_dir, state["step"])
            if cfg.max_steps and state["step"] >= cfg.max_steps:
                break
        state = {"epoch": epoch + 1, "batch": 0, "step": state["step"]}
        if cfg.max_steps and state["step"] >= cfg.max_steps:
            break
    bar.close()
    logger.close()

    save_hf_model(rlhf.actor.module, tokenizer, f"{cfg.output_dir}/actor")
    if rlhf.critic is not None:
        save_hf_model(rlhf.critic.module, tokenizer, f"{cfg.output_dir}/critic",
                      model_cls=AutoModelForSequenceClassification)
    if rlhf.ema is not None:
        save_hf_model(rlhf.ema, tokenizer, f"{cfg.output_dir}/actor_ema")
    finish()
    return {"history": history, "engine": rlhf}


if __name__ == "__main__":
    main()
