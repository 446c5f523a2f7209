"""Read raw records from local files, folders or dataset names, with locations for errors.

Every record keeps where it came from (`where`: "file:line" or "file row N") so a
validation error can name it in one line. DeepSpeed-Chat's named datasets and Anthropic HH
dialogues are turned into our record formats here, while reading (rules in `named`), so
every step sees the same rows.
"""
from __future__ import annotations

import gzip
import json
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..distributed import print_rank0
from . import named
from ..errors import DataError
from .split import split_indices

TEXT_EXTS = (".txt", ".jsonl", ".json", ".jsonl.gz", ".json.gz")
TABLE_EXTS = (".parquet",)
SPLIT_NAMES = {"train": ("train",), "test": ("test", "eval", "validation", "valid", "dev")}
# Where DeepSpeed-Chat cuts a dataset's evaluation rows out of its train split, it keeps a
# seeded tenth (seed = its default --seed); ours is seeded too, so every step and every run
# holds out the same rows.
DERIVED_EVAL_FRACTION = 0.1
DERIVED_EVAL_SEED = 1234


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


@dataclass(frozen=True)
class SplitNames:
    """Which splits of a folder or dataset are read (--train_splits / --test_splits); None keeps the
    default (train; the first held-out name of SPLIT_NAMES present), [] reads no held-out split."""
    train: tuple[str, ...] | None = None
    test: tuple[str, ...] | None = None


@dataclass
class RawDataset:
    """One `--data_path` entry: its train and (possibly empty) test records."""
    name: str
    train: list[Record]
    test: list[Record]


def _ext(path: Path) -> str:
    """The extension that says how to read the file: ".jsonl.gz" for a gzipped one."""
    return "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a valid gzip file ({e})")


def _decode_lines(path: Path) -> list[tuple[int, str]]:
    raw = _read_bytes(path)
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
    """JSON-lines (`.jsonl`, `.json`, their gzipped `.jsonl.gz`, `.json.gz`, or a `.txt` whose
    first line is a JSON object) become one record per line; any other `.txt` is plain text:
    one `{"text": line}` record per line."""
    lines = [(i, t) for i, t in _decode_lines(path) if t.strip()]
    if not lines:
        raise DataError(f"{path}: file is empty (no records)")
    first = lines[0][1].lstrip()
    kind = _ext(path).removesuffix(".gz")
    is_json = kind in (".jsonl", ".json") or first.startswith("{")
    if kind == ".json" and first.startswith("["):
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
        arr = json.loads(_read_bytes(path).decode("utf-8"))
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


def _find_split(folder: Path, stems: tuple[str, ...]) -> Path | None:
    for stem in stems:
        for ext in TEXT_EXTS + TABLE_EXTS:
            p = folder / f"{stem}{ext}"
            if p.is_file():
                return p
    return None


def _looks_local(path: str) -> bool:
    return (
        path.startswith(("/", "./", "../", "~"))
        or os.sep + "." in path
        or _ext(Path(path)) in TEXT_EXTS + TABLE_EXTS
    )


def read_dataset(path: str, config_name: str | None = None, splits: SplitNames = SplitNames()) -> RawDataset:
    """One `--data_path` entry's train and held-out records, from
    - a file: all rows are train;
    - a folder with train.* and optionally test.* files (SPLIT_NAMES, TEXT_EXTS, TABLE_EXTS);
    - a folder written by `datasets`' save_to_disk (as DeepSpeed-Chat reads local paths);
    - any other folder (a dataset repository's layout, e.g. data/train-00000-of-00001.parquet)
      or a dataset name: `datasets.load_dataset(path, config_name)`, its train split and its
      test (or eval/validation/dev) split.
    A DeepSpeed-Chat dataset name anywhere in the path applies that dataset's column rule
    and split choice (`named.NAMED`), however it was loaded; Anthropic HH rows become
    prompt/chosen/rejected (`named.hh_pair`). Skipped rows are counted per file.
    `config_name` only matters where `load_dataset` is called. `splits` names the splits to read
    instead (each must exist; several are concatenated).
    """
    spec = named.match(path)
    train, test = _load(path, config_name, spec, splits)
    if spec is not None:
        why = f"{spec.name} rows without a usable prompt and answer: utils.data.named.{spec.row.__name__}"
        train, test = (_convert(part, spec.row, why, reading_as=spec.name) for part in (train, test))
        if spec.eval_split is None and not test and splits.test is None:
            train, test = _derive_eval(train)
    why = "Anthropic HH rows whose chosen and rejected differ before the last answer, or with an empty answer"
    train, test = (_convert(part, named.hh_pair, why, only=named.is_hh) for part in (train, test))
    return RawDataset(path, train, test)


