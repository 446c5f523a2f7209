"""Hugging Face alignment-handbook recipes as config files: the key table and its translation.

A recipe (recipes/<model>/{cpt,sft,dpo,orpo}/config_*.yaml) is recognised by its dataset keys
(`dataset_mixer` or `dataset_mixture`), which no config of ours has; every other config file
keeps the strict reading of `parse_config`. `translate` turns a recipe's keys into our flag
values through `TABLE` (handbook key -> converter) and lists the keys that do nothing here, to
be named once at start-up. A key in neither the table nor our flags is an error, as in any
config file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import ConfigError

MARKERS = ("dataset_mixer", "dataset_mixture")

# Hub uploads and experiment trackers have no counterpart here; named together in one note.
HUB_KEYS = ("push_to_hub", "run_name")
HUB_PREFIXES = ("hub_", "wandb_")

# transformers' AdamW variants: what DeepSpeed's AdamW here computes too, so they need no note
ADAMW = ("adamw_torch", "adamw_torch_fused", "adamw_hf", "adamw_apex_fused")


@dataclass
class Translation:
    """What a recipe becomes: our flag values and the (key, why) notes of keys without effect."""
    flags: dict[str, Any] = field(default_factory=dict)
    notes: list[tuple[str, str]] = field(default_factory=list)
    key: str = ""  # the recipe key being converted, which its notes name

    def note(self, why: str) -> None:
        self.notes.append((self.key, why))


Convert = Callable[[Any, Translation], None]


def same(flag: str) -> Convert:
    """The key's value as our flag `flag`."""
    def convert(value, out: Translation) -> None:
        out.flags[flag] = value
    convert.target = f"--{flag}"
    return convert


def fallback(flag: str) -> Convert:
    """As `same`, but a stronger key (bf16 over torch_dtype, save_strategy over save_steps) wins
    whatever the order of the keys in the file."""
    def convert(value, out: Translation) -> None:
        out.flags.setdefault(flag, value)
    convert.target = f"--{flag}"
    return convert


def ignored(why: str) -> Convert:
    """A key with no effect here, named once at start-up with `why`."""
    def convert(value, out: Translation) -> None:
        out.note(why)
    convert.target = f"ignored: {why}"
    return convert


def _described(target: str):
    """Sets a converter's `target`: what its key becomes, in words (the key table in docs/coming-from.md)."""
    def wrap(fn):
        fn.target = target
        return fn
    return wrap


@_described("--dtype (bfloat16 -> bf16, float16 -> fp16, float32 -> fp32; bf16/fp16 keys win)")
def torch_dtype(value, out: Translation) -> None:
    dtype = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(value)
    if dtype is not None:
        out.flags.setdefault("dtype", dtype)
    elif value not in (None, "auto"):
        raise ConfigError(f"torch_dtype: expected bfloat16, float16, float32, auto or null, got {value!r}")


def precision(dtype: str) -> Convert:
    @_described(f"--dtype {dtype} when true")
    def convert(value, out: Translation) -> None:
        if value:
            out.flags["dtype"] = dtype
    return convert


@_described("--data_path (the names) and --data_fractions (the fractions)")
def dataset_mixer(value, out: Translation) -> None:
    if not isinstance(value, dict) or not value:
        raise ConfigError("dataset_mixer: expected a mapping of dataset -> fraction of its rows")
    out.flags["data_path"] = [str(k) for k in value]
    out.flags["data_fractions"] = [_fraction(f"dataset_mixer {k}", v) for k, v in value.items()]


@_described("--train_splits (names containing \"train\") and --test_splits (names containing \"test\")")
def dataset_splits(value, out: Translation) -> None:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError("dataset_splits: expected a list of split names")
    train, test = _sort_splits("dataset_splits", names)
    out.flags["train_splits"] = train
    out.flags.setdefault("test_splits", test)


