"""Config dataclasses: shared parts written once, one composed dataclass per step.

Parsed with `transformers.HfArgumentParser` from flags, or from a `.yaml`/`.json` file given
as the first argument (flags after it override the file). Cross-field checks live in
`__post_init__` and name the flags at fault.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional


def _f(default, help: str, **kw):
    """A dataclass field with help text (the help is what `--help` prints)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


class ConfigError(ValueError):
    """A bad flag value; printed as one line by the entry point."""


@dataclass
class ModelOptions:
    """How models are loaded and trained (every step; step 3 applies them to actor and critic)."""
    trust_remote_code: bool = _f(False, "Allow model code from the hub (only when you trust it).")
    dtype: str = _f("fp32", "Training precision: fp32, bf16 or fp16 (mixed precision through DeepSpeed).",
                    choices=["fp32", "bf16", "fp16"])
    gradient_checkpointing: bool = _f(False, "Recompute activations in backward to save memory.")
    disable_dropout: bool = _f(False, "Set every dropout probability in the model to 0.")
    lora_dim: int = _f(0, "LoRA rank; 0 disables LoRA.")
    lora_alpha: Optional[float] = _f(None, "LoRA scaling numerator (scale = alpha / rank); defaults to the rank.")
    lora_module_name: str = _f("layers.", "LoRA wraps every nn.Linear whose qualified name contains this string.")
    only_optimize_lora: bool = _f(False, "With LoRA, train only the adapters (the base model stays frozen).")

    def check_model_options(self) -> None:
        if self.lora_dim < 0:
            raise ConfigError(f"--lora_dim must be >= 0, got {self.lora_dim}")
        if self.only_optimize_lora and self.lora_dim == 0:
            raise ConfigError("--only_optimize_lora needs --lora_dim > 0")


@dataclass
class ModelArgs(ModelOptions):
    model_name_or_path: Optional[str] = _f(None, "Local folder or hub name of a causal LM to start from.")
    tokenizer_name_or_path: Optional[str] = _f(None, "Tokenizer to use; defaults to --model_name_or_path.")

    def check_model(self) -> None:
        if not self.model_name_or_path:
            raise ConfigError("--model_name_or_path is required")
        self.check_model_options()


@dataclass
class DataArgs:
    data_path: list[str] = _f([], "One or more files, folders (train.* / test.*) or dataset names; several blend.")
    data_split: Optional[str] = _f(None, "Weights a,b,c splitting every dataset between steps 1, 2 and 3 "
                                         "(seeded, disjoint). Unset: this step uses every row.")
    data_format: str = _f("auto", "Record format: auto (detected per file), sft, chat or text.",
                          choices=["auto", "sft", "chat", "text"])
    max_seq_len: int = _f(512, "Maximum tokens per training sequence (prompt + response).")
    data_seed: Optional[int] = _f(None, "Seed of the --data_split permutation; defaults to --seed.")

    def check_data(self) -> None:
        if not self.data_path:
            raise ConfigError("--data_path is required")
        if self.max_seq_len < 2:
            raise ConfigError(f"--max_seq_len must be >= 2, got {self.max_seq_len}")
        if self.data_split is not None:
            from .data.split import parse_split

            try:
                parse_split(self.data_split)
            except ValueError as e:
                raise ConfigError(str(e))


@dataclass
class ScheduleArgs:
    """Optimizer and schedule settings every step shares."""
    weight_decay: float = _f(0.0, "AdamW weight decay (not applied to biases and norm weights).")
    adam_beta1: float = _f(0.9, "AdamW beta1.")
    adam_beta2: float = _f(0.95, "AdamW beta2.")
    gradient_clipping: float = _f(1.0, "Clip the global gradient norm to this value (0 disables).")
    num_train_epochs: int = _f(1, "Passes over the training data.")
    max_steps: int = _f(0, "Stop after this many optimizer steps (0: run all epochs).")
    lr_scheduler_type: str = _f("cosine", "Schedule: linear, cosine, cosine_with_restarts, polynomial, "
                                          "constant, constant_with_warmup.",
                                choices=["linear", "cosine", "cosine_with_restarts", "polynomial",
                                         "constant", "constant_with_warmup"])
    num_warmup_steps: int = _f(0, "Linear warmup steps.")
    seed: int = _f(1234, "Seed for initialisation, data order and sampling.")

    def check_schedule(self) -> None:
        if self.num_train_epochs < 1:
            raise ConfigError(f"--num_train_epochs must be >= 1, got {self.num_train_epochs}")
        if self.max_steps < 0 or self.num_warmup_steps < 0:
            raise ConfigError("--max_steps and --num_warmup_steps must be >= 0")


