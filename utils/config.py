"""Config dataclasses: shared parts written once, one composed dataclass per step.

Parsed by the command-line edge (`utils.cli.parse_config`: flags, config files and the peers'
dialects). Cross-field checks live in `__post_init__` and name the flags at fault.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar, Optional

from .data import DataPart, SplitNames
from .errors import ConfigError
from .predict import PredictArgs


def _f(default, help: str, **kw):
    """A dataclass field with help text (the help is what `--help` prints). Other tools' names for a
    flag are read by the command-line edge (utils/cli/peers.py)."""
    meta = {"help": help, **kw}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def _opt_bool(help: str):
    """A bool flag whose absence means "not given" (None): `--flag` alone is true, like store_true."""
    return _f(None, help, nargs="?", const=True)


class FlagNotes:
    """Accepted flags that do nothing in this run, each with the reason; printed once at start-up."""

    def note(self, flag: str, why: str) -> None:
        self.__dict__.setdefault("notes", []).append(f"{flag}: {why}")


@dataclass
class ModelOptions(FlagNotes):
    """How models are loaded and trained (every step; step 3 applies them to actor and critic)."""
    trust_remote_code: bool = _f(False, "Allow model code from the hub (only when you trust it).")
    dtype: str = _f("fp32", "Training precision: fp32, bf16 or fp16 (mixed precision through DeepSpeed).",
                    choices=["fp32", "bf16", "fp16"])
    gradient_checkpointing: bool = _f(False, "Recompute activations in backward to save memory.")
    disable_dropout: Optional[bool] = _opt_bool("Every dropout probability in the model set to 0 (default: off in SFT; "
                                                "on in the reward model and DPO unless --dropout gives one, as in "
                                                "TRL; `false` keeps the model's own).")
    dropout: Optional[float] = _f(None, "Set every dropout probability in the model to this value (unset: the "
                                        "model's own).")
    lora_dim: int = _f(0, "LoRA rank; 0 disables LoRA.")
    lora_alpha: Optional[float] = _f(None, "LoRA scaling numerator (scale = alpha / rank); defaults to the rank.")
    lora_module_name: str = _f("layers.", "LoRA wraps every nn.Linear whose qualified name contains this string.")
    only_optimize_lora: bool = _f(False, "With LoRA, train only the adapters (the base model stays frozen).")
    lora_learning_rate: Optional[float] = _f(None, "Learning rate of the LoRA adapters (default: the model's "
                                                   "learning rate).")
    add_eot_token: bool = _f(False, "Add --eot_token to the tokenizer as a special token and make it the "
                                    "end of every answer (the tokenizer's EOS), resizing the embeddings.")
    eot_token: str = _f("<|endoftext|>", "The end-of-conversation token of --add_eot_token.")

    # reward model and DPO compare two forwards (chosen vs rejected, policy vs reference): dropout
    # adds noise to the difference they learn from, so these steps switch it off unless asked
    dropout_off_by_default: ClassVar[bool] = False

    def check_model_options(self) -> None:
        if self.disable_dropout is None:
            self.disable_dropout = self.dropout_off_by_default and self.dropout is None
        if self.lora_dim < 0:
            raise ConfigError(f"--lora_dim must be >= 0, got {self.lora_dim}")
        if self.only_optimize_lora and self.lora_dim == 0:
            raise ConfigError("--only_optimize_lora needs --lora_dim > 0")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.lora_learning_rate is not None and self.lora_learning_rate <= 0:
            raise ConfigError("--lora_learning_rate must be > 0")
        if self.add_eot_token and not self.eot_token.strip():
            raise ConfigError("--eot_token must not be empty")
        if not self.add_eot_token and self.eot_token != "<|endoftext|>":
            self.note("--eot_token", "used with --add_eot_token only")


@dataclass
class CommonArgs(FlagNotes):
    """Every step's: a user's DeepSpeed JSON, the tokenized-data cache, tokenization workers."""
    deepspeed_config: Optional[str] = _f(None, "A DeepSpeed JSON config merged over the one built from the flags "
                                               "(its keys win; \"auto\" keeps ours); printed once at start-up.")
    data_output_path: Optional[str] = _f(None, "Cache tokenized datasets in this folder; later runs reuse them "
                                               "until a file, the tokenizer, the split, the format or a length "
                                               "limit changes.")
    preprocessing_num_workers: Optional[int] = _f(None, "Accepted for DeepSpeed-Chat scripts; tokenization runs "
                                                        "in each process here.")

    def check_common(self) -> None:
        if self.preprocessing_num_workers is not None:
            self.note("--preprocessing_num_workers", "tokenization runs in each process here")
        if self.deepspeed_config is not None:
            self.adopt_user_batch(read_deepspeed_config(self.deepspeed_config))

    # the flag holding the micro-batch that a --deepspeed_config's train_micro_batch_size_per_gpu sets
    micro_batch_flag = "per_device_train_batch_size"

    def adopt_user_batch(self, user: dict) -> None:
        """The data loop, not DeepSpeed, forms the batches, so a user's batch keys become the flags."""
        for key, flag in (("train_micro_batch_size_per_gpu", self.micro_batch_flag),
                          ("gradient_accumulation_steps", "gradient_accumulation_steps")):
            value = user.get(key, "auto")
            if value == "auto":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"--deepspeed_config {self.deepspeed_config}: {key} must be a positive integer "
                                  f"or \"auto\", got {value!r}")
            if getattr(self, flag) != value:
                self.note(f"--{flag}", f"{value} from --deepspeed_config ({key}) replaces {getattr(self, flag)}")
                setattr(self, flag, value)


def read_deepspeed_config(path: str) -> dict:
    """A user's DeepSpeed JSON, or a one-line ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--deepspeed_config {path}: file not found")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"--deepspeed_config {path}: invalid JSON ({e})")
    if not isinstance(data, dict):
        raise ConfigError(f"--deepspeed_config {path}: expected a JSON object")
    return data


@dataclass
class PredictOptions(PredictArgs, FlagNotes):
    """The fork's predictions during training (utils/predict.py), checked with the other flags."""

    def check_predictions(self) -> None:
        self.check_predict()
        if self.predict_file and self.predict_steps <= 0:
            self.note("--predict_file", "no --predict_steps, so no predictions are written")


@dataclass
class ModelArgs(ModelOptions):
    model_name_or_path: Optional[str] = _f(None, "Local folder or hub name of a causal LM to start from.")
    tokenizer_name_or_path: Optional[str] = _f(None, "Tokenizer to use; defaults to --model_name_or_path.")
    torch_compile: bool = _f(False, "Compile the model with torch.compile (DeepSpeed's engine.compile) before "
                                    "training: fused element-wise kernels; the first steps pay the compilation. "
                                    "As TRL's --torch_compile.")
    chat_template: Optional[str] = _f(None, "A Jinja chat template set on the tokenizer (replacing its own) and saved "
                                            "with the model; chat records are rendered with it. As the alignment "
                                            "handbook's chat_template.")

    def check_model(self) -> None:
        if not self.model_name_or_path:
            raise ConfigError("--model_name_or_path is required")
        if self.chat_template is not None and not self.chat_template.strip():
            raise ConfigError("--chat_template must not be empty")
        self.check_model_options()


DSCHAT_DEFAULT_DATA = "Dahoas/rm-static"