@_described("--data_path, --data_fractions (train entries' weight), --train_splits, --test_splits, --data_seed")
def dataset_mixture(value, out: Translation) -> None:
    """The newer form: {datasets: [{id, config, split, columns, weight}], test_split_size, seed}.
    Entries naming a split with "test" in it are held-out data, used whole."""
    entries = value.get("datasets") if isinstance(value, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError("dataset_mixture: expected a `datasets` list of {id, split, weight} entries")
    ids: list[str] = []
    weights: dict[str, float] = {}
    splits: dict[str, list[str]] = {}
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or "id" not in e:
            raise ConfigError(f"dataset_mixture: datasets entry {i} needs an `id`")
        name, split = str(e["id"]), str(e.get("split", "train"))
        _check_config(f"dataset_mixture {name}", e.get("config"))
        if name not in ids:
            ids.append(name)
        splits.setdefault(name, []).append(split)
        weight = _fraction(f"dataset_mixture {name} ({split})", e.get("weight", 1.0))
        if "test" in split:
            if weight != 1.0:
                out.note(f"weight of {name} ({split}): held-out splits are used whole")
        elif weights.setdefault(name, weight) != weight:
            raise ConfigError(f"dataset_mixture {name}: its training splits have different weights "
                              f"({weights[name]} and {weight}); one fraction per dataset here")
        if e.get("columns"):
            out.note(f"columns of {name}: the record format is detected from the data here")
    first = sorted(set(splits[ids[0]]))
    for name in ids[1:]:
        if sorted(set(splits[name])) != first:
            raise ConfigError(f"dataset_mixture: {name} reads splits {sorted(set(splits[name]))}, {ids[0]} "
                              f"reads {first}; every dataset reads the same split names here")
    train, test = _sort_splits("dataset_mixture", first)
    out.flags.update(data_path=ids, data_fractions=[weights.get(n, 1.0) for n in ids], train_splits=train)
    out.flags.setdefault("test_splits", test)
    if "seed" in value:
        out.flags["data_seed"] = value["seed"]
    if "test_split_size" in value:
        out.note("test_split_size: held-out rows come from the datasets' test splits here")


@_described("nothing for `default`; another configuration is an error")
def dataset_configs(value, out: Translation) -> None:
    for c in value if isinstance(value, list) else [value]:
        _check_config("dataset_configs", c)


@_described("--num_train_epochs (a whole number)")
def num_train_epochs(value, out: Translation) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 1:
        raise ConfigError(f"num_train_epochs: whole epochs only here, got {value!r}")
    out.flags["num_train_epochs"] = int(value)


@_described("--max_steps (-1 -> 0: all epochs)")
def max_steps(value, out: Translation) -> None:
    out.flags["max_steps"] = max(int(value), 0)


@_described("tensorboard -> --enable_tensorboard; other trackers ignored")
def report_to(value, out: Translation) -> None:
    trackers = [value] if isinstance(value, str) else list(value or [])
    if "tensorboard" in trackers or "all" in trackers:
        out.flags["enable_tensorboard"] = True
    others = [t for t in trackers if t not in ("tensorboard", "none")]
    if others:
        out.note(f"{', '.join(others)}: only TensorBoard is written here")


@_described("no -> --test_splits none read (no evaluation); epoch -> --eval_steps 0; steps -> --eval_steps")
def eval_strategy(value, out: Translation) -> None:
    if value == "no":
        out.flags["test_splits"] = []
    elif value == "epoch":
        out.flags["eval_steps"] = 0
    elif value != "steps":
        raise ConfigError(f"eval_strategy: expected no, steps or epoch, got {value!r}")


@_described("no -> --save_steps 0; steps -> --save_steps; epoch -> --save_steps 0 with a note")
def save_strategy(value, out: Translation) -> None:
    if value in ("no", "epoch"):
        out.flags["save_steps"] = 0
        if value == "epoch":
            out.note("no checkpoints per epoch here, only every save_steps (the final model is always saved)")
    elif value != "steps":
        raise ConfigError(f"save_strategy: expected no, steps or epoch, got {value!r}")


@_described("nothing for an AdamW variant; another optimizer is noted (AdamW is used)")
def optim(value, out: Translation) -> None:
    if value not in ADAMW:
        out.note(f"{value}: DeepSpeed's AdamW is the optimizer here")


@_described("--lora_dim 16 (the handbook's default lora_r) when true and lora_r is not given")
def use_peft(value, out: Translation) -> None:
    if value:
        out.flags.setdefault("lora_dim", 16)


@_described("nothing when false; noted when true")
def packing(value, out: Translation) -> None:
    if value:
        out.note("each example is its own row here (see --padding_free)")


TABLE: dict[str, Convert] = {
    "model_name_or_path": same("model_name_or_path"),
    "model_revision": ignored("the model's default revision is loaded"),
    "torch_dtype": torch_dtype,
    "bf16": precision("bf16"),
    "fp16": precision("fp16"),
    "trust_remote_code": same("trust_remote_code"),
    "attn_implementation": ignored("the model's default attention is used"),
    "use_flash_attention_2": ignored("the model's default attention is used"),
    "chat_template": same("chat_template"),
    "dataset_mixer": dataset_mixer,
    "dataset_mixture": dataset_mixture,
    "dataset_splits": dataset_splits,
    "dataset_configs": dataset_configs,
    "dataset_num_proc": ignored("tokenization runs in each process"),
    "preprocessing_num_workers": same("preprocessing_num_workers"),
    "dataset_text_field": ignored("the record format is detected per file"),
    "dataset_kwargs": ignored("special tokens follow the chat template and the data format"),
    "packing": packing,
    "max_seq_length": same("max_seq_len"),
    "max_length": same("max_seq_len"),
    "max_prompt_length": ignored("prompt and answer share --max_seq_len (the prompt is cut from the left)"),
    "beta": same("beta"),
    "loss_type": same("loss_type"),
    "learning_rate": same("learning_rate"),
    "num_train_epochs": num_train_epochs,
    "max_steps": max_steps,
    "per_device_train_batch_size": same("per_device_train_batch_size"),
    "per_device_eval_batch_size": same("per_device_eval_batch_size"),
    "gradient_accumulation_steps": same("gradient_accumulation_steps"),
    "gradient_checkpointing": same("gradient_checkpointing"),
    "gradient_checkpointing_kwargs": ignored("DeepSpeed's activation checkpointing settings apply"),
    "lr_scheduler_type": same("lr_scheduler_type"),
    "warmup_ratio": same("warmup_ratio"),
    "warmup_steps": same("num_warmup_steps"),
    "weight_decay": same("weight_decay"),
    "adam_beta1": same("adam_beta1"),
    "adam_beta2": same("adam_beta2"),
    "max_grad_norm": same("gradient_clipping"),
    "optim": optim,
    "use_peft": use_peft,
    "lora_r": same("lora_dim"),
    "lora_alpha": same("lora_alpha"),
    "logging_steps": same("logging_steps"),
    "logging_strategy": ignored("metrics are logged every logging_steps"),
    "logging_first_step": ignored("metrics are logged every logging_steps"),
    "log_level": ignored("start-up and progress lines are always printed on rank 0"),
    "report_to": report_to,
    "output_dir": same("output_dir"),
    "overwrite_output_dir": same("overwrite_output_dir"),
    "remove_unused_columns": ignored("only the columns of the record format are read"),
    "seed": same("seed"),
    "do_eval": ignored("evaluation follows eval_strategy and the held-out splits"),
    "do_train": ignored("the step always trains"),
    "eval_strategy": eval_strategy,
    "evaluation_strategy": eval_strategy,
    "eval_steps": same("eval_steps"),
    "save_strategy": save_strategy,
    "save_steps": fallback("save_steps"),
    "save_total_limit": same("save_total_limit"),
}


def is_recipe(data: dict) -> bool:
    """A handbook recipe names its data with dataset_mixer / dataset_mixture, which our configs never do."""
    return any(k in data for k in MARKERS)


def is_hub_key(key: str) -> bool:
    return key in HUB_KEYS or key.startswith(HUB_PREFIXES)


def translate(data: dict, our_flags: set[str]) -> Translation:
    """A recipe's keys -> our flag values and notes. Keys of our own flags (e.g. `data_split`) pass
    through unchanged; anything else is a one-line ConfigError naming the keys."""
    out = Translation()
    passthrough = {}
    hub, unknown = [], []
    for key, value in data.items():
        if key in TABLE:
            out.key = key
            TABLE[key](value, out)
        elif is_hub_key(key):
            hub.append(key)
        elif key in our_flags:
            passthrough[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))} (reading the file as an "
                          f"alignment-handbook recipe)")
    if hub:
        out.notes.insert(0, (", ".join(hub), "hub and tracker settings, ignored here"))
    out.flags.update(passthrough)
    out.notes = list(dict.fromkeys(out.notes))  # a mixture names the same dataset once per split
    return out


def _fraction(where: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigError(f"{where}: the fraction of rows to use must be in (0, 1], got {value!r}")
    return float(value)


def _sort_splits(where: str, names: list[str]) -> tuple[list[str], list[str]]:
    """As the handbook: a split whose name contains "train" is training data, "test" held-out."""
    train = [n for n in names if "train" in n]
    test = [n for n in names if "test" in n]
    other = [n for n in names if n not in train and n not in test]
    if other:
        raise ConfigError(f"{where}: split {other[0]!r} is neither a train nor a test split (its name must "
                          f"contain \"train\" or \"test\")")
    if not train:
        raise ConfigError(f"{where}: no training split (a name containing \"train\") among {names}")
    return train, test


def _check_config(where: str, config) -> None:
    if config not in (None, "default"):
        raise ConfigError(f"{where}: dataset configuration {config!r} is not supported here (only the default)")
