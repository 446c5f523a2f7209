"""Seeding and the random-number state a checkpoint saves: Python's, NumPy's and torch's (CPU and
every CUDA device), at the bottom of the library."""
from __future__ import annotations

import random
from contextlib import contextmanager

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every RNG's state as plain data (tuples, lists, numbers, tensors), which a checkpoint loads
    without pickle's code paths (`torch.load(weights_only=True)`)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (name, keys.tolist(), pos, has_gauss, cached),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def seeded(seed: int):
    """torch (CPU, and CUDA once initialised) seeded for the block, every RNG state restored after:
    a side job (predictions during training) draws the same whenever it runs and leaves training's
    draws as they were. CUDA is not touched before it is initialised (torch.manual_seed would
    queue a lazy CUDA seed)."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    saved = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
             torch.cuda.get_rng_state_all() if cuda else None)
    try:
        torch.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.manual_seed_all(seed)
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])
        if saved[3] is not None:
            torch.cuda.set_rng_state_all(saved[3])
