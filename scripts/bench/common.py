"""What every benchmark shares: the common flags, one process group, a tiny model, timing."""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def parser(doc: str, *, steps: int, rounds: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--steps", type=int, default=steps, help="steps per timed block")
    p.add_argument("--rounds", type=int, default=rounds, help="alternating timed blocks per side")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    return p


def setup_tiny(hidden: int, layers: int, max_position: int) -> str:
    """Start a one-process group and build a tiny Llama offline; returns its folder."""
    from utils import distributed as dist
    from utils.tiny import build_tiny

    dist.set_env_defaults()
    dist.init_distributed()
    folder = f"{tempfile.mkdtemp()}/m"
    texts = [f"User: item {i} is number {i * 7 % 101}\nAssistant: noted {i}" for i in range(400)]
    build_tiny(texts, folder, vocab_size=400, hidden_size=hidden, layers=layers, heads=4, max_position=max_position)
    return folder


def alternate(a: dict, rounds: int, steps: int) -> dict[str, float]:
    """Median seconds per call of each named step function, timed in alternating blocks
    (after one warm-up block each) so drift in machine speed hits every side alike."""
    def block(fn):
        t = time.perf_counter()
        for i in range(steps):
            fn(i)
        return (time.perf_counter() - t) / steps

    for fn in a.values():
        block(fn)
    times: dict[str, list[float]] = {k: [] for k in a}
    for _ in range(rounds):
        for k, fn in a.items():
            times[k].append(block(fn))
    return {k: statistics.median(v) for k, v in times.items()}