def _load(path: str, config_name: str | None, spec: named.NamedDataset | None,
          splits: SplitNames) -> tuple[list[Record], list[Record]]:
    p = Path(path).expanduser()
    if p.is_file():
        return read_file(p), []
    if p.is_dir():
        if _find_split(p, splits.train or _train_names(spec)) is not None:
            return _read_split_files(p, path, spec, splits)
        if (p / "dataset_dict.json").is_file() or (p / "state.json").is_file():
            return _load_saved(p, path, spec, splits)
        return _load_with_datasets(str(p), path, config_name, spec, splits, folder=True)
    if _looks_local(path):
        raise DataError(f"{path}: no such file or folder")
    if spec is not None and spec.local_files:
        return _read_local_files(path, spec)
    name = spec.hub_name if spec is not None and spec.hub_name else path
    return _load_with_datasets(name, path, config_name, spec, splits, folder=False)


def _train_names(spec: named.NamedDataset | None) -> tuple[str, ...]:
    """Training split names in the order looked for: the named dataset's own first."""
    return ((spec.train_split,) if spec is not None else ()) + SPLIT_NAMES["train"]


def _held_out_names(spec: named.NamedDataset | None) -> tuple[str, ...]:
    """Held-out split names in the order looked for: the named dataset's own first."""
    return ((spec.eval_split,) if spec is not None and spec.eval_split else ()) + SPLIT_NAMES["test"]


def _read_split_files(folder: Path, label: str, spec: named.NamedDataset | None,
                      splits: SplitNames) -> tuple[list[Record], list[Record]]:
    """A folder of <split>.<ext> files: the named splits (each must be there), else train and the
    held-out split of the named dataset (a local copy holds out what the hub's does), else the first
    held-out name of SPLIT_NAMES present."""
    def named_files(names: tuple[str, ...], flag: str) -> list[Record]:
        out = []
        for name in names:
            f = _find_split(folder, (name,))
            if f is None:
                raise DataError(f"{label}: no {name}.* file (split {name!r} of {flag})")
            out += read_file(f)
        return out
    if splits.train:
        train = named_files(splits.train, "--train_splits")
    else:
        train = read_file(_find_split(folder, _train_names(spec)))
    if splits.test is not None:
        return train, named_files(splits.test, "--test_splits")
    test = _find_split(folder, _held_out_names(spec))
    return train, read_file(test) if test else []


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e).strip() else type(e).__name__


def _load_with_datasets(target: str, label: str, config_name: str | None, spec: named.NamedDataset | None,
                        splits: SplitNames, *, folder: bool) -> tuple[list[Record], list[Record]]:
    import datasets

    try:
        ds = datasets.load_dataset(target) if config_name is None else datasets.load_dataset(target, config_name)
    except Exception as e:  # network, missing dataset, bad config, unreadable files: all user-facing
        if folder:
            names = ", ".join(f"train{x}" for x in TEXT_EXTS + TABLE_EXTS)
            raise DataError(f"{label}: folder has no training file (looked for {names}) and "
                            f"datasets.load_dataset cannot read it ({_first_line(e)})")
        loading = "" if target == label else f" {target}"
        raise DataError(f"{label}: cannot load dataset{loading} ({_first_line(e)})")
    return _dataset_splits(ds, label, spec, splits)


