"""`--data_split a,b,c`: give each training step its own, reproducible share of a dataset."""
from __future__ import annotations

from enum import IntEnum

import numpy as np

from ..errors import DataError


class Phase(IntEnum):
    """The share of a --data_split that a step reads: DeepSpeed-Chat's phases 1-3, counted from 0."""
    SFT = 0
    REWARD = 1   # the reward model, DPO and its relatives
    RLHF = 2


STEP_NAMES = ("step 1 (SFT)", "step 2 (reward/DPO)", "step 3 (RLHF)")


def parse_split(spec: str) -> list[float]:
    """"2,4,4" -> [0.2, 0.4, 0.4]. Three non-negative weights, not all zero."""
    try:
        parts = [float(x) for x in spec.split(",")]
    except ValueError:
        raise ValueError(f"--data_split must be three comma-separated numbers, got {spec!r}")
    if len(parts) != 3 or any(p < 0 for p in parts) or sum(parts) == 0:
        raise ValueError(f"--data_split must be three non-negative numbers, not all 0, got {spec!r}")
    total = sum(parts)
    return [p / total for p in parts]


def split_indices(n: int, fractions: list[float], step: Phase, seed: int) -> list[int]:
    """Row indices of `n` rows that belong to `step`.

    One seeded permutation is cut at the rounded cumulative fractions, so the three shares
    are disjoint, cover every row, and are the same in every step that uses the same seed.
    """
    order = np.random.default_rng(seed).permutation(n)
    bounds = np.round(np.cumsum([0.0] + fractions) * n).astype(int)
    bounds[-1] = n
    return sorted(order[bounds[step]:bounds[step + 1]].tolist())


def take_fraction(records: list, fraction: float, seed: int, name: str) -> list:
    """`--data_fractions`: int(fraction x rows) rows chosen by a seeded permutation, in file order
    (int() rounds down, as the alignment handbook's dataset_mixer does)."""
    if fraction == 1:
        return records
    n = int(fraction * len(records))
    if n == 0:
        raise DataError(f"{name}: --data_fractions {fraction} keeps no row of {len(records)}")
    return [records[i] for i in sorted(np.random.default_rng(seed).permutation(len(records))[:n].tolist())]


def take_step_share(records: list, spec: str | None, step: Phase, seed: int, name: str) -> list:
    if spec is None:
        return records
    idx = split_indices(len(records), parse_split(spec), step, seed)
    if not idx:
        raise DataError(f"{name}: --data_split {spec} leaves no rows for {STEP_NAMES[step]} ({len(records)} rows)")
    return [records[i] for i in idx]