@dataclass
class DataArgs(FlagNotes):
    data_path: list[str] = _f([], "One or more files, folders (train.* / test.*) or dataset names; several blend. "
                                  f"Unset: {DSCHAT_DEFAULT_DATA} with --data_split 2,4,4, as in DeepSpeed-Chat.")
    data_split: Optional[str] = _f(None, "Weights a,b,c splitting every dataset between steps 1, 2 and 3 "
                                         "(seeded, disjoint). Unset: this step uses every row.")
    data_format: str = _f("auto", "Record format: auto (detected per file), sft, chat or text.",
                          choices=["auto", "sft", "chat", "text"])
    max_seq_len: int = _f(512, "Maximum tokens per training sequence (prompt + response); longer rows are "
                               "truncated (prompt from the left, answer at the right) or dropped, with counts.")
    data_seed: Optional[int] = _f(None, "Seed of the --data_split permutation; defaults to --seed.")

    def check_data(self) -> None:
        if not self.data_path:
            self.data_path = [DSCHAT_DEFAULT_DATA]
            self.data_split = self.data_split or "2,4,4"
            self.note("--data_path", f"not given: {DSCHAT_DEFAULT_DATA} with --data_split {self.data_split}, "
                                     f"as in DeepSpeed-Chat")
        if self.max_seq_len < 2:
            raise ConfigError(f"--max_seq_len must be >= 2, got {self.max_seq_len}")
        if self.data_seed is None:   # every composed config has --seed (ScheduleArgs)
            self.data_seed = self.seed
        if self.data_split is not None:
            from .data.split import parse_split

            try:
                parse_split(self.data_split)
            except ValueError as e:
                raise ConfigError(str(e))


@dataclass
class DataMixArgs(FlagNotes):
    """Which rows of each --data_path entry a step reads (the alignment handbook's dataset_mixer and
    dataset_splits)."""
    data_fractions: list[float] = _f([], "Fraction in (0, 1] of each --data_path entry's training rows to use, one "
                                         "per entry in order; a seeded (--data_seed) choice of int(fraction x rows) "
                                         "rows, taken after --data_split. Unset: every row. Held-out rows are used "
                                         "whole.")
    train_splits: Optional[list[str]] = _f(None, "Split names read as training rows from every --data_path entry "
                                                 "(a folder's <name>.* files or a dataset's splits), blended. Unset: "
                                                 "train. A single file is all training rows whatever this says.")
    test_splits: Optional[list[str]] = _f(None, "Split names read as held-out rows from every --data_path entry. "
                                                "Unset: the first of test, eval, validation, valid, dev present.")

    def check_mix(self) -> None:
        if self.data_fractions:
            if len(self.data_fractions) != len(self.data_path):
                raise ConfigError(f"--data_fractions gives {len(self.data_fractions)} fractions for "
                                  f"{len(self.data_path)} --data_path entries; give one per entry")
            bad = [f for f in self.data_fractions if not 0 < f <= 1]
            if bad:
                raise ConfigError(f"--data_fractions must each be in (0, 1], got {bad[0]}")
        both = set(self.train_splits or ["train"]) & set(self.test_splits or [])
        if both:
            raise ConfigError(f"--train_splits and --test_splits both name {sorted(both)[0]!r}")
        if self.train_splits is not None and not self.train_splits:
            raise ConfigError("--train_splits must name at least one split")


@dataclass
class ScheduleArgs(FlagNotes):
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
    gradient_accumulation_steps: int = _f(1, "Micro-batches per optimizer step (step 3: PPO minibatches).")
    enable_test_mode: bool = _f(False, "DeepSpeed-Chat's test mode: stop after --test_stop_step steps.")
    test_stop_step: int = _f(0, "With --enable_test_mode, the step to stop at (same as --max_steps).")

    def check_schedule(self) -> None:
        if self.num_train_epochs < 1:
            raise ConfigError(f"--num_train_epochs must be >= 1, got {self.num_train_epochs}")
        if self.test_stop_step and not self.enable_test_mode:
            self.note("--test_stop_step", "used with --enable_test_mode only")
        if self.enable_test_mode:
            if self.test_stop_step < 1:
                raise ConfigError("--enable_test_mode needs --test_stop_step >= 1")
            self.max_steps = self.test_stop_step
        if self.max_steps < 0 or self.num_warmup_steps < 0:
            raise ConfigError("--max_steps and --num_warmup_steps must be >= 0")
        if self.gradient_accumulation_steps < 1:
            raise ConfigError(f"--gradient_accumulation_steps must be >= 1, got {self.gradient_accumulation_steps}")


@dataclass
class OptimArgs(ScheduleArgs):
    per_device_train_batch_size: int = _f(8, "Micro-batch size per process.")
    per_device_eval_batch_size: int = _f(16, "Evaluation batch size per process.")
    learning_rate: float = _f(1e-4, "Peak learning rate.")
    warmup_ratio: float = _f(0.0, "Linear warmup over this fraction of the run's optimizer steps (rounded up, as "
                                  "transformers does); instead of --num_warmup_steps.")

    def check_optim(self) -> None:
        self.check_schedule()
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.warmup_ratio and self.num_warmup_steps:
            raise ConfigError("--warmup_ratio and --num_warmup_steps both set the warmup; give one")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ConfigError(f"--learning_rate must be > 0, got {self.learning_rate}")


@dataclass
class LauncherArgs:
    local_rank: int = _f(-1, "Set by the deepspeed launcher; leave it alone.")


@dataclass
class DeepSpeedArgs(LauncherArgs, FlagNotes):
    zero_stage: int = _f(0, "ZeRO stage 0-3 for the trained model.", choices=[0, 1, 2, 3])
    offload: bool = _f(False, "Offload optimizer state (and ZeRO-3 parameters) to CPU memory (ZeRO 1-3).")

    def check_deepspeed(self) -> None:
        if self.offload and self.zero_stage == 0:
            self.note("--offload", "ZeRO stage 0 keeps everything on the device; use --zero_stage 1-3 to offload")
            self.offload = False


@dataclass
class LoggingArgs(FlagNotes):
    enable_tensorboard: bool = _f(False, "Write TensorBoard scalars.")
    tensorboard_path: Optional[str] = _f(None, "TensorBoard folder; defaults to <output_dir>/tensorboard.")
    logging_steps: int = _f(10, "Log training metrics every N optimizer steps.")
    print_loss: bool = _f(False, "Print the training loss of every optimizer step (rank 0).")
    eval_steps: int = _f(0, "Evaluate every N optimizer steps (0 or -1: at the end of each epoch only).")
    eval_iters: int = _f(0, "Evaluate on at most this many batches per process (0: the whole test set).")
    disable_tqdm: bool = _f(False, "Hide the progress bar.")

    def check_logging(self) -> None:
        self.eval_steps = max(self.eval_steps, 0)
        if self.logging_steps < 1 or self.eval_iters < 0:
            raise ConfigError("--logging_steps must be >= 1 and --eval_iters >= 0")
        if self.tensorboard_path and not self.enable_tensorboard:
            self.note("--tensorboard_path", "TensorBoard is off (--enable_tensorboard not given)")


@dataclass
class CheckpointArgs:
    output_dir: Optional[str] = _f(None, "Where the final model, metrics.jsonl and checkpoints/ go.")
    save_steps: int = _f(0, "Write a resumable DeepSpeed checkpoint every N optimizer steps (0 or -1: never).")
    save_total_limit: int = _f(2, "Keep at most this many checkpoints (oldest deleted first).")
    resume: bool = _f(False, "Continue from the newest checkpoint in <output_dir>/checkpoints that verifies.")
    overwrite_output_dir: bool = _f(False, "Replace another run in --output_dir (its model, metrics and "
                                           "checkpoints go); without it such a folder is refused.")

    def check_checkpoint(self) -> None:
        if not self.output_dir:
            raise ConfigError("--output_dir is required")
        self.save_steps = max(self.save_steps, 0)
        if self.save_total_limit < 1:
            raise ConfigError("--save_total_limit must be >= 1")


