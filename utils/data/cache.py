"""`--data_output_path`: tokenized datasets cached on disk, as DeepSpeed-Chat does, and reused.

An entry's name is a hash of everything that decides its content: the records themselves (so a
changed file or a different --data_split share is a new entry), the tokenizer (vocabulary,
special tokens, padding side), the step and the tokenize function with its arguments (format,
length limits), and CACHE_VERSION, bumped whenever tokenization changes. Entries are JSON (no
pickle: a cache folder may be shared) and written atomically by rank 0; other ranks build their
own copy when the entry does not exist yet.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from functools import partial
from pathlib import Path
from typing import Any, Callable

from ..distributed import rank

CACHE_VERSION = 2   # 2: chat pairs with a list prompt (TRL explicit-prompt form) read the prompt turns


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of what decides a tokenizer's ids: its full serialisation when it has one (fast
    tokenizers), else its vocabulary, plus special tokens, added tokens and padding side."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update(backend.to_str().encode() if backend is not None else
             json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps([type(tokenizer).__name__, tokenizer.special_tokens_map, str(tokenizer.padding_side),
                         sorted(tokenizer.get_added_vocab().items())], sort_keys=True, default=str).encode())
    return h.hexdigest()


def describe_function(fn: Callable) -> Any:
    """A stable description of a (partial) tokenize function; the tokenizer by fingerprint."""
    if isinstance(fn, partial):
        kw = {k: (tokenizer_fingerprint(v) if hasattr(v, "get_vocab") else v) for k, v in fn.keywords.items()}
        args = [tokenizer_fingerprint(a) if hasattr(a, "get_vocab") else a for a in fn.args]
        return [describe_function(fn.func), args, kw]
    return f"{fn.__module__}.{fn.__qualname__}"


def entry_key(records: list, what: Any) -> str:
    """Hash of the records' content (source, location, fields) and of `what` built them."""
    h = hashlib.sha256(json.dumps([CACHE_VERSION, what], sort_keys=True, default=str).encode())
    for r in records:
        h.update(json.dumps([r.source, r.loc, r.data, r.plain_line], sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def _encode(obj):
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {"__type__": type(obj).__name__, **{f.name: _encode(getattr(obj, f.name))
                                                   for f in dataclasses.fields(obj)}}
    if isinstance(obj, (list, tuple)):
        return [_encode(x) for x in obj]
    return obj


def _decode(obj, types: dict[str, type]):
    if isinstance(obj, dict) and "__type__" in obj:
        cls = types[obj["__type__"]]
        return cls(**{k: _decode(v, types) for k, v in obj.items() if k != "__type__"})
    if isinstance(obj, list):
        return [_decode(x, types) for x in obj]
    return obj


# The example types an entry may hold, by class name (the name an entry stores): registered by
# `cacheable` where each is defined, so this module needs none of the format modules.
CACHEABLE: dict[str, type] = {}


def cacheable(cls: type) -> type:
    """Class decorator: a dataclass whose instances the cache may store and read back."""
    CACHEABLE[cls.__name__] = cls
    return cls


def cached(cache_dir: str | None, key: str, build: Callable[[], Any], types: dict[str, type]) -> tuple[Any, bool]:
    """(value, was_cached): the entry `key` from `cache_dir`, else `build()`, written there."""
    if not cache_dir:
        return build(), False
    path = Path(cache_dir) / f"{key}.json"
    if path.is_file():
        with open(path, encoding="utf-8") as f:
            return _decode(json.load(f), types), True
    value = build()
    if rank() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(_encode(value), f)
        os.replace(tmp, path)
    return value, False


def tokenize_cached(cache_dir: str | None, records: list, tokenize: Callable, what: Any = None):
    """`tokenize(records)` -> (examples, LengthStats), through the cache; (examples, stats, hit)."""
    key = entry_key(records, what if what is not None else describe_function(tokenize))
    (examples, stats), hit = cached(cache_dir, key, lambda: tokenize(records), CACHEABLE)
    return examples, stats, hit
