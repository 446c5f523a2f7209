"""Metrics to metrics.jsonl, TensorBoard and a tqdm bar (whole lines in a log file); silent on ranks > 0."""
from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from .distributed import is_main


class MetricsLogger:
    """`log(step, metrics)` appends a JSON line and TensorBoard scalars (rank 0 only)."""

    def __init__(self, output_dir: str, *, tensorboard: bool = False, tensorboard_path: str | None = None,
                 name: str = "train", append: bool = False):
        self.enabled = is_main()
        self.writer = None
        self.file = None
        self.rows = 0          # lines in metrics.jsonl: a checkpoint records it, resume cuts back to it
        if not self.enabled:
            return
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "metrics.jsonl"
        self.tensorboard = (tensorboard_path or str(out / "tensorboard" / name)) if tensorboard else None
        # A resumed run continues the file (see `rewind`); a fresh run starts it anew.
        if append and self.path.exists():
            self.rows = len(self.path.read_text(encoding="utf-8").splitlines())
        self.file = open(self.path, "a" if append else "w", encoding="utf-8")
        if self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(self.tensorboard)

    def rewind(self, rows: int | None, step: int) -> None:
        """Back to where a checkpoint at `step` left the log: metrics.jsonl keeps its first `rows`
        lines (a checkpoint from before row counts: the rows up to `step`), TensorBoard drops the
        events after `step`. The resumed run logs the rest again, so no row appears twice."""
        if not self.enabled:
            return
        self.file.close()
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        keep = lines[:rows] if rows is not None else [ln for ln in lines if _step(ln) <= step]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(keep), encoding="utf-8")
        os.replace(tmp, self.path)
        self.rows = len(keep)
        self.file = open(self.path, "a", encoding="utf-8")
        if self.writer is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer.close()
            self.writer = SummaryWriter(self.tensorboard, purge_step=step + 1)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        # microseconds: benches time millisecond steps from these stamps
        row = {"step": step, "time": round(time.time(), 6), **{k: float(v) for k, v in metrics.items()}}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        self.rows += 1
        if self.writer is not None:
            for k, v in metrics.items():
                self.writer.add_scalar(k, float(v), step)

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.writer:
            self.writer.close()


def _step(line: str) -> float:
    """A row's step; a line a killed run left half-written counts as past every step."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


class LineProgress:
    """Progress as whole lines, at most one per `interval` seconds: what a bar becomes when the
    output is a file (DeepSpeed-Chat's scripts run with `&> training.log`, where a bar's carriage
    returns pile up into one endless line)."""

    def __init__(self, total: int, initial: int, desc: str, interval: float = 30.0, stream=None):
        self.total, self.n, self.desc, self.interval = total, initial, desc, interval
        self.stream = stream or sys.stderr
        self.postfix = ""
        self.start = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval or self.n == self.total:
            self.last = now
            pct = f" ({100 * self.n // self.total}%)" if self.total else ""
            line = f"[{self.desc}] {self.n}/{self.total}{pct} {self.postfix} {now - self.start:.0f} s"
            print(line.replace("  ", " "), file=self.stream, flush=True)

    def set_postfix(self, **kw) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())

    def close(self) -> None:
        pass


def progress(total: int, initial: int = 0, desc: str = "train", disable: bool = False):
    """A tqdm bar on rank 0 at a terminal, whole lines every 30 s when the output is a file, a
    silent stand-in elsewhere."""
    from tqdm.auto import tqdm

    if not (disable or not is_main()) and not sys.stderr.isatty():
        return LineProgress(total, initial, desc)
    return tqdm(total=total, initial=initial, desc=desc, disable=disable or not is_main(),
                dynamic_ncols=True, mininterval=1.0)


def quiet_library_bars() -> None:
    """When the output is a file, the libraries' own bars go too: datasets' split generation and
    huggingface_hub's downloads would pile their carriage returns into the log as ours would.
    Called at start-up, before datasets is imported (it reads the variable then)."""
    if sys.stderr.isatty():
        return
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()


class PhaseClock:
    """Seconds spent per named phase, and counts of what they made, summed until `pop`:
    `with clock("generation"): ...`, `clock.count("generated_tokens", n)`."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, float] = {}

    def count(self, name: str, n: float) -> None:
        self.counts[name] = self.counts.get(name, 0.0) + n

    @contextmanager
    def __call__(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t

    def pop(self) -> tuple[dict[str, float], dict[str, float]]:
        """(seconds, counts) since the last pop."""
        out = (self.seconds, self.counts)
        self.seconds, self.counts = {}, {}
        return out
