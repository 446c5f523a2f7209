"""Data for every step: read (file, folder, dataset name), validate, split, blend, tokenize."""
from __future__ import annotations

from dataclasses import dataclass

from .collate import LMBatch, collate_lm, epoch_batches, pad_right
from .errors import DataError
from .readers import RawDataset, Record, read_dataset
from .sft import IGNORE_INDEX, Example, encode_prompts, sft_prompt, tokenize_records
from .split import take_step_share


@dataclass
class StepData:
    """Records of every --data_path entry, blended, for one step."""
    train: list[Record]
    test: list[Record]


def load_step_records(paths: list[str], split: str | None, step: int, seed: int) -> StepData:
    """Read every dataset, keep this step's share of each train split, and blend them.

    Each dataset's test split is kept whole (it is evaluation data, never trained on).
    """
    train, test = [], []
    for path in paths:
        raw = read_dataset(path)
        train += take_step_share(raw.train, split, step, seed, path)
        test += raw.test
    return StepData(train, test)


def tokenize_step_data(data: StepData, tokenizer, max_len: int, fmt: str = "auto") -> tuple[list[Example], list[Example], int]:
    """Tokenize per source file (each file has one format); returns (train, test, truncated)."""
    def by_source(records):
        groups: dict[str, list[Record]] = {}
        for r in records:
            groups.setdefault(r.source, []).append(r)
        return groups.values()

    truncated = 0
    out = []
    for records in (data.train, data.test):
        examples = []
        for group in by_source(records):
            ex, t = tokenize_records(group, tokenizer, max_len, fmt)
            examples += ex
            truncated += t
        out.append(examples)
    return out[0], out[1], truncated


__all__ = [
    "DataError", "Example", "IGNORE_INDEX", "LMBatch", "RawDataset", "Record", "StepData",
    "collate_lm", "encode_prompts", "epoch_batches", "load_step_records", "pad_right",
    "read_dataset", "sft_prompt", "tokenize_records", "tokenize_step_data",
]
