"""Read raw records from local files, folders or dataset names, with locations for errors.

Every record keeps where it came from (`where`: "file:line" or "file row N") so a
validation error can name it in one line.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DataError

TEXT_EXTS = (".txt", ".jsonl", ".json")
TABLE_EXTS = (".parquet",)
SPLIT_NAMES = {"train": ("train",), "test": ("test", "eval", "validation", "valid", "dev")}


@dataclass
class Record:
    source: str  # the file (or dataset split) it came from; one format per source
    loc: str     # ":line", " row N" or " item N"
    data: dict[str, Any] = field(default_factory=dict)
    plain_line: bool = False  # a line of a plain-text file (joined back into one document)

    @property
    def where(self) -> str:
        """What an error message names: "path:line" or "path row N"."""
        return f"{self.source}{self.loc}"


@dataclass
class RawDataset:
    """One `--data_path` entry: its train and (possibly empty) test records."""
    name: str
    train: list[Record]
    test: list[Record]


def _decode_lines(path: Path) -> list[tuple[int, str]]:
    raw = path.read_bytes()
    out = []
    for i, line in enumerate(raw.split(b"\n"), start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}:{i}: not valid UTF-8 (byte 0x{line[e.start]:02x} at column {e.start + 1})")
        text = text.rstrip("\r")
        if i == 1:
            text = text.lstrip("\ufeff")
        out.append((i, text))
    return out


def read_text_file(path: Path) -> list[Record]:
    """JSON-lines (`.jsonl`, `.json`, or a `.txt` whose first line is a JSON object) become one
    record per line; any other `.txt` is plain text: one `{"text": line}` record per line."""
    lines = [(i, t) for i, t in _decode_lines(path) if t.strip()]
    if not lines:
        raise DataError(f"{path}: file is empty (no records)")
    first = lines[0][1].lstrip()
    is_json = path.suffix in (".jsonl", ".json") or first.startswith("{")
    if path.suffix == ".json" and first.startswith("["):
        return _read_json_array(path)
    if not is_json:
        return [Record(str(path), f":{i}", {"text": t}, plain_line=True) for i, t in lines]
    records = []
    for i, t in lines:
        try:
            obj = json.loads(t)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{i}: invalid JSON ({e.msg} at column {e.colno})")
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{i}: expected a JSON object, got {type(obj).__name__}")
        records.append(Record(str(path), f":{i}", obj))
    return records


def _read_json_array(path: Path) -> list[Record]:
    try:
        arr = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: invalid JSON ({e})")
    if not arr:
        raise DataError(f"{path}: file is empty (no records)")
    out = []
    for i, obj in enumerate(arr):
        if not isinstance(obj, dict):
            raise DataError(f"{path} item {i}: expected a JSON object, got {type(obj).__name__}")
        out.append(Record(str(path), f" item {i}", obj))
    return out


def _clean_cell(v: Any) -> Any:
    """Arrow/pandas values -> plain Python (numpy arrays of message dicts -> lists)."""
    if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):
        v = v.tolist()
    if isinstance(v, list):
        return [_clean_cell(x) for x in v]
    if isinstance(v, dict):
        return {k: _clean_cell(x) for k, x in v.items()}
    return v


def read_parquet(path: Path) -> list[Record]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for unreadable files
        raise DataError(f"{path}: cannot read parquet ({type(e).__name__}: {e})".splitlines()[0])
    rows = table.to_pylist()
    if not rows:
        raise DataError(f"{path}: file is empty (no rows)")
    return [Record(str(path), f" row {i}", {k: _clean_cell(v) for k, v in r.items()}) for i, r in enumerate(rows)]


def read_file(path: Path) -> list[Record]:
    if path.suffix in TABLE_EXTS:
        return read_parquet(path)
    return read_text_file(path)


def _find_split(folder: Path, split: str) -> Path | None:
    for stem in SPLIT_NAMES[split]:
        for ext in TEXT_EXTS + TABLE_EXTS:
            p = folder / f"{stem}{ext}"
            if p.is_file():
                return p
    return None


def _looks_local(path: str) -> bool:
    return (
        path.startswith(("/", "./", "../", "~"))
        or os.sep + "." in path
        or Path(path).suffix in TEXT_EXTS + TABLE_EXTS
    )


def read_dataset(path: str) -> RawDataset:
    """A file (all rows are train), a folder with train.* and optionally test.*, or a dataset
    name for `datasets.load_dataset` (its train and test/validation splits)."""
    p = Path(path).expanduser()
    if p.is_file():
        return RawDataset(path, read_file(p), [])
    if p.is_dir():
        train = _find_split(p, "train")
        if train is None:
            names = ", ".join(f"train{e}" for e in TEXT_EXTS + TABLE_EXTS)
            raise DataError(f"{path}: folder has no training file (looked for {names})")
        test = _find_split(p, "test")
        return RawDataset(path, read_file(train), read_file(test) if test else [])
    if _looks_local(path):
        raise DataError(f"{path}: no such file or folder")
    return _read_hub_dataset(path)


def _read_hub_dataset(name: str) -> RawDataset:
    import datasets

    try:
        ds = datasets.load_dataset(name)
    except Exception as e:  # network, missing dataset, bad config: all user-facing
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{name}: cannot load dataset ({msg})")
    def records(split):
        return [Record(f"{name}[{split}]", f" row {i}", dict(r)) for i, r in enumerate(ds[split])]
    if "train" not in ds:
        raise DataError(f"{name}: dataset has no 'train' split (has {', '.join(ds)})")
    test_split = next((s for s in SPLIT_NAMES["test"] if s in ds), None)
    return RawDataset(name, records("train"), records(test_split) if test_split else [])


def require_str(rec: Record, key: str, *, optional: bool = False, allow_empty: bool = False) -> str | None:
    """Field `key` as a string, or a DataError naming the record and the field."""
    if key not in rec.data or rec.data[key] is None:
        if optional:
            return None
        raise DataError(f'{rec.where}: field "{key}" is missing')
    v = rec.data[key]
    if not isinstance(v, str):
        raise DataError(f'{rec.where}: field "{key}" must be a string, got {type(v).__name__}')
    if not allow_empty and not v.strip():
        raise DataError(f'{rec.where}: field "{key}" is empty')
    return v


def require_number(rec: Record, key: str) -> float:
    if key not in rec.data or rec.data[key] is None:
        raise DataError(f'{rec.where}: field "{key}" is missing')
    v = rec.data[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise DataError(f'{rec.where}: field "{key}" must be a number, got {type(v).__name__}')
    if not math.isfinite(v):
        raise DataError(f'{rec.where}: field "{key}" is {v} (scores must be finite numbers)')
    return float(v)