@dataclass
class OptimArgs(ScheduleArgs):
    per_device_train_batch_size: int = _f(8, "Micro-batch size per process.")
    per_device_eval_batch_size: int = _f(16, "Evaluation batch size per process.")
    gradient_accumulation_steps: int = _f(1, "Micro-batches per optimizer step.")
    learning_rate: float = _f(1e-4, "Peak learning rate.")

    def check_optim(self) -> None:
        self.check_schedule()
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ConfigError(f"--learning_rate must be > 0, got {self.learning_rate}")


@dataclass
class LauncherArgs:
    local_rank: int = _f(-1, "Set by the deepspeed launcher; leave it alone.")


@dataclass
class DeepSpeedArgs(LauncherArgs):
    zero_stage: int = _f(0, "ZeRO stage 0-3 for the trained model.", choices=[0, 1, 2, 3])
    offload: bool = _f(False, "Offload optimizer state (and ZeRO-3 parameters) to CPU memory.")

    def check_deepspeed(self) -> None:
        if self.offload and self.zero_stage == 0:
            raise ConfigError("--offload needs --zero_stage 1, 2 or 3")


@dataclass
class LoggingArgs:
    enable_tensorboard: bool = _f(False, "Write TensorBoard scalars.")
    tensorboard_path: Optional[str] = _f(None, "TensorBoard folder; defaults to <output_dir>/tensorboard.")
    logging_steps: int = _f(10, "Log training metrics every N optimizer steps.")
    eval_steps: int = _f(0, "Evaluate every N optimizer steps (0: at the end of each epoch only).")
    disable_tqdm: bool = _f(False, "Hide the progress bar.")


@dataclass
class CheckpointArgs:
    output_dir: Optional[str] = _f(None, "Where the final model, metrics.jsonl and checkpoints/ go.")
    save_steps: int = _f(0, "Write a resumable DeepSpeed checkpoint every N optimizer steps (0: never).")
    save_total_limit: int = _f(2, "Keep at most this many checkpoints (oldest deleted first).")
    resume: bool = _f(False, "Continue from the latest checkpoint in <output_dir>/checkpoints.")

    def check_checkpoint(self) -> None:
        if not self.output_dir:
            raise ConfigError("--output_dir is required")
        if self.save_total_limit < 1:
            raise ConfigError("--save_total_limit must be >= 1")


@dataclass
class TrainConfig(ModelArgs, DataArgs, OptimArgs, DeepSpeedArgs, LoggingArgs, CheckpointArgs):
    """Everything a supervised-style step (SFT, reward model, DPO) shares."""

    def __post_init__(self) -> None:
        self.check_model()
        self.check_data()
        self.check_optim()
        self.check_deepspeed()
        self.check_checkpoint()
        if self.data_seed is None:
            self.data_seed = self.seed


@dataclass
class SFTConfig(TrainConfig):
    """Step 1: supervised fine-tuning (instruction, chat) or continued pretraining (text)."""


