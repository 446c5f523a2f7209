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


@dataclass(frozen=True)
class DataPart:
    """What a step's data loading reads, resolved once from the flags (`data_part()` of a config)."""
    paths: tuple[str, ...]                # --data_path entries, blended
    split: str | None = None              # --data_split a,b,c (None: this step reads every row)
    seed: int = 1234                      # --data_seed: the split's and the fractions' permutations
    fractions: tuple[float, ...] = ()     # --data_fractions, one per path (empty: every row)
    splits: SplitNames = SplitNames()     # --train_splits / --test_splits
    whole_paths: tuple[str, ...] = ()     # --sft_only_data_path: read whole, never split
    cache_dir: str | None = None          # --data_output_path: the tokenized rows' cache


@dataclass
class StepData:
    """Records of every --data_path entry, blended, for one step."""
    train: list[Record]
    test: list[Record]


def load_step_records(part: DataPart, step: Phase) -> StepData:
    """Read every dataset (its `splits`), keep this step's share of each train split, then its
    `fractions` entry of that share (--data_fractions), and blend them; then the whole paths.

    Each dataset's test split is kept whole (it is evaluation data, never trained on).
    """
    train, test = [], []
    for i, path in enumerate(part.paths):
        raw = read_dataset(path, splits=part.splits)
        rows = take_step_share(raw.train, part.split, step, part.seed, path)
        train += take_fraction(rows, part.fractions[i], part.seed, path) if part.fractions else rows
        test += raw.test
    for path in part.whole_paths:
        raw = read_dataset(path, splits=part.splits)
        train, test = train + raw.train, test + raw.test
    return StepData(train, test)


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


def step_examples(part: DataPart, step: Phase, tokenize: Callable[[list[Record]], tuple[list, LengthStats]],
                  unit: str = "sequences") -> tuple[list, list]:
    """This step's share of every --data_path entry, tokenized and reported; (train, test).

    The totals line comes first, then one line per file with what the length rule did.
    """
    train, test, stats = tokenize_per_source(load_step_records(part, step), tokenize, part.cache_dir)
    print_rank0(f"[data] {len(train)} training and {len(test)} held-out {unit}")
    for source, s in stats.items():
        print_rank0(s.line(source))
    return train, test


__all__ = [
    "DataError", "DataPart", "Example", "IGNORE_INDEX", "LMBatch", "LengthStats", "Phase", "RawDataset", "Record",
    "SplitNames", "StepData", "collate_lm", "collate_packed", "encode_prompts", "epoch_batches", "load_step_records",
    "pad_right", "read_dataset", "sft_prompt", "step_examples", "tokenize_per_source", "tokenize_records",
]
