"""Data for every step: read (file, folder, dataset name), validate, split, blend, tokenize."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..distributed import print_rank0
from ..errors import DataError
from .cache import tokenize_cached
from .collate import LMBatch, collate_lm, collate_packed, epoch_batches, pad_right
from .encoding import IGNORE_INDEX, Example, LengthStats, by_source, encode_prompts
from .readers import RawDataset, Record, SplitNames, read_dataset
from .sft import sft_prompt, tokenize_records
from .split import Phase, take_fraction, take_step_share


@dataclass
class StepData:
    """Records of every --data_path entry, blended, for one step."""
    train: list[Record]
    test: list[Record]


def load_step_records(paths: list[str], split: str | None, step: Phase, seed: int,
                      fractions: list[float] | None = None, splits: SplitNames = SplitNames()) -> StepData:
    """Read every dataset (its `splits`), keep this step's share of each train split, then its
    `fractions` entry of that share (--data_fractions), and blend them.

    Each dataset's test split is kept whole (it is evaluation data, never trained on).
    """
    train, test = [], []
    for i, path in enumerate(paths):
        raw = read_dataset(path, splits=splits)
        rows = take_step_share(raw.train, split, step, seed, path)
        train += take_fraction(rows, fractions[i], seed, path) if fractions else rows
        test += raw.test
    return StepData(train, test)


def split_names(cfg) -> SplitNames:
    """--train_splits / --test_splits as the readers take them (unset on a config without them)."""
    train, test = getattr(cfg, "train_splits", None), getattr(cfg, "test_splits", None)
    return SplitNames(None if train is None else tuple(train), None if test is None else tuple(test))


def tokenize_per_source(data: StepData, tokenize: Callable[[list[Record]], tuple[list, LengthStats]],
                        cache_dir: str | None = None) -> tuple[list, list, dict[str, LengthStats]]:
    """Apply `tokenize` (one file's records -> (examples, LengthStats)) to each source file
    separately, since a file holds one format, through the --data_output_path cache when given;
    returns (train, test, source -> stats)."""
    stats: dict[str, LengthStats] = {}
    out = []
    for records in (data.train, data.test):
        examples = []
        for source, group in by_source(records).items():
            # a held-out part cut from a training split (some named datasets) shares its source name
            name = f"{source} (held-out part)" if source in stats else source
            ex, stats[name], hit = tokenize_cached(cache_dir, group, tokenize)
            if hit:
                print_rank0(f"[data] {name}: tokenized rows reused from {cache_dir}")
            examples += ex
        out.append(examples)
    return out[0], out[1], stats


def step_examples(cfg, step: Phase, tokenize: Callable[[list[Record]], tuple[list, LengthStats]],
                  unit: str = "sequences") -> tuple[list, list]:
    """This step's share of every --data_path entry, tokenized and reported; (train, test).

    The totals line comes first, then one line per file with what the length rule did.
    """
    splits = split_names(cfg)
    data = load_step_records(cfg.data_path, cfg.data_split, step=step, seed=cfg.data_seed,
                             fractions=getattr(cfg, "data_fractions", None), splits=splits)
    only = load_step_records(getattr(cfg, "sft_only_data_path", []), None, step=step, seed=cfg.data_seed,
                             splits=splits)
    data = StepData(data.train + only.train, data.test + only.test)
    train, test, stats = tokenize_per_source(data, tokenize, getattr(cfg, "data_output_path", None))
    print_rank0(f"[data] {len(train)} training and {len(test)} held-out {unit}")
    for source, s in stats.items():
        print_rank0(s.line(source))
    return train, test


__all__ = [
    "DataError", "Example", "IGNORE_INDEX", "LMBatch", "LengthStats", "Phase", "RawDataset", "Record", "SplitNames",
    "StepData", "collate_lm", "collate_packed", "encode_prompts", "epoch_batches", "load_step_records", "pad_right",
    "read_dataset", "sft_prompt", "step_examples", "tokenize_per_source", "tokenize_records",
]