def _read_config_file(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as e:  # yaml and json raise different types; both are user mistakes
        raise ConfigError(f"{path}: cannot parse config ({str(e).splitlines()[0]})")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: config must be a mapping of flag names to values")
    return data


def parse_config(cls, argv: list[str] | None = None):
    """Flags (and an optional leading .yaml/.json file) -> a `cls` instance.

    A user mistake prints one line and exits with code 2.
    """
    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(cls, description=(cls.__doc__ or "").strip())
    try:
        if argv and argv[0].endswith((".yaml", ".yml", ".json")):
            data = _read_config_file(argv.pop(0))
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(data) - known)
            if unknown:
                raise ConfigError(f"unknown config keys: {', '.join(unknown)}")
            parser.set_defaults(**data)
        (cfg,) = parser.parse_args_into_dataclasses(args=argv)
        return cfg
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)


@dataclass
class RewardConfig(TrainConfig):
    """Step 2: reward model (causal-LM backbone + scalar head) from preference pairs and/or scores."""

    rm_loss: str = _f("pairwise", "pairwise: -log sigmoid(r_chosen - r_rejected); score: MSE to annotated "
                                  "scores; mixed: pairwise + --score_loss_weight * MSE.",
                      choices=["pairwise", "score", "mixed"])
    pairwise_reduction: str = _f("end", "end: compare the scores at the last token (default); divergence: "
                                        "DeepSpeed-Chat's mean over the tokens after the answers diverge.",
                                 choices=["end", "divergence"])
    score_loss_weight: float = _f(1.0, "Weight of the MSE term in --rm_loss mixed.")
    gpt_annotated_score: bool = _f(False, "Train from the score columns (chosen_gpt_score/rejected_gpt_score or "
                                          "chosen_score/rejected_score); same as --rm_loss score.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.gpt_annotated_score:
            if self.rm_loss == "pairwise":
                self.rm_loss = "score"
        if self.score_loss_weight < 0:
            raise ConfigError("--score_loss_weight must be >= 0")
        if self.pairwise_reduction == "divergence" and self.rm_loss == "score":
            raise ConfigError("--pairwise_reduction divergence needs --rm_loss pairwise or mixed")


@dataclass
class DPOConfig(TrainConfig):
    """Step 2 (alternative): DPO and relatives against a frozen reference model."""

    loss_type: str = _f("sigmoid", "sigmoid (DPO; with --label_smoothing, cDPO), ipo, simpo (reference-free), "
                                   "orpo (reference-free).", choices=["sigmoid", "ipo", "simpo", "orpo"])
    beta: float = _f(0.1, "Inverse temperature of the implicit reward (DPO, IPO, SimPO); lambda for ORPO.")
    label_smoothing: float = _f(0.0, "cDPO: assumed probability that a preference label is flipped (0-0.5).")
    simpo_gamma: float = _f(0.5, "SimPO target reward margin gamma.")
    rpo_alpha: float = _f(0.0, "Add rpo_alpha x the length-averaged NLL of the chosen answer (RPO, Pang et "
                               "al. 2024): keeps DPO from lowering the chosen answers' likelihood.")
    reference_model_name_or_path: Optional[str] = _f(None, "Frozen reference; defaults to --model_name_or_path.")
    reference_zero_stage: int = _f(0, "ZeRO stage of the reference (3 shards its weights).", choices=[0, 1, 2, 3])
    offload_reference_model: bool = _f(False, "Keep the reference's weights in CPU memory (needs "
                                              "--reference_zero_stage 3).")
    precompute_ref_log_probs: bool = _f(False, "Score every pair with the reference once before training, "
                                               "then free it.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta <= 0:
            raise ConfigError(f"--beta must be > 0, got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"--label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise ConfigError("--label_smoothing applies to --loss_type sigmoid only")
        if self.rpo_alpha < 0:
            raise ConfigError("--rpo_alpha must be >= 0")
        if self.offload_reference_model and self.reference_zero_stage != 3:
            raise ConfigError("--offload_reference_model needs --reference_zero_stage 3")

    @property
    def uses_reference(self) -> bool:
        return self.loss_type in ("sigmoid", "ipo")


@dataclass
class RLHFConfig(ModelOptions, DataArgs, ScheduleArgs, LauncherArgs, LoggingArgs, CheckpointArgs):
    """Step 3: PPO with actor, critic, frozen reference and reward sources."""

    actor_model_name_or_path: Optional[str] = _f(None, "The SFT model: initialises actor and reference.")
    critic_model_name_or_path: Optional[str] = _f(None, "The reward model: initialises the critic.")
    reward_model_name_or_path: Optional[str] = _f(None, "Reward model; defaults to --critic_model_name_or_path.")
    reward_tokenizer_name_or_path: Optional[str] = _f(None, "Reward model tokenizer when it differs from the "
                                                           "actor's (answers are decoded and re-encoded).")
    use_reward_model: Optional[bool] = _f(None, "Use the reward model as a reward source (default: on, "
                                                "unless --use_comet_model).")
    reward_model_weight: float = _f(1.0, "Weight of the reward model in the summed reward.")
    reward_functions: list[str] = _f([], "Rule rewards as module:function, called with prompts=, answers=, "
                                         "references= and returning one float per answer.")
    reward_function_weights: list[float] = _f([], "Weights of --reward_functions (default 1 each).")
    use_comet_model: bool = _f(False, "Use unbabel-comet model(s) as reward sources (src = the file's `input`, "
                                      "else the prompt; mt = the answer; ref = the file's `output`).")
    comet_model_path: list[str] = _f([], "COMET models: local folders (holding checkpoints/model.ckpt), .ckpt "
                                         "files, or model names to download.")
    comet_model_batch_size: int = _f(8, "Segments per COMET forward.")
    weights_comet_model: list[float] = _f([], "Weight of each COMET model in the summed reward (default: 1/N each).")
    devices_comet_model: list[int] = _f([], "CUDA device per COMET model, or one for all (default: this process's "
                                            "GPU); ignored on a machine without GPUs.")
    comet_model_require_reference: bool = _f(False, "Give every COMET model the reference (`ref`), also models "
                                                    "that can score without one; reference-based models always "
                                                    "get it.")
    comet_reward_normalization: bool = _f(False, "Normalise each COMET model's scores with the running mean and "
                                                 "std of all its scores so far.")
    actor_zero_stage: int = _f(0, "ZeRO stage of actor and reference.", choices=[0, 1, 2, 3])
    critic_zero_stage: int = _f(0, "ZeRO stage of critic and reward model.", choices=[0, 1, 2, 3])
    offload: bool = _f(False, "Offload actor/critic optimizer state (and ZeRO-3 parameters) to CPU.")
    offload_reference_model: bool = _f(False, "Keep the reference's weights in CPU memory (ZeRO-3).")
    offload_reward_model: bool = _f(False, "Keep the reward model's weights in CPU memory (ZeRO-3).")
    enable_hybrid_engine: bool = _f(False, "Generate with DeepSpeed's hybrid engine (GPU only; switched off "
                                           "with a warning on CPU).")
    enable_ema: bool = _f(False, "Keep an exponential moving average of the actor and save it too.")
    ema_decay: float = _f(0.992, "EMA decay per actor step.")
    per_device_generation_batch_size: int = _f(16, "Prompts per generation batch per process.")
    per_device_training_batch_size: int = _f(16, "Most sequences per PPO minibatch per process (a round is "
                                                 "split into enough minibatches that none holds more).")
    generation_batches: int = _f(1, "Generation batches collected before each round of PPO updates.")
    ppo_epochs: int = _f(1, "Passes of PPO updates over each round of experience.")
    max_prompt_seq_len: int = _f(256, "Prompts longer than this are an error.")
    max_answer_seq_len: int = _f(256, "Maximum new tokens per answer.")
    actor_learning_rate: float = _f(1e-5, "Actor peak learning rate.")
    critic_learning_rate: float = _f(1e-5, "Critic peak learning rate.")
    temperature: float = _f(1.0, "Sampling temperature.")
    top_p: float = _f(1.0, "Nucleus sampling threshold (1: off).")
    top_k: int = _f(0, "Top-k sampling (0: off).")
    missing_eos_penalty: Optional[float] = _f(None, "Added to the reward of answers that end without EOS.")
    kl_ctl: float = _f(0.1, "Coefficient of the per-token KL penalty to the reference.")
    adaptive_kl: bool = _f(False, "Adapt kl_ctl towards --target_kl (Ziegler et al. 2019).")
    target_kl: float = _f(6.0, "Target KL per sequence for --adaptive_kl.")
    kl_horizon: int = _f(10000, "Horizon (in sequences) of the adaptive KL controller.")
    clip_reward_value: float = _f(5.0, "Clip the sequence reward to +-this value.")
    gamma: float = _f(1.0, "GAE discount.")
    lam: float = _f(0.95, "GAE lambda.")
    cliprange: float = _f(0.2, "PPO policy ratio clip epsilon.")
    cliprange_value: float = _f(0.2, "Value clip epsilon.")
    reward_normalization: str = _f("none", "Whiten sequence rewards: none, batch, or queue (running over the last "
                                           "--reward_queue_size rewards).", choices=["none", "batch", "queue"])
    reward_queue_size: int = _f(1024, "FIFO size for --reward_normalization queue.")
    whiten_advantages: bool = _f(True, "Whiten advantages per experience round.")
    add_sft_loss: bool = _f(False, "Add an LM loss on the RLHF file's reference answers (`output`).")
    add_pretrained_loss: bool = _f(False, "Add an LM loss on pretraining text (--unsupervised_dataset_name).")
    unsupervised_dataset_name: Optional[str] = _f(None, "Pretraining text: a local file/folder or dataset name.")
    eval_steps: int = _f(0, "Every N rounds and at the end, score greedy answers to the held-out prompts with "
                            "every reward source (eval/reward/<name>); 0: off.")
    eval_data_path: Optional[str] = _f(None, "Held-out prompts (SFT format); default: the test split of "
                                             "--data_path folders.")
    dynamic_sampling: bool = _f(False, "ESRL dynamic sampling: per-prompt sample counts and temperatures from "
                                       "the model's estimated capability, and the most confident samples dropped "
                                       "before scoring (README: ESRL).")
    esrl_min_samples: int = _f(1, "Fewest samples per prompt (for the most capable prompts).")
    esrl_max_samples: int = _f(4, "Most samples per prompt (for the least capable prompts).")
    esrl_temperature_min: float = _f(0.8, "Sampling temperature at capability 0.")
    esrl_temperature_max: float = _f(1.2, "Sampling temperature at capability 1.")
    esrl_eliminate_ratio: float = _f(0.3, "Fraction of each round's samples, the most confident, dropped before "
                                          "the reward, reference and critic passes.")
    esrl_confidence_weight: float = _f(0.5, "Weight w of token confidence (vs. recent reward) in the capability "
                                            "estimate.")
    esrl_capability_decay: float = _f(0.5, "Moving-average decay of the capability estimates across visits.")
    remove_critic_model: bool = _f(False, "No critic: REINFORCE with a baseline (the other samples of the same "
                                          "prompt, else a moving average of rewards) instead of GAE.")
    baseline_decay: float = _f(0.9, "Moving-average decay of the reward baseline used by samples without "
                                     "siblings (--remove_critic_model or --dynamic_sampling).")
    factor_rl_loss: Optional[float] = _f(None, "Weight of the PPO loss (0.7 when an extra loss is on, else 1).")
    factor_sft_loss: float = _f(0.15, "Weight of the SFT loss.")
    factor_pretrained_loss: float = _f(0.15, "Weight of the pretraining loss.")

    def __post_init__(self) -> None:
        if not self.actor_model_name_or_path:
            raise ConfigError("--actor_model_name_or_path is required")
        self.check_comet()
        if self.use_reward_model is None:
            self.use_reward_model = not self.use_comet_model
        if self.use_reward_model and not (self.reward_model_name_or_path or self.critic_model_name_or_path):
            raise ConfigError("--critic_model_name_or_path (or --reward_model_name_or_path) is required")
        if not self.critic_model_name_or_path:
            self.critic_model_name_or_path = self.reward_model_name_or_path
        if not self.critic_model_name_or_path and not self.remove_critic_model:
            raise ConfigError("--critic_model_name_or_path is required (it initialises the critic)")
        self.reward_model_name_or_path = self.reward_model_name_or_path or self.critic_model_name_or_path
        if not self.use_reward_model and not self.reward_functions and not self.use_comet_model:
            raise ConfigError("no reward source: keep the reward model, or give --reward_functions or "
                              "--use_comet_model")
        if self.reward_function_weights and len(self.reward_function_weights) != len(self.reward_functions):
            raise ConfigError(f"--reward_function_weights has {len(self.reward_function_weights)} values for "
                              f"{len(self.reward_functions)} --reward_functions")
        self.reward_function_weights = self.reward_function_weights or [1.0] * len(self.reward_functions)
        if self.add_pretrained_loss and not self.unsupervised_dataset_name:
            raise ConfigError("--add_pretrained_loss needs --unsupervised_dataset_name")
        if self.factor_rl_loss is None:
            self.factor_rl_loss = 0.7 if (self.add_sft_loss or self.add_pretrained_loss) else 1.0
        for name in ("per_device_generation_batch_size", "per_device_training_batch_size", "generation_batches",
                     "ppo_epochs", "max_answer_seq_len", "max_prompt_seq_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1")
        if self.offload_reference_model and self.actor_zero_stage != 3:
            raise ConfigError("--offload_reference_model needs --actor_zero_stage 3")
        if self.offload_reward_model and self.critic_zero_stage != 3:
            raise ConfigError("--offload_reward_model needs --critic_zero_stage 3")
        if self.offload and 0 in (self.actor_zero_stage, self.critic_zero_stage):
            raise ConfigError("--offload needs --actor_zero_stage and --critic_zero_stage >= 1")
        if not 0 < self.temperature:
            raise ConfigError("--temperature must be > 0")
        self.check_esrl()
        if self.eval_steps < 0:
            raise ConfigError("--eval_steps must be >= 0")
        self.check_model_options()
        self.check_schedule()
        self.check_checkpoint()
        if not self.data_path:
            raise ConfigError("--data_path is required")
        if self.data_seed is None:
            self.data_seed = self.seed

    def check_comet(self) -> None:
        n = len(self.comet_model_path)
        if self.use_comet_model and not n:
            raise ConfigError("--use_comet_model needs --comet_model_path")
        if n and not self.use_comet_model:
            raise ConfigError("--comet_model_path is given but --use_comet_model is not")
        if self.weights_comet_model and len(self.weights_comet_model) != n:
            raise ConfigError(f"--weights_comet_model has {len(self.weights_comet_model)} values for {n} "
                              f"--comet_model_path")
        if self.devices_comet_model and len(self.devices_comet_model) not in (1, n):
            raise ConfigError(f"--devices_comet_model has {len(self.devices_comet_model)} values for {n} "
                              f"--comet_model_path (give one for all, or one each)")
        if self.comet_model_batch_size < 1:
            raise ConfigError("--comet_model_batch_size must be >= 1")
        if n and not self.weights_comet_model:
            self.weights_comet_model = [1.0 / n] * n

    def check_esrl(self) -> None:
        if not 1 <= self.esrl_min_samples <= self.esrl_max_samples:
            raise ConfigError("--esrl_min_samples and --esrl_max_samples need 1 <= min <= max")
        if not 0 < self.esrl_temperature_min <= self.esrl_temperature_max:
            raise ConfigError("--esrl_temperature_min and --esrl_temperature_max need 0 < min <= max")
        if not 0 <= self.esrl_eliminate_ratio < 1:
            raise ConfigError("--esrl_eliminate_ratio must be in [0, 1)")
        if not 0 <= self.baseline_decay < 1:
            raise ConfigError("--baseline_decay must be in [0, 1)")
        if not 0 <= self.esrl_confidence_weight <= 1 or not 0 <= self.esrl_capability_decay < 1:
            raise ConfigError("--esrl_confidence_weight must be in [0, 1] and --esrl_capability_decay in [0, 1)")
