"""Flags and config files -> a step's config dataclass, through transformers' HfArgumentParser,
after `peers` and `handbook` translate other tools' names."""
from __future__ import annotations

import json
import sys
from dataclasses import fields
from pathlib import Path

from ..errors import ConfigError
from . import handbook, peers


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


def make_parser(cls):
    """HfArgumentParser for `cls` whose mistakes raise ConfigError (one line, exit 2) instead of
    argparse's usage text, with prefix abbreviations off (a typo must not match a longer flag)."""
    from transformers import HfArgumentParser

    class Parser(HfArgumentParser):
        def error(self, message):
            raise ConfigError(message)

    return Parser(cls, description=(cls.__doc__ or "").strip(), epilog=peers.help_text(cls), allow_abbrev=False)


def _option_names(parser) -> dict[str, str]:
    """Every spelling of our flags (without dashes) -> its field name."""
    out = {}
    for action in parser._actions:
        for opt in action.option_strings:
            if opt.startswith("--"):
                out[opt[2:]] = action.dest
    return out


def _unknown_flag(token: str, names: dict[str, str]) -> ConfigError:
    import difflib

    flag = token.split("=", 1)[0]
    if not flag.startswith("-"):
        return ConfigError(f"unexpected argument {token!r} (flags take the form --name value)")
    close = difflib.get_close_matches(flag.lstrip("-"), list(names), n=1, cutoff=0.75)
    hint = f" (did you mean --{close[0]}?)" if close else ""
    return ConfigError(f"unknown flag {flag}{hint}")


def parse_config(cls, argv: list[str] | None = None):
    """Flags (and an optional leading .yaml/.json file) -> a `cls` instance. Other tools' names
    are translated first (`peers`, `handbook`), each translation named once at start-up.

    A user mistake (unknown or misspelt flag, bad value, refused feature) prints one line and
    exits with code 2, before anything is written.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    notes: list[tuple[str, str]] = []   # what the edge translated or found to do nothing here
    parser = make_parser(cls)
    names = _option_names(parser)
    try:
        peers.refuse_hybrid_alignment(t[2:].split("=", 1)[0] for t in argv if t.startswith("--"))
        # the deepspeed launcher puts --local_rank=N before the script's own arguments
        lead = 1 if argv and argv[0].startswith("--local_rank=") else 0
        if len(argv) > lead and argv[lead].endswith((".yaml", ".yml", ".json")):
            data = _read_config_file(argv.pop(lead))
            if handbook.is_recipe(data):
                recipe = handbook.translate(data, set(names))
                data, notes = recipe.flags, list(recipe.notes)
            peers.refuse_hybrid_alignment(data)
            data, translated = peers.translate_keys(cls, data)
            notes += translated
            unknown = sorted(k for k in data if k not in names)
            if unknown:
                raise ConfigError(f"unknown config keys: {', '.join(unknown)}")
            parser.set_defaults(**{names[k]: _as_list(cls, names[k], v) for k, v in data.items()})
        argv, translated = peers.translate_flags(cls, argv)
        notes += translated
        # unknown flags first: a misspelt flag explains a "required" or cross-field error after it
        _, rest = parser.parse_known_args(args=argv)
        if rest:
            raise _unknown_flag(rest[0], names)
        (cfg,) = parser.parse_args_into_dataclasses(args=argv)
        for key, why in notes:
            cfg.note(key, why)
        return cfg
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)


def accepted_flags(cls) -> set[str]:
    """Every flag name `parse_config(cls, ...)` reads (without dashes): ours and other tools'."""
    return set(_option_names(make_parser(cls))) | peers.accepted(cls)


def _as_list(cls, name: str, value):
    """A YAML scalar given for a list flag (`data_path: d`) is a one-element list, not its characters."""
    f = next(f for f in fields(cls) if f.name == name)
    if isinstance(value, str) and "list" in str(f.type):
        return [value]
    return value
