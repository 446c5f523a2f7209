"""What every benchmark shares: the common flags, one process group, a tiny model, timing, a
profiler window over a method of the product, and the matmul peak."""
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
    from devtools.tiny import build_tiny

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


class CallWindow:
    """torch.profiler over calls `first` .. `first + count - 1` of `owner.<method>` (the product has
    no profiling hook, so a bench wraps one of its methods). `wall`: those calls' summed seconds;
    `done`: the window was reached and closed. `sync` runs before each clock reading
    (torch.cuda.synchronize on a GPU)."""

    def __init__(self, owner: type, method: str, first: int, count: int, activities: list, sync=None, **profile_kw):
        from torch.profiler import profile

        self.profile = profile(activities=activities, **profile_kw)
        self.count, self.wall, self.done = count, 0.0, False
        sync = sync or (lambda: None)
        orig, calls = getattr(owner, method), [0]

        def wrapped(obj, *args, **kwargs):
            calls[0] += 1
            if not first <= calls[0] < first + count:
                return orig(obj, *args, **kwargs)
            if calls[0] == first:
                self.profile.__enter__()
            sync()
            t = time.perf_counter()
            out = orig(obj, *args, **kwargs)
            sync()
            self.wall += time.perf_counter() - t
            if calls[0] == first + count - 1:
                self.profile.__exit__(None, None, None)
                self.done = True
            return out

        setattr(owner, method, wrapped)


def matmul_peak(n: int, dtype=None, device: str = "cpu", reps: int = 10) -> float:
    """FLOP/s of an n x n x n matmul on `device` (fp32 unless `dtype`), the best of `reps` after a
    warm-up: the ceiling no training loop passes."""
    import torch

    x, y = (torch.randn(n, n, device=device, dtype=dtype or torch.float32) for _ in range(2))
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    x @ y
    sync()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        x @ y
        sync()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


EXPERIENCE_PHASES = ("phase/actor_logprobs_s", "phase/scoring_s", "phase/reference_critic_s")


def round_phases(row: dict) -> tuple[float, float, float]:
    """A step-3 metrics row's (generation, experience forwards, update) seconds: its phase/* keys."""
    return (row["phase/generation_s"], sum(row.get(k, 0.0) for k in EXPERIENCE_PHASES), row["phase/update_s"])
