"""Metrics to metrics.jsonl, TensorBoard and a tqdm bar; silent on ranks > 0."""
from __future__ import annotations

import json
import time
from pathlib import Path

from .distributed import is_main


class MetricsLogger:
    """`log(step, metrics)` appends a JSON line and TensorBoard scalars (rank 0 only)."""

    def __init__(self, output_dir: str, *, tensorboard: bool = False, tensorboard_path: str | None = None,
                 name: str = "train", append: bool = False):
        self.enabled = is_main()
        self.writer = None
        self.file = None
        if not self.enabled:
            return
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        # A resumed run continues the file; a fresh run in the same folder starts it anew.
        self.file = open(out / "metrics.jsonl", "a" if append else "w", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(tensorboard_path or str(out / "tensorboard" / name))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, "time": round(time.time(), 3), **{k: float(v) for k, v in metrics.items()}}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.writer is not None:
            for k, v in metrics.items():
                self.writer.add_scalar(k, float(v), step)

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.writer:
            self.writer.close()


def progress(total: int, initial: int = 0, desc: str = "train", disable: bool = False):
    """tqdm bar on rank 0; a silent stand-in elsewhere."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=disable or not is_main(),
                dynamic_ncols=True, mininterval=1.0)