@dataclass
class TrainConfig(ModelArgs, DataArgs, DataMixArgs, OptimArgs, DeepSpeedArgs, LoggingArgs, CheckpointArgs, CommonArgs):
    """Everything a supervised-style step (SFT, reward model, DPO) shares."""

    def __post_init__(self) -> None:
        self.check_model()
        self.check_data()
        self.check_mix()
        self.check_optim()
        self.check_deepspeed()
        self.check_logging()
        self.check_checkpoint()
        self.check_common()
        if self.lora_learning_rate is not None and self.lora_dim == 0:
            self.note("--lora_learning_rate", "no LoRA adapters (--lora_dim 0)")

    def data_part(self) -> DataPart:
        return DataPart(tuple(self.data_path), self.data_split, self.data_seed, tuple(self.data_fractions),
                        SplitNames(*(None if s is None else tuple(s) for s in (self.train_splits, self.test_splits))),
                        cache_dir=self.data_output_path)


@dataclass
class SFTConfig(TrainConfig, PredictOptions):
    """Step 1: supervised fine-tuning (instruction, chat) or continued pretraining (text)."""
    sft_only_data_path: list[str] = _f([], "Datasets used whole by this step only (never split by --data_split).")
    padding_free: bool = _f(False, "Pack each micro-batch's examples into one row, position ids restarting per "
                                   "example (TRL's padding_free): no padding is computed, the loss is the padded "
                                   "one. Needs a model whose attention reads the restarts as boundaries (checked "
                                   "at start: llama, mistral, qwen2, gemma, phi3, gpt2, gpt_neox do).")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_predictions()

    def data_part(self) -> DataPart:
        return replace(super().data_part(), whole_paths=tuple(self.sft_only_data_path))


