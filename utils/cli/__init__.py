"""The command-line edge: flags and config files -> a step's config. Other tools' dialects
(DeepSpeed-Chat and its fork in `peers.py`, the alignment handbook's recipes in `handbook.py`)
are translated here and nowhere below."""
from .parse import accepted_flags, make_parser, parse_config

__all__ = ["accepted_flags", "make_parser", "parse_config"]
