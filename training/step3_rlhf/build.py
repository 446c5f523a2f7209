"""Everything step 3 loads before training: tokenizer, prompts, the four models, reward sources.

Runs inside `user_errors()`: a bad path, row or flag stops here in one line, before the output
folder is written. COMET models load before the DeepSpeed engines, so a bad path fails in seconds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from training.step3_rlhf.rlhf_engine import DeepSpeedRLHFEngine
from training.step3_rlhf.update import optimizer_steps_per_round
from utils import distributed as dist
from utils.config import ConfigError
from utils.data import Phase, epoch_batches, load_step_records, tokenize_records
from utils.data.collate import BatchStream
from utils.data.readers import read_dataset
from utils.data.rlhf import PromptExample, tokenize_prompts
from utils.models import load_tokenizer_for
from utils.predict import make_predict_hook
from utils.rewards import RewardModelSource, RuleSource
from utils.rewards.classifier import build_classifier_sources
from utils.rewards.comet import build_comet_sources


@dataclass
class RLHFSetup:
    tokenizer: object
    prompts: list[PromptExample]        # training prompts
    eval_prompts: list[PromptExample]   # held-out prompts (--eval_data_path, else the test split)
    rlhf: DeepSpeedRLHFEngine
    sources: dict                       # name -> reward source, in one order on every rank
    weights: dict                       # name -> weight of its scores in the end reward
    ptx: BatchStream | None             # --add_pretrained_loss text batches
    predict: Callable | None            # --predict_* hook
    rounds_per_epoch: int


def build(cfg) -> RLHFSetup:
    for note in cfg.machine_notes(dist.on_gpu()):
        dist.print_rank0(f"[flags] {note}")
    tokenizer = load_tokenizer_for(cfg, cfg.actor_model_name_or_path, padding_side="left")
    data = load_step_records(cfg.data_part(), Phase.RLHF)
    prompts = tokenize_prompts(data.train, tokenizer, cfg.max_prompt_seq_len, cfg.max_seq_len, cfg.add_sft_loss,
                               cfg.data_output_path, cfg.data_format)
    predict = make_predict_hook(cfg, tokenizer, cfg.max_prompt_seq_len)
    ptx = None
    if cfg.add_pretrained_loss and cfg.unsupervised_dataset_name:
        ptx = load_pretraining_batches(cfg, tokenizer)
    held_out = read_dataset(cfg.eval_data_path).train if cfg.eval_data_path else data.test
    eval_prompts = tokenize_prompts(held_out, tokenizer, cfg.max_prompt_seq_len, cfg.max_seq_len, False,
                                    fmt=cfg.data_format)
    if cfg.eval_steps and not eval_prompts:
        raise ConfigError("--eval_steps needs held-out prompts: --eval_data_path, or a test split in --data_path")
    comet = build_comet_sources(cfg, all(p.reference for p in prompts)) if cfg.use_comet_model else []
    classifiers = build_classifier_sources(cfg)
    per_epoch = len(epoch_batches(len(prompts), cfg.per_device_generation_batch_size, rank=0,
                                  world_size=dist.world_size(), seed=cfg.seed, epoch=0))
    rounds_per_epoch = per_epoch // cfg.generation_batches
    if rounds_per_epoch == 0:
        raise ConfigError(f"--generation_batches {cfg.generation_batches}: an epoch has only {per_epoch} "
                          f"generation batches per rank")
    # optimizer steps the LR schedule spans (independent of --max_steps, so a run stopped early and
    # resumed follows the same schedule)
    total = rounds_per_epoch * cfg.num_train_epochs * optimizer_steps_per_round(cfg)
    rlhf = DeepSpeedRLHFEngine(cfg, tokenizer, total)
    sources, weights = build_sources(cfg, rlhf, comet, classifiers)
    columns = {k for p in prompts + eval_prompts if p.columns for k in p.columns}
    for src in sources.values():
        if isinstance(src, RuleSource):
            try:
                src.check(columns)
            except ValueError as e:
                raise ConfigError(str(e))
    if ("reward_model" in sources and any(p.messages is not None for p in prompts + eval_prompts)
            and not getattr(rlhf.reward_tokenizer, "chat_template", None)):
        raise ConfigError("conversational prompts: the reward model's tokenizer has no chat template to render them "
                          "with (--reward_tokenizer_name_or_path can name one that has)")
    dist.print_rank0(f"[data] {len(prompts)} prompts; reward sources: " +
                     ", ".join(f"{k} x {w:g}" for k, w in weights.items()))
    for src in comet:
        dist.print_rank0(f"[comet] {src.name} = {src.spec} on {src.device}, "
                         f"{'src+mt+ref' if src.use_reference else 'src+mt'}")
    return RLHFSetup(tokenizer, prompts, eval_prompts, rlhf, sources, weights, ptx, predict, rounds_per_epoch)


def load_pretraining_batches(cfg, tokenizer) -> BatchStream:
    """Packed text batches for --add_pretrained_loss with a dataset, endless, sharded over ranks."""
    raw = read_dataset(cfg.unsupervised_dataset_name, config_name=cfg.unsupervised_dataset_config_name)
    examples, _ = tokenize_records(raw.train, tokenizer, cfg.max_seq_len, "text")
    if not examples:
        raise ConfigError(f"--unsupervised_dataset_name {cfg.unsupervised_dataset_name}: no text")
    return BatchStream(examples, cfg.per_device_training_batch_size, tokenizer.pad_token_id, rank=dist.rank(),
                       world_size=dist.world_size(), seed=cfg.seed)


def build_sources(cfg, rlhf, comet: list, classifiers: list = ()) -> tuple[dict, dict]:
    """name -> reward source and name -> weight, in a fixed order on every rank."""
    sources, weights = {}, {}
    if cfg.use_reward_model:
        sources["reward_model"] = RewardModelSource(rlhf.reward, rlhf.reward_tokenizer,
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
    for src, w in zip(classifiers, cfg.reward_classifier_weights):
        sources[src.name], weights[src.name] = src, w
    return sources, weights