@dataclass
class RewardConfig(TrainConfig):
    """Step 2: reward model (causal-LM backbone + scalar head) from preference pairs and/or scores."""
    dropout_off_by_default: ClassVar[bool] = True

    rm_loss: str = _f("pairwise", "pairwise: -log sigmoid(r_chosen - r_rejected); score: MSE to annotated "
                                  "scores; mixed: pairwise + --score_loss_weight * MSE.",
                      choices=["pairwise", "score", "mixed"])
    pairwise_reduction: str = _f("end", "end: compare the scores at the last token (default); divergence: "
                                        "DeepSpeed-Chat's mean over the tokens after the answers diverge.",
                                 choices=["end", "divergence"])
    score_loss_weight: float = _f(1.0, "Weight of the MSE term in --rm_loss mixed.")
    center_rewards_coefficient: Optional[float] = _f(None, "TRL's: adds C * mean((r_chosen + r_rejected)^2) to "
                                                           "the pairwise loss, so a pair's scores centre on 0 "
                                                           "instead of drifting (0.01 in TRL's docs). Off by "
                                                           "default.")
    gpt_annotated_score: bool = _f(False, "Train from the score columns (chosen_gpt_score/rejected_gpt_score or "
                                          "chosen_score/rejected_score); same as --rm_loss score.")
    head_dropout: float = _f(0.0, "Dropout on the last hidden state before the scalar head, in training.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.gpt_annotated_score:
            if self.rm_loss == "pairwise":
                self.rm_loss = "score"
        if self.score_loss_weight < 0:
            raise ConfigError("--score_loss_weight must be >= 0")
        if self.pairwise_reduction == "divergence" and self.rm_loss == "score":
            raise ConfigError("--pairwise_reduction divergence needs --rm_loss pairwise or mixed")
        if self.center_rewards_coefficient is not None:
            if not (math.isfinite(self.center_rewards_coefficient) and self.center_rewards_coefficient >= 0):
                raise ConfigError(f"--center_rewards_coefficient must be >= 0, got {self.center_rewards_coefficient}")
            if self.rm_loss == "score":
                raise ConfigError("--center_rewards_coefficient needs --rm_loss pairwise or mixed (annotated scores "
                                  "already fix the scale)")
        if not 0 <= self.head_dropout < 1:
            raise ConfigError(f"--head_dropout must be in [0, 1), got {self.head_dropout}")


@dataclass
class DPOConfig(TrainConfig, PredictOptions):
    """Step 2 (alternative): DPO and relatives against a frozen reference model."""
    dropout_off_by_default: ClassVar[bool] = True

    loss_type: str = _f("sigmoid", "sigmoid (DPO; with --label_smoothing, cDPO), ipo, simpo (reference-free), "
                                   "orpo (reference-free), kto (unpaired prompt, completion, label rows, or pairs "
                                   "split in two), rrhf (reference-free ranking of prompt, responses, scores rows, "
                                   "or of pairs).", choices=["sigmoid", "ipo", "simpo", "orpo", "kto", "rrhf"])
    beta: float = _f(0.1, "Inverse temperature of the implicit reward (DPO, IPO, SimPO, KTO); lambda for ORPO; "
                          "unused by RRHF.")
    label_smoothing: float = _f(0.0, "cDPO: assumed probability that a preference label is flipped (0-0.5).")
    simpo_gamma: float = _f(0.5, "SimPO target reward margin gamma.")
    rpo_alpha: float = _f(0.0, "Add rpo_alpha x the length-averaged NLL of the chosen answer (RPO, Pang et "
                               "al. 2024): keeps DPO from lowering the chosen answers' likelihood.")
    desirable_weight: float = _f(1.0, "KTO: weight lambda_D of the desirable answers' losses. The KTO paper "
                                      "advises lambda_D * n_D / (lambda_U * n_U) in [1, 4/3] (a start-up note says "
                                      "when the data is outside).")
    undesirable_weight: float = _f(1.0, "KTO: weight lambda_U of the undesirable answers' losses.")
    rrhf_weight: float = _f(1.0, "RRHF: weight of the ranking loss beside the SFT loss on the best-scored answer "
                                 "(the paper adds them unweighted; its code's scripts use up to 100).")
    reference_model_name_or_path: Optional[str] = _f(None, "Frozen reference; defaults to --model_name_or_path.")
    reference_zero_stage: Optional[int] = _f(None, "ZeRO stage of the reference (3 shards its weights); defaults "
                                                   "to --zero_stage.", choices=[0, 1, 2, 3])
    offload_reference_model: bool = _f(False, "Keep the reference's weights in CPU memory (ZeRO-3 only).")
    precompute_ref_log_probs: Optional[bool] = _opt_bool(
        "Score every pair with the reference once before training (each rank a share), then free it. Default: on "
        "when the run trains on every pair at least once (then it takes no more reference forwards than a live "
        "reference and no reference memory after); false keeps the reference live.")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_predictions()
        if self.beta <= 0:
            raise ConfigError(f"--beta must be > 0, got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"--label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise ConfigError("--label_smoothing applies to --loss_type sigmoid only")
        if self.rpo_alpha < 0:
            raise ConfigError("--rpo_alpha must be >= 0")
        if self.rpo_alpha and self.loss_type in ("kto", "rrhf"):
            raise ConfigError(f"--rpo_alpha needs preference pairs; --loss_type {self.loss_type} has none "
                              f"(rrhf has its own SFT term)")
        if min(self.desirable_weight, self.undesirable_weight) <= 0 or self.rrhf_weight < 0:
            raise ConfigError("--desirable_weight and --undesirable_weight must be > 0, --rrhf_weight >= 0")
        if self.reference_zero_stage is None:
            self.reference_zero_stage = self.zero_stage
        if self.offload_reference_model and self.reference_zero_stage != 3:
            self.note("--offload_reference_model", f"the reference runs at ZeRO stage {self.reference_zero_stage}; "
                                                   f"weights are offloaded at stage 3 only")
            self.offload_reference_model = False
        if not self.uses_reference and self.offload_reference_model:
            self.note("--offload_reference_model", f"--loss_type {self.loss_type} has no reference model")
        if not self.uses_reference and self.precompute_ref_log_probs:
            self.note("--precompute_ref_log_probs", f"--loss_type {self.loss_type} has no reference model")

    @property
    def uses_reference(self) -> bool:
        return self.loss_type in ("sigmoid", "ipo", "kto")


@dataclass
class ModelPart:
    """One trained model's options in step 3 (actor or critic): the per-model flags, falling back
    to the shared ones. Read by the model loader and the optimizer like a step's config."""
    model_name_or_path: str
    trust_remote_code: bool
    gradient_checkpointing: bool
    disable_dropout: bool
    dropout: Optional[float]
    lora_dim: int
    lora_alpha: Optional[float]
    lora_module_name: str
    only_optimize_lora: bool
    lora_learning_rate: Optional[float]
    add_eot_token: bool
    eot_token: str
    weight_decay: float
    learning_rate: float
    dtype: str


@dataclass
class RLHFConfig(ModelOptions, DataArgs, ScheduleArgs, LauncherArgs, LoggingArgs, CheckpointArgs, CommonArgs,
                 PredictOptions):
    """Step 3: PPO with actor, critic, frozen reference and reward sources."""
    micro_batch_flag = "per_device_training_batch_size"

    actor_model_name_or_path: Optional[str] = _f(None, "The SFT model: initialises actor and reference.")
    critic_model_name_or_path: Optional[str] = _f(None, "The reward model: initialises the critic.")
    tokenizer_name_or_path: Optional[str] = _f(None, "The actor's tokenizer; defaults to "
                                                     "--actor_model_name_or_path.")
    reward_model_name_or_path: Optional[str] = _f(None, "Reward model; defaults to --critic_model_name_or_path.")
    reward_tokenizer_name_or_path: Optional[str] = _f(None, "Reward model tokenizer when it differs from the "
                                                           "actor's (answers are decoded and re-encoded).")
    use_reward_model: Optional[bool] = _opt_bool("Use the reward model as a reward source (default: on, "
                                                "unless --use_comet_model).")
    reward_model_weight: float = _f(1.0, "Weight of the reward model in the summed reward.")
    reward_functions: list[str] = _f([], "Rule rewards as module:function, called with prompts=, answers=, "
                                         "references= and returning one float per answer.")
    reward_function_weights: list[float] = _f([], "Weights of --reward_functions (default 1 each).")
    reward_bias: float = _f(0.0, "Added to every sequence reward before clipping and normalisation.")
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
    reward_classifier: list[str] = _f([], "Hugging Face sequence classifiers (local folders or hub names) as reward "
                                          "sources, each read through its own tokenizer (open-chatgpt's sentiment "
                                          "reward). With one, the reward model is off unless --use_reward_model.")
    reward_classifier_label: list[str] = _f([], "The label whose score is the reward, by name or index, one for all "
                                                "classifiers or one each (needed when a classifier has several).")
    reward_classifier_score: str = _f("logit", "logit: the label's logit; logprob: its log-softmax probability.",
                                      choices=["logit", "logprob"])
    reward_classifier_input: str = _f("prompt_answer", "What the classifier reads: prompt_answer (prompt + answer, as "
                                                       "TRL's and trlx's sentiment examples) or answer.",
                                      choices=["prompt_answer", "answer"])
    reward_classifier_weights: list[float] = _f([], "Weight of each classifier in the summed reward (default 1 "
                                                    "each).")
    reward_classifier_batch_size: int = _f(16, "Texts per classifier forward.")
    devices_reward_classifier: list[int] = _f([], "CUDA device per classifier, or one for all (default: this "
                                                  "process's GPU); ignored on a machine without GPUs.")
    actor_zero_stage: int = _f(0, "ZeRO stage of actor and reference.", choices=[0, 1, 2, 3])
    critic_zero_stage: int = _f(0, "ZeRO stage of critic and reward model.", choices=[0, 1, 2, 3])
    offload: bool = _f(False, "Offload actor/critic optimizer state (and ZeRO-3 parameters) to CPU (ZeRO 1-3).")
    offload_reference_model: bool = _f(False, "Keep the reference's weights in CPU memory (ZeRO-3 only).")
    offload_reward_model: bool = _f(False, "Keep the reward model's weights in CPU memory (ZeRO-3 only).")
    enable_hybrid_engine: bool = _f(False, "Generate with DeepSpeed's hybrid engine (GPU only). Switched off with "
                                           "a note on CPU and for models whose decoder layers DeepSpeed's "
                                           "inference kernels do not match (with transformers 4.57, every family "
                                           "they cover; see docs/gpus.md).")
    inference_tp_size: int = _f(1, "Hybrid engine: tensor-parallel degree of generation.")
    tp_gather_partition_size: int = _f(8, "Hybrid engine: layers gathered at a time for tensor-parallel "
                                          "generation.")
    unpin_actor_parameters: bool = _f(False, "Hybrid engine: do not pin the actor's parameters during generation "
                                             "(slower, less memory).")
    release_inference_cache: bool = _f(False, "Hybrid engine: free the inference cache after each generation.")
    ds3_gather_for_generation: bool = _f(True, "At --actor_zero_stage 3, gather the actor's weights once per "
                                               "generation batch instead of once per decoding step (TRL's flag): "
                                               "much faster, but each device holds the whole actor while it "
                                               "generates; false keeps them partitioned.")
    cache_implementation: Optional[str] = _f(None, "transformers' KV cache for generation (TRL's flag): 'static' "
                                                   "preallocates it, and on a GPU transformers then compiles the "
                                                   "decoding step; unset: the model's default (dynamic).",
                                             choices=["static", "dynamic", "offloaded", "offloaded_static"])
    enable_mixed_precision_lora: bool = _f(False, "ZeRO++ quantized frozen weights for LoRA training (needs "
                                                  "--actor_lora_dim > 0, --actor_zero_stage 3 and a GPU).")
    align_overflow: bool = _f(False, "fp16: when actor or critic overflows, skip both steps.")
    enable_ema: bool = _f(False, "Keep an exponential moving average of the actor and save it too.")
    ema_decay: float = _f(0.992, "EMA decay per actor step.")
    per_device_generation_batch_size: int = _f(16, "Prompts per generation batch per process.")
    per_device_training_batch_size: int = _f(16, "Most sequences per PPO minibatch per process (a round is "
                                                 "split into enough minibatches that none holds more).")
    generation_batches: int = _f(1, "Generation batches collected before each round of PPO updates.")
    ppo_epochs: int = _f(1, "Passes of PPO updates over each round of experience.")
    ppo_mini_epochs: int = _f(1, "Consecutive PPO updates on each minibatch within a pass (the fork's inner "
                                 "loop).")
    max_prompt_seq_len: int = _f(256, "Prompts longer than this are truncated from the left.")
    max_answer_seq_len: int = _f(256, "Maximum new tokens per answer.")
    actor_learning_rate: float = _f(1e-5, "Actor peak learning rate.")
    critic_learning_rate: float = _f(1e-5, "Critic peak learning rate.")
    actor_weight_decay: Optional[float] = _f(None, "Actor weight decay (default: --weight_decay).")
    critic_weight_decay: Optional[float] = _f(None, "Critic weight decay (default: --weight_decay).")
    actor_gradient_checkpointing: Optional[bool] = _opt_bool("Actor activation checkpointing (default: "
                                                            "--gradient_checkpointing).")
    critic_gradient_checkpointing: Optional[bool] = _opt_bool("Critic activation checkpointing (default: "
                                                             "--gradient_checkpointing).")
    actor_dropout: Optional[float] = _f(None, "Actor dropout probability (default: --dropout, else the model's).")
    critic_dropout: Optional[float] = _f(None, "Critic dropout probability (default: --dropout, else the "
                                               "model's).")
    disable_actor_dropout: Optional[bool] = _opt_bool("Actor dropout off (default: on unless --actor_dropout or "
                                                      "--dropout sets a probability; `false` keeps the model's).")
    disable_critic_dropout: Optional[bool] = _opt_bool("Critic dropout off (default: on unless --critic_dropout or "
                                                       "--dropout sets a probability; `false` keeps the model's).")
    actor_lora_dim: Optional[int] = _f(None, "Actor LoRA rank (default: --lora_dim).")
    critic_lora_dim: Optional[int] = _f(None, "Critic LoRA rank (default: --lora_dim).")
    actor_lora_module_name: Optional[str] = _f(None, "Actor LoRA module filter (default: --lora_module_name).")
    critic_lora_module_name: Optional[str] = _f(None, "Critic LoRA module filter (default: --lora_module_name).")
    actor_lora_learning_rate: Optional[float] = _f(None, "Actor LoRA learning rate (default: "
                                                         "--lora_learning_rate, else --actor_learning_rate).")
    critic_lora_learning_rate: Optional[float] = _f(None, "Critic LoRA learning rate (default: "
                                                          "--lora_learning_rate, else --critic_learning_rate).")
    temperature: float = _f(1.0, "Sampling temperature.")
    top_p: float = _f(1.0, "Nucleus sampling threshold (1: off).")
    top_k: int = _f(0, "Top-k sampling (0: off).")
    rollout_is_cap: Optional[float] = _f(None, "Truncated importance sampling: weigh each token's policy loss by "
                                               "min(pi_old / pi_rollout, this), pi_rollout its probability as "
                                               "sampled (verl's and OpenRLHF's correction of what remains of "
                                               "rollout/logprob_diff; off by default).")
    missing_eos_penalty: Optional[float] = _f(None, "Added to the reward of answers that end without EOS.")
    kl_ctl: float = _f(0.1, "Coefficient of the per-token KL penalty to the reference.")
    remove_kl_penalty: bool = _f(False, "No KL penalty and no reference model.")
    adaptive_kl: bool = _f(False, "Adapt kl_ctl towards --target_kl (Ziegler et al. 2019).")
    target_kl: float = _f(6.0, "Target KL per sequence for --adaptive_kl.")
    kl_horizon: int = _f(10000, "Horizon (in sequences) of the adaptive KL controller.")
    clip_reward_value: float = _f(5.0, "Clip the combined sequence reward to +-this value (after "
                                       "--missing_eos_penalty, before --reward_normalization and the group "
                                       "estimators' baselines; their advantages are never clipped).")
    gamma: float = _f(1.0, "GAE discount.")
    lam: float = _f(0.95, "GAE lambda.")
    cliprange: float = _f(0.2, "PPO policy ratio clip epsilon.")
    cliprange_low: Optional[float] = _f(None, "Lower clip epsilon of the ratio, 1 - this (default: --cliprange).")
    cliprange_high: Optional[float] = _f(None, "Upper clip epsilon of the ratio, 1 + this (default: --cliprange; "
                                               "DAPO's clip-higher uses 0.28 with 0.2 below).")
    advantage_estimator: Optional[str] = _f(None, "gae: PPO with the critic; grpo: reward minus its prompt group's "
                                                  "mean, divided by the group's std; rloo: reward minus the mean "
                                                  "of the prompt's other samples; reinforce_pp: REINFORCE++, "
                                                  "KL in the per-token reward, advantages whitened over the "
                                                  "round on all ranks. Critic-free estimators load no critic "
                                                  "(default: gae, rloo with --remove_critic_model; docs/step3.md: "
                                                  "'Advantage estimators').",
                                            choices=["gae", "grpo", "rloo", "reinforce_pp", "group_norm",
                                                     "dr_grpo", "reinforce_plus_plus", "reinforce"])
    num_samples_per_prompt: int = _f(1, "Answers sampled per prompt in each generation batch (the group of GRPO "
                                        "and RLOO); with --dynamic_sampling ESRL's budget: its two passes "
                                        "sample at most this many per prompt on average (there 1 means "
                                        "--esrl_max_samples when given, else 4).")
    norm_adv_by_std_in_grpo: Optional[bool] = _opt_bool("grpo: divide by the group's reward std (default true; "
                                                        "false: Dr. GRPO's advantage, which dr_grpo implies).")
    use_kl_loss: bool = _f(False, "KL to the reference as a loss term (--kl_loss_coef x --kl_estimator), as GRPO; "
                                  "the reward then carries no KL unless --use_kl_in_reward.")
    kl_loss_coef: float = _f(0.001, "Weight of the KL loss term (--use_kl_loss).")
    kl_estimator: Optional[str] = _f(None, "Per-token KL estimate: k1 = log pi - log ref, k2 = its square / 2, "
                                           "k3 = exp(-k1) + k1 - 1 (default: k3 for the loss term, k1 in the "
                                           "reward).", choices=["k1", "k2", "k3"])
    use_kl_in_reward: Optional[bool] = _opt_bool("Subtract --kl_ctl x KL from the per-token reward (default: on, "
                                                 "off with --use_kl_loss).")
    loss_agg_mode: Optional[str] = _f(None, "How per-token policy and KL losses are reduced over an optimizer "
                                            "step (all its micro-batches and ranks): token-mean, "
                                            "seq-mean-token-mean, seq-mean-token-sum, or seq-mean-token-sum-norm "
                                            "(token sums over --max_answer_seq_len, Dr. GRPO); seq-mean modes "
                                            "average over the rows that train (default: seq-mean-token-sum-norm "
                                            "for dr_grpo, which needs it, else token-mean).",
                                      choices=["token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
                                               "seq-mean-token-sum-norm"])
    drop_uniform_groups: bool = _f(False, "Leave out of the update the samples of prompts whose samples all got the "
                                          "same reward (DAPO's filter; needs --num_samples_per_prompt > 1 or "
                                          "--dynamic_sampling).")
    refill_uniform_groups: int = _f(0, "DAPO's dynamic sampling: replace the groups whose samples all got the same "
                                       "reward with new prompts' groups, at most this many more generation passes "
                                       "per batch (0: off; needs --num_samples_per_prompt > 1, not "
                                       "--dynamic_sampling). Groups still uniform after them are left out of the "
                                       "loss.")
    cliprange_value: float = _f(0.2, "Value clip epsilon.")
    reward_type: str = _f("lex", "lex: token-level credit, the critic's values and GAE (PPO); seq: every answer "
                                 "token is credited with the discounted sequence reward and no critic is "
                                 "trained (as in the fork).", choices=["seq", "lex"])
    reward_normalization: str = _f("none", "Whiten sequence rewards: none, batch, or queue (running over the last "
                                           "--reward_queue_size rewards).", choices=["none", "batch", "queue"])
    reward_queue_size: int = _f(1024, "FIFO size for --reward_normalization queue.")
    whiten_advantages: Optional[bool] = _opt_bool("Whiten advantages over the rows that train: per generation "
                                                  "batch (gae, rloo) or over the whole round on all ranks "
                                                  "(reinforce_pp); grpo's are normalised per group (default: on "
                                                  "for gae and reinforce_pp, off for rloo, as TRL's and verl's "
                                                  "RLOO).")
    shuffle_reward_score_randomly: bool = _f(False, "Ablation: permute the sequence rewards within each "
                                                    "generation batch (seeded).")
    critic_go_first_steps: int = _f(0, "Train only the critic (one pass) on the first N rounds of the first "
                                       "epoch.")
    add_sft_loss: bool = _f(False, "Add an LM loss on the RLHF file's reference answers (`output`).")
    update_reference_with_sampling: bool = _f(False, "With --add_sft_loss: a sampled answer that the reward "
                                                     "sources score above the reference answer replaces it as "
                                                     "the SFT target in its round.")
    add_pretrained_loss: bool = _f(False, "Add an LM loss on pretraining text (--unsupervised_dataset_name), or "
                                          "without one, on the prompt tokens of each minibatch (as the fork).")
    unsupervised_dataset_name: Optional[str] = _f(None, "Pretraining text: a local file/folder or dataset name.")
    unsupervised_dataset_config_name: Optional[str] = _f(None, "Configuration of --unsupervised_dataset_name "
                                                               "(datasets.load_dataset's second argument); with "
                                                               "both given the pretraining loss is on, as in "
                                                               "DeepSpeed-Chat.")
    eval_steps: int = _f(0, "Every N rounds and at the end, score greedy answers to the held-out prompts with "
                            "every reward source (eval/reward/<name>); 0: off.")
    eval_data_path: Optional[str] = _f(None, "Held-out prompts (any format --data_path takes); default: the test "
                                             "split of --data_path folders.")
    print_answers: bool = _f(False, "Print a prompt and its sampled answer every --print_answers_interval rounds.")
    print_answers_interval: int = _f(1, "Rounds between --print_answers prints.")
    dynamic_sampling: bool = _f(False, "ESRL dynamic sampling: a first pass of --esrl_min_samples per prompt, "
                                       "then the rest of the --num_samples_per_prompt budget to the prompts whose "
                                       "samples disagree or score low, none to those answered alike and well; "
                                       "temperatures from the model's estimated capability, and the most "
                                       "confident samples left out of the update (docs/step3.md: ESRL).")
    esrl_min_samples: Optional[int] = _f(None, "Samples of every prompt in ESRL's first pass, the fewest a prompt "
                                               "gets (default 2, the fewest that can disagree; 1 when "
                                               "--esrl_max_samples is 1).")
    esrl_max_samples: Optional[int] = _f(None, "Most samples of one prompt, both passes together (default: twice "
                                               "the budget --num_samples_per_prompt, so the hardest prompts may get "
                                               "what the skipped ones save).")
    esrl_skip_capability: float = _f(0.75, "A prompt whose first-pass samples all got the same reward gets no "
                                           "second pass when its capability estimate is above this (or when that "
                                           "reward is the best seen); 0.75 is halfway from an average prompt "
                                           "(0.5) to a sure, top-scoring one (1); 1: only at the best reward.")
    esrl_temperature_min: float = _f(0.8, "Sampling temperature at capability 0.")
    esrl_temperature_max: float = _f(1.2, "Sampling temperature at capability 1.")
    esrl_eliminate_ratio: float = _f(0.3, "Least fraction of each generation batch's samples left out of the "
                                          "actor, reference and critic passes and the update: all those out of "
                                          "the loss, then the most confident (their rewards still count in their "
                                          "prompt's baseline).")
    esrl_confidence_weight: float = _f(0.5, "Weight w of token confidence (vs. recent reward) in the capability "
                                            "estimate.")
    esrl_capability_decay: float = _f(0.5, "Moving-average decay of the capability estimates across visits.")
    remove_critic_model: bool = _f(False, "No critic: REINFORCE with a baseline (the other samples of the same "
                                          "prompt, else a moving average of rewards) instead of GAE.")
    baseline_decay: float = _f(0.9, "Moving-average decay of the reward baseline used by samples without "
                                     "siblings (--remove_critic_model or --dynamic_sampling).")
    factor_rl_loss: Optional[float] = _f(None, "Weight of the PPO loss (0.7 when an extra loss is on, else 1).")
    factor_sft_loss: float = _f(0.15, "Weight of the SFT loss.")
    factor_pretrained_loss: Optional[float] = _f(None, "Weight of the pretraining loss (default 0.15; 27.8 when "
                                                       "turned on DeepSpeed-Chat's way, by "
                                                       "--unsupervised_dataset_config_name).")

    def __post_init__(self) -> None:
        if not self.actor_model_name_or_path:
            raise ConfigError("--actor_model_name_or_path is required")
        self.check_comet()
        self.check_classifiers()
        if self.use_reward_model is None:
            self.use_reward_model = not (self.use_comet_model or self.reward_classifier)
        if self.use_reward_model and not (self.reward_model_name_or_path or self.critic_model_name_or_path):
            raise ConfigError("--critic_model_name_or_path (or --reward_model_name_or_path) is required")
        if self.reward_type == "seq" and not self.remove_critic_model:
            self.note("--reward_type seq", "sequence-level credit needs no value function: the critic is not "
                                           "loaded (as --remove_critic_model)")
            self.remove_critic_model = True
        self.check_estimator()
        if not self.critic_model_name_or_path:
            self.critic_model_name_or_path = self.reward_model_name_or_path
        if not self.critic_model_name_or_path and not self.remove_critic_model:
            raise ConfigError("--critic_model_name_or_path is required (it initialises the critic)")
        self.reward_model_name_or_path = self.reward_model_name_or_path or self.critic_model_name_or_path
        if not (self.use_reward_model or self.reward_functions or self.use_comet_model or self.reward_classifier):
            raise ConfigError("no reward source: keep the reward model, or give --reward_functions, "
                              "--use_comet_model or --reward_classifier")
        if self.reward_function_weights and len(self.reward_function_weights) != len(self.reward_functions):
            raise ConfigError(f"--reward_function_weights has {len(self.reward_function_weights)} values for "
                              f"{len(self.reward_functions)} --reward_functions")
        self.reward_function_weights = self.reward_function_weights or [1.0] * len(self.reward_functions)
        self.check_extra_losses()
        for name in ("per_device_generation_batch_size", "per_device_training_batch_size", "generation_batches",
                     "ppo_epochs", "ppo_mini_epochs", "max_answer_seq_len", "max_prompt_seq_len",
                     "print_answers_interval", "reward_queue_size", "kl_horizon"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1")
        if self.target_kl <= 0:
            raise ConfigError("--target_kl must be > 0")
        if self.critic_go_first_steps < 0:
            raise ConfigError("--critic_go_first_steps must be >= 0")
        if self.critic_go_first_steps and self.remove_critic_model:
            raise ConfigError("--critic_go_first_steps needs a critic (not --remove_critic_model or "
                              "--reward_type seq)")
        if self.adaptive_kl and (self.remove_kl_penalty or not self.use_kl_in_reward):
            raise ConfigError("--adaptive_kl steers the KL penalty in the reward (drop --remove_kl_penalty, "
                              "keep --use_kl_in_reward)")
        if not 0 < self.temperature:
            raise ConfigError("--temperature must be > 0")
        if self.rollout_is_cap is not None and not 1 <= self.rollout_is_cap < float("inf"):
            raise ConfigError("--rollout_is_cap must be a finite number >= 1")
        if self.dynamic_sampling and self.temperature != 1.0:
            self.note("--temperature", "ESRL sets each prompt's temperature (--esrl_temperature_min/max)")
        self.check_esrl()
        if self.enable_ema and self.actor_zero_stage == 3:
            raise ConfigError("--enable_ema needs --actor_zero_stage 0-2 (the EMA copy is a full model)")
        self.check_model_options()
        self.check_schedule()
        self.check_logging()
        self.check_checkpoint()
        self.check_common()
        self.check_predictions()
        self.check_data()
        if self.data_format in ("chat", "text"):
            raise ConfigError(f"--data_format {self.data_format}: step 3 reads prompts in the SFT format, as "
                              f"preference pairs or as TRL's prompt(-completion) rows; use auto or sft")
        self.check_machinery()
        for side in ("actor", "critic"):
            dim = getattr(self, f"{side}_lora_dim")
            if dim is not None and dim < 0:
                raise ConfigError(f"--{side}_lora_dim must be >= 0")

    def check_estimator(self) -> None:
        """The advantage estimator (OpenRLHF's and verl's names accepted), the critic it needs, the
        KL's place and the clip range."""
        aliases = {"group_norm": "grpo", "dr_grpo": "grpo", "reinforce_plus_plus": "reinforce_pp",
                   "reinforce": "reinforce_pp"}
        est = self.advantage_estimator
        if est == "dr_grpo":
            if self.norm_adv_by_std_in_grpo:
                raise ConfigError("--advantage_estimator dr_grpo does not divide by the group's std; drop "
                                  "--norm_adv_by_std_in_grpo, or use grpo")
            self.norm_adv_by_std_in_grpo = False
            if self.loss_agg_mode not in (None, "seq-mean-token-sum-norm"):
                raise ConfigError(f"--advantage_estimator dr_grpo aggregates with seq-mean-token-sum-norm (Dr. "
                                  f"GRPO), not --loss_agg_mode {self.loss_agg_mode}; use grpo with "
                                  f"--norm_adv_by_std_in_grpo false for that")
            self.loss_agg_mode = "seq-mean-token-sum-norm"
        if self.norm_adv_by_std_in_grpo is None:
            self.norm_adv_by_std_in_grpo = True
        if self.loss_agg_mode is None:
            self.loss_agg_mode = "token-mean"
        est = aliases.get(est, est) or ("rloo" if self.remove_critic_model else "gae")
        if est == "gae" and self.remove_critic_model:
            raise ConfigError("--advantage_estimator gae needs the critic (drop --remove_critic_model and "
                              "--reward_type seq, or choose grpo, rloo or reinforce_pp)")
        self.advantage_estimator = est
        self.remove_critic_model = est != "gae"
        if self.whiten_advantages is None:
            # RLOO's leave-one-out baseline already centres its advantages; TRL and verl do not whiten them
            self.whiten_advantages = est in ("gae", "reinforce_pp")
        if self.num_samples_per_prompt < 1:
            raise ConfigError("--num_samples_per_prompt must be >= 1")
        if est in ("grpo", "rloo") and self.num_samples_per_prompt < 2 and not self.dynamic_sampling:
            self.note("--advantage_estimator", f"{est} compares the samples of one prompt; with one sample per "
                                               f"prompt each is compared with a moving average of past rewards "
                                               f"(set --num_samples_per_prompt)")
        if self.drop_uniform_groups and self.num_samples_per_prompt < 2 and not self.dynamic_sampling:
            raise ConfigError("--drop_uniform_groups needs groups: --num_samples_per_prompt > 1 or "
                              "--dynamic_sampling")
        if self.refill_uniform_groups < 0:
            raise ConfigError("--refill_uniform_groups must be >= 0")
        if self.refill_uniform_groups and (self.num_samples_per_prompt < 2 or self.dynamic_sampling):
            raise ConfigError("--refill_uniform_groups needs groups of one sampler: --num_samples_per_prompt > 1, "
                              "without --dynamic_sampling")
        if self.use_kl_in_reward is None:
            self.use_kl_in_reward = not self.use_kl_loss
        if self.use_kl_loss and self.remove_kl_penalty:
            raise ConfigError("--use_kl_loss needs the reference model (drop --remove_kl_penalty)")
        if self.use_kl_loss and self.kl_loss_coef < 0:
            raise ConfigError("--kl_loss_coef must be >= 0")
        if not self.use_kl_loss and self.kl_loss_coef != 0.001:
            self.note("--kl_loss_coef", "used with --use_kl_loss only")
        if not self.use_kl_in_reward and not self.use_kl_loss and not self.remove_kl_penalty:
            self.note("--use_kl_in_reward false", "no KL anywhere: the reference model is not loaded "
                                                  "(as --remove_kl_penalty)")
            self.remove_kl_penalty = True
        if self.kl_estimator is None:
            self.kl_estimator = "k3" if self.use_kl_loss else "k1"
        if self.cliprange_low is None:
            self.cliprange_low = self.cliprange
        if self.cliprange_high is None:
            self.cliprange_high = self.cliprange
        if not (0 <= self.cliprange_low < 1 and self.cliprange_high >= 0):
            raise ConfigError("--cliprange_low must be in [0, 1) and --cliprange_high >= 0")

    def check_extra_losses(self) -> None:
        dschat_ptx = bool(self.unsupervised_dataset_name and self.unsupervised_dataset_config_name)
        if dschat_ptx and not self.add_pretrained_loss:
            self.add_pretrained_loss = True
            if self.factor_pretrained_loss is None:
                self.factor_pretrained_loss = 27.8
            if self.factor_rl_loss is None:
                self.factor_rl_loss = 1.0
        if self.factor_pretrained_loss is None:
            self.factor_pretrained_loss = 0.15
        if self.unsupervised_dataset_config_name and not self.unsupervised_dataset_name:
            self.note("--unsupervised_dataset_config_name", "no --unsupervised_dataset_name to configure")
        if self.unsupervised_dataset_name and not self.add_pretrained_loss:
            self.note("--unsupervised_dataset_name", "used with --add_pretrained_loss or "
                                                     "--unsupervised_dataset_config_name only")
        if self.update_reference_with_sampling and not self.add_sft_loss:
            raise ConfigError("--update_reference_with_sampling needs --add_sft_loss")
        if self.factor_rl_loss is None:
            self.factor_rl_loss = 0.7 if (self.add_sft_loss or self.add_pretrained_loss) else 1.0

    def check_machinery(self) -> None:
        """Inert flags: refuse the impossible, name what does nothing in this run (what a GPU would
        change: `machine_notes`)."""
        if self.offload_reference_model and self.actor_zero_stage != 3:
            self.note("--offload_reference_model", "weights are offloaded at --actor_zero_stage 3 only")
            self.offload_reference_model = False
        if self.offload_reward_model and self.critic_zero_stage != 3:
            self.note("--offload_reward_model", "weights are offloaded at --critic_zero_stage 3 only")
            self.offload_reward_model = False
        if self.offload and 0 in (self.actor_zero_stage, self.critic_zero_stage):
            self.note("--offload", "ZeRO stage 0 keeps everything on the device; use --actor_zero_stage and "
                                   "--critic_zero_stage 1-3 to offload")
            self.offload = False
        if not self.ds3_gather_for_generation and self.actor_zero_stage != 3:
            self.note("--ds3_gather_for_generation", "only ZeRO-3 partitions the actor's weights")
        if self.enable_mixed_precision_lora and (not (self.actor_lora_dim or self.lora_dim) or
                                                 self.actor_zero_stage != 3):
            raise ConfigError("--enable_mixed_precision_lora needs --actor_lora_dim > 0 and --actor_zero_stage 3")
        if self.align_overflow and self.dtype != "fp16":
            self.note("--align_overflow", f"only fp16 can overflow (--dtype is {self.dtype})")
        if self.print_answers_interval != 1 and not self.print_answers:
            self.note("--print_answers_interval", "used with --print_answers only")
        if self.lora_learning_rate is not None and not (self.lora_dim or self.actor_lora_dim or
                                                        self.critic_lora_dim):
            self.note("--lora_learning_rate", "no LoRA adapters")

    def data_part(self) -> DataPart:
        """Step 3's prompts: --data_path's step-3 share (no fractions or split names here)."""
        return DataPart(tuple(self.data_path), self.data_split, self.data_seed, cache_dir=self.data_output_path)

    def machine_notes(self, gpu: bool) -> list[str]:
        """The flags that do nothing on this machine (`gpu`: it has one), named when the run builds:
        the parsed config is the same on every machine."""
        notes = []
        hybrid = self.enable_hybrid_engine and gpu
        if self.enable_hybrid_engine and not gpu:
            notes.append("--enable_hybrid_engine: needs a GPU (DeepSpeed's inference kernels have no CPU "
                         "implementation); generating with the training engine")
        defaults = {"inference_tp_size": 1, "tp_gather_partition_size": 8, "unpin_actor_parameters": False,
                    "release_inference_cache": False}
        notes += [f"--{flag}: tunes the hybrid engine, which is off in this run" for flag, default in defaults.items()
                  if getattr(self, flag) != default and not hybrid]
        if self.cache_implementation and hybrid:
            notes.append("--cache_implementation: the hybrid engine keeps its own inference cache")
        if not gpu:
            for flag, why in (("enable_mixed_precision_lora", "ZeRO++ quantized weights need a GPU"),
                              ("devices_reward_classifier", "no GPU here: the classifiers run on the CPU"),
                              ("devices_comet_model", "no GPU here: the COMET models run on the CPU")):
                if getattr(self, flag):
                    notes.append(f"--{flag}: {why}")
        return notes

    def model_part(self, which: str) -> ModelPart:
        """The actor's or critic's resolved options."""
        def pick(name):
            own = getattr(self, f"{which}_{name}" if name != "disable_dropout" else f"disable_{which}_dropout")
            return own if own is not None else getattr(self, name)
        lora_lr = pick("lora_learning_rate")
        # dropout off unless a probability is asked for or it is kept on by name: with dropout, the old
        # log-probs (sampled in eval mode) and the update's (train mode) differ before any step, and
        # clipping fires on that noise; TRL and OpenRLHF switch it off for RL too
        off = getattr(self, f"disable_{which}_dropout")
        if off is None:
            off = self.disable_dropout or pick("dropout") is None
        return ModelPart(
            model_name_or_path=getattr(self, f"{which}_model_name_or_path"),
            trust_remote_code=self.trust_remote_code, gradient_checkpointing=pick("gradient_checkpointing"),
            disable_dropout=off, dropout=pick("dropout"), lora_dim=pick("lora_dim"),
            lora_alpha=self.lora_alpha, lora_module_name=pick("lora_module_name"),
            only_optimize_lora=self.only_optimize_lora, lora_learning_rate=lora_lr,
            add_eot_token=self.add_eot_token, eot_token=self.eot_token, weight_decay=pick("weight_decay"),
            learning_rate=getattr(self, f"{which}_learning_rate"), dtype=self.dtype)

    def check_classifiers(self) -> None:
        n = len(self.reward_classifier)
        for flag in ("reward_classifier_label", "devices_reward_classifier"):
            values = getattr(self, flag)
            if values and not n:
                raise ConfigError(f"--{flag} is given but --reward_classifier is not")
            if len(values) not in (0, 1, n):
                raise ConfigError(f"--{flag} has {len(values)} values for {n} --reward_classifier (give one for "
                                  f"all, or one each)")
        if self.reward_classifier_weights and len(self.reward_classifier_weights) != n:
            raise ConfigError(f"--reward_classifier_weights has {len(self.reward_classifier_weights)} values for {n} "
                              f"--reward_classifier")
        if self.reward_classifier_batch_size < 1:
            raise ConfigError("--reward_classifier_batch_size must be >= 1")
        self.reward_classifier_weights = self.reward_classifier_weights or [1.0] * n

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
        """ESRL's knobs; its sample counts are resolved here, so a round's most sequences (and the
        number of PPO steps) are known before training."""
        if self.dynamic_sampling and self.num_samples_per_prompt == 1:
            self.num_samples_per_prompt = self.esrl_max_samples or 4
        if self.esrl_max_samples is None:
            self.esrl_max_samples = 2 * self.num_samples_per_prompt
        if self.esrl_min_samples is None:
            self.esrl_min_samples = min(2, self.esrl_max_samples)
        if not 1 <= self.esrl_min_samples <= self.esrl_max_samples:
            raise ConfigError("--esrl_min_samples and --esrl_max_samples need 1 <= min <= max")
        if self.dynamic_sampling:
            self.check_esrl_budget()
        if not 0 <= self.esrl_skip_capability <= 1:
            raise ConfigError("--esrl_skip_capability must be in [0, 1]")
        if not 0 < self.esrl_temperature_min <= self.esrl_temperature_max:
            raise ConfigError("--esrl_temperature_min and --esrl_temperature_max need 0 < min <= max")
        if not 0 <= self.esrl_eliminate_ratio < 1:
            raise ConfigError("--esrl_eliminate_ratio must be in [0, 1)")
        if not 0 <= self.baseline_decay < 1:
            raise ConfigError("--baseline_decay must be in [0, 1)")
        if not 0 <= self.esrl_confidence_weight <= 1 or not 0 <= self.esrl_capability_decay < 1:
            raise ConfigError("--esrl_confidence_weight must be in [0, 1] and --esrl_capability_decay in [0, 1)")

    def check_esrl_budget(self) -> None:
        """--num_samples_per_prompt under ESRL: the budget per prompt of its two passes, between
        --esrl_min_samples (the first pass) and --esrl_max_samples (the most one prompt gets)."""
        k, low, high = self.num_samples_per_prompt, self.esrl_min_samples, self.esrl_max_samples
        if k > high:
            self.note("--num_samples_per_prompt", f"ESRL gives one prompt at most --esrl_max_samples ({high}) "
                                                  f"samples, so the budget is {high} per prompt")
            k = high
        if k < low:
            raise ConfigError(f"--esrl_min_samples {low} exceeds the budget --num_samples_per_prompt {k} (ESRL's "
                              f"first pass samples --esrl_min_samples of every prompt)")
        self.num_samples_per_prompt = k