def _load_saved(folder: Path, label: str, spec: named.NamedDataset | None,
                splits: SplitNames) -> tuple[list[Record], list[Record]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(folder))
    except Exception as e:  # a partial or foreign save_to_disk folder
        raise DataError(f"{label}: cannot load the dataset saved there ({_first_line(e)})")
    return _dataset_splits(ds, label, spec, splits)


def _dataset_splits(ds, label: str, spec: named.NamedDataset | None,
                    splits: SplitNames) -> tuple[list[Record], list[Record]]:
    """Train and held-out records of a loaded Dataset / DatasetDict: the named `splits`, else
    train and the held-out split the named dataset's DeepSpeed-Chat class reads, else the first
    of SPLIT_NAMES."""
    import datasets

    def records(split: str, rows) -> list[Record]:
        return [Record(f"{label}[{split}]", f" row {i}", dict(r)) for i, r in enumerate(rows.to_list())]

    def named_splits(names: tuple[str, ...], flag: str) -> list[Record]:
        missing = [n for n in names if n not in ds]
        if missing:
            raise DataError(f"{label}: dataset has no {missing[0]!r} split ({flag}; it has {', '.join(ds)})")
        return [r for n in names for r in records(n, ds[n])]
    if isinstance(ds, datasets.Dataset):
        return records("train", ds), []
    if splits.train or splits.test is not None:
        train = named_splits(splits.train or _train_names(spec)[:1], "--train_splits")
        if splits.test is not None:
            return train, named_splits(splits.test, "--test_splits")
        test = next((s for s in SPLIT_NAMES["test"] if s in ds), None)
        return train, records(test, ds[test]) if test else []
    train = next((s for s in _train_names(spec) if s in ds), None)
    if train is None:
        raise DataError(f"{label}: dataset has no {_train_names(spec)[0]!r} split (has {', '.join(ds)})")
    test = next((s for s in _held_out_names(spec) if s in ds), None)
    return records(train, ds[train]), records(test, ds[test]) if test else []


def _read_local_files(path: str, spec: named.NamedDataset) -> tuple[list[Record], list[Record]]:
    """DeepSpeed-Chat's local/jsonfile reads data/train.json and data/eval.json from its own
    folder; ours are under the working directory (where the steps are run from)."""
    files = [Path.cwd() / f for f in spec.local_files]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{path}: {' and '.join(missing)} not found ({spec.name} reads "
                        f"{' and '.join(spec.local_files)} under the working directory)")
    return read_file(files[0]), read_file(files[1])


def _convert(records: list[Record], rule: Callable[[dict], dict | None], why: str, *,
             only: Callable[[dict], bool] | None = None, reading_as: str | None = None) -> list[Record]:
    """Apply a row rule (None: skip the row) to the records (those `only` accepts, if given);
    skipped rows are counted per source, and a source left with no row is an error."""
    out, skipped, total = [], {}, {}
    for rec in records:
        total[rec.source] = total.get(rec.source, 0) + 1
        if only is not None and not only(rec.data):
            out.append(rec)
            continue
        try:
            data = rule(rec.data)
        except named.RowError as e:
            raise DataError(f"{rec.where}: {e}" + (f" (reading it as {reading_as})" if reading_as else ""))
        if data is None:
            skipped[rec.source] = skipped.get(rec.source, 0) + 1
        else:
            out.append(Record(rec.source, rec.loc, data))
    for source, n in skipped.items():
        if n == total[source]:
            raise DataError(f"{source}: all {n} rows skipped ({why})")
        print_rank0(f"[data] {source}: skipped {n} of {total[source]} rows ({why})")
    return out


def _derive_eval(train: list[Record]) -> tuple[list[Record], list[Record]]:
    fractions = [1 - DERIVED_EVAL_FRACTION, DERIVED_EVAL_FRACTION]
    keep, held = (split_indices(len(train), fractions, i, DERIVED_EVAL_SEED) for i in (0, 1))
    return [train[i] for i in keep], [train[i] for i in held]


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
