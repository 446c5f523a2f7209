"""The peers' dialects, translated before our parser sees a flag: DeepSpeed-Chat's and
DeepSpeed-Chat-Extension's (the fork's) scripts, and TRL's, OpenRLHF's and verl's names for
our flags. Every translation is named once at start-up; nothing below `utils.cli` knows these
names.

- `spellings`: their flag -> ours, with the same meaning.
- `inert`: flags their scripts pass that do nothing here, each with the reason.
- `--whiten_rewards` (the fork's): true -> --reward_normalization queue, false -> none.
- `HYBRID_ALIGNMENT_FLAGS`: the fork's iterative SFT/RLHF with EWC, refused by name.
"""
from __future__ import annotations

import argparse

from transformers.hf_argparser import string_to_bool

from ..config import DPOConfig, RewardConfig, RLHFConfig, TrainConfig
from ..errors import ConfigError

HYBRID_ALIGNMENT_FLAGS = ("iterative_alignment", "previous_rlhf_model", "previous_round_before_sft_model",
                          "previous_sft_model", "previous_round_after_sft_model",
                          "previous_round_after_rlhf_model", "lamda_factor", "ewc_max_weight", "ewc_mse_factor",
                          "apply_original_ewc")


def spellings(cls) -> dict[str, str]:
    """Their flag name -> ours, for step config `cls`."""
    out = {"deepscale_config": "deepspeed_config", "end_of_conversation_token": "eot_token"}
    if issubclass(cls, TrainConfig):
        out["eval_interval"] = "eval_steps"
    if issubclass(cls, DPOConfig):
        out.update(desirable_loss_weight="desirable_weight", undesirable_loss_weight="undesirable_weight")
    if issubclass(cls, RLHFConfig):
        out.update(offload_critic_model="offload_reward_model",
                   per_device_train_batch_size="per_device_generation_batch_size",
                   per_device_mini_train_batch_size="per_device_training_batch_size",
                   generation_batch_numbers="generation_batches", actor_disable_dropout="disable_actor_dropout",
                   critic_disable_dropout="disable_critic_dropout", clip_ratio_low="cliprange_low",
                   clip_ratio_high="cliprange_high", n_samples_per_prompt="num_samples_per_prompt",
                   num_generations="num_samples_per_prompt", whiten_critic_values="whiten_advantages",
                   unsup_coef="factor_pretrained_loss")
    return out


def inert(cls) -> dict[str, tuple[type, str, str]]:
    """Flags of theirs that do nothing here: name -> (value type, when it is named: "on" when true,
    `--flag` alone being true, or "given" whenever it is given, why)."""
    out = {"deepspeed": (bool, "on", "DeepSpeed is always the engine here"),
           "deepscale": (bool, "on", "DeepSpeed is always the engine here"),
           "num_padding_at_beginning": (int, "given", "not needed: scores are read at each answer's EOS, found "
                                                      "by length"),
           "compute_fp32_loss": (bool, "on", "losses are always computed in fp32 here")}
    if issubclass(cls, RewardConfig):
        out.update({k: (t, "given", "the fork's step 2 does not use it either")
                    for k, t in (("reward_type", str), ("add_error_sample", bool))})
    if issubclass(cls, RLHFConfig):
        out.update({k: (bool, "given", "has no effect in step 3 (nor in the fork's)")
                    for k in ("batch_reward_weight", "gpt_annotated_score")})
        out["save_critic_model"] = (bool, "on", "the critic is always saved here (critic/)")
    return out


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ConfigError(message)


def own_flags(cls) -> dict[str, type]:
    """The flags of theirs that are not one of ours under another name (the inert ones and the
    fork's --whiten_rewards), with their value types."""
    flags = {name: kind for name, (kind, _, _) in inert(cls).items()}
    if issubclass(cls, RLHFConfig):
        flags["whiten_rewards"] = bool
    return flags


def _dialect_parser(cls) -> argparse.ArgumentParser:
    """`own_flags`, parsed as our parser would parse them."""
    p = _Parser(add_help=False, allow_abbrev=False)
    for name, kind in own_flags(cls).items():
        opts = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        if kind is bool:
            p.add_argument(*opts, dest=name, nargs="?", const=True, type=string_to_bool, default=None)
        else:
            p.add_argument(*opts, dest=name, type=kind, default=None)
    return p


def _named(cls, given: dict) -> tuple[list[str], list[tuple[str, str]]]:
    """Flags for our parser and the notes for the dialect's `given` values (name -> value, None when
    absent)."""
    flags, notes = [], []
    for name, (_, when, why) in inert(cls).items():
        value = given.get(name)
        if value is not None and (when == "given" or value is True):
            notes.append((f"--{name}", why))
    whiten = given.get("whiten_rewards")
    if whiten is not None:
        mode = "queue" if whiten else "none"
        flags += ["--reward_normalization", mode]
        notes.append(("--whiten_rewards", f"the fork's name: read as --reward_normalization {mode}"))
    return flags, notes


def translate_flags(cls, argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Command-line flags in any dialect -> ours, and a note for each translation."""
    known, rest = _dialect_parser(cls).parse_known_args(argv)
    spell, out, notes = spellings(cls), [], []
    for tok in rest:
        name, eq, value = tok[2:].partition("=") if tok.startswith("--") else ("", "", "")
        ours = spell.get(name.replace("-", "_"))
        if ours:
            notes.append((f"--{name}", f"read as --{ours}"))
            tok = f"--{ours}{eq}{value}"
        out.append(tok)
    # the fork's --whiten_rewards goes last: it decides the normalisation whatever else is given
    extra, more = _named(cls, vars(known))
    return out + extra, notes + more


def translate_keys(cls, data: dict) -> tuple[dict, list[tuple[str, str]]]:
    """A config file's keys in any dialect -> ours, and a note for each translation."""
    spell, kinds, out, notes, given = spellings(cls), own_flags(cls), {}, [], {}
    for key, value in data.items():
        if key in kinds:
            given[key] = string_to_bool(value) if kinds[key] is bool and isinstance(value, str) else value
        elif key in spell:
            notes.append((key, f"read as {spell[key]}"))
            out[spell[key]] = value
        else:
            out[key] = value
    flags, more = _named(cls, given)
    if flags:
        out[flags[0][2:]] = flags[1]
    return out, notes + more


def refuse_hybrid_alignment(names) -> None:
    for name in names:
        key = name.replace("-", "_")
        if key in HYBRID_ALIGNMENT_FLAGS:
            what = "is" if key == "iterative_alignment" else "belongs to"
            raise ConfigError(f"--{name} {what} the fork's hybrid alignment training (iterative SFT/RLHF with "
                              f"EWC), which is not supported here")


def accepted(cls) -> set[str]:
    """Every name of theirs the edge reads for `cls` (without dashes)."""
    return set(spellings(cls)) | set(own_flags(cls))


def help_text(cls) -> str:
    """What `--help` adds after our flags."""
    same = ", ".join(f"--{a} (--{b})" for a, b in sorted(spellings(cls).items()))
    dropped = ", ".join(f"--{a}" for a in sorted(inert(cls)))
    text = f"Other tools' names accepted for these flags: {same}. Accepted, with no effect here: {dropped}."
    if issubclass(cls, RLHFConfig):
        text += " --whiten_rewards true/false: --reward_normalization queue/none."
    return text
