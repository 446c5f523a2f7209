"""What every entry point does around its own work: start, report user errors, finish."""
from __future__ import annotations

import signal
import sys
from contextlib import contextmanager
from typing import Callable

from . import distributed as dist
from .errors import ConfigError, DataError, TrainingHalted, WriteFailed
from .logging import quiet_library_bars
from .outdir import claim
from .seeding import seed_everything


def start(cfg) -> None:
    """Environment defaults, process group, the output folder (utils/outdir.py), seeds; names once
    each accepted flag that does nothing in this run."""
    dist.set_env_defaults()
    quiet_library_bars()
    dist.init_distributed()
    for note in getattr(cfg, "notes", []):
        dist.print_rank0(f"[flags] {note}")
    with user_errors():
        claim(cfg.output_dir, resume=cfg.resume, overwrite=cfg.overwrite_output_dir)
    seed_everything(cfg.seed)


@contextmanager
def _one_line_exit(codes: dict[type, int]):
    """An exception of a kind in `codes` (raised alike on every rank) becomes one line on stderr,
    printed by rank 0, and that kind's exit code."""
    try:
        yield
    except tuple(codes) as e:
        if dist.rank() == 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        dist.teardown()   # a process group left alive crashes some multi-process exits ("terminate called")
        raise SystemExit(next(code for kind, code in codes.items() if isinstance(e, kind)))


def user_errors():
    """A DataError or ConfigError becomes one line on stderr and exit code 2, the code argparse
    gives a bad flag: every user error exits 2.

    Used around config checks, data loading and model loading, which all run before the
    output folder is created, so a bad input leaves nothing behind.
    """
    return _one_line_exit({DataError: 2, ConfigError: 2})


def halts():
    """Around training and the final export: a `TrainingHalted` (the same on every rank) becomes one
    line on stderr and exit code 3, with the model left unsaved; a `WriteFailed` (a full disk, no
    permission) exit code 4."""
    return _one_line_exit({TrainingHalted: 3, WriteFailed: 4})


def finish(run_dir: str | None = None) -> None:
    """The end of a step, after its model is saved: tear down, then (rank 0) draw the run's
    picture into `run_dir`. A pre-empted run passes no folder: it has not finished."""
    draws = run_dir is not None and dist.is_main()  # read before teardown: rank() needs the process group
    dist.teardown()
    if draws:
        draw_picture(run_dir)


def draw_picture(run_dir: str) -> None:
    """`run_dir`/training_curves.png from its metrics.jsonl (utils/plot.py), in one printed line.
    The model is already saved, so a picture that cannot be drawn (matplotlib missing, a full
    disk) is reported in one line and the run still succeeds: a pipeline's next step must not
    stop over a picture."""
    try:
        from .plot import picture_of_run

        line = picture_of_run(run_dir)
    except Exception as e:
        print(f"[plot] no picture for {run_dir}: {type(e).__name__}: {e} "
              f"(`python -m utils.plot {run_dir}` tries again)", file=sys.stderr, flush=True)
        return
    print(line, flush=True)


def typed_escapes(text: str) -> str:
    """`\\n` and `\\t` typed on a command line (or in a plain prompt file) as newline and tab.
    Only these two: decoding the whole text as `unicode_escape` mangles non-ASCII ("é" -> "Ã©")."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


class Preemption:
    """SIGTERM (a cluster pre-empting the job) and Ctrl-C are noted when they arrive and acted on
    between optimizer steps: `due()` is true on every rank once any rank got one, so all ranks write
    the same checkpoint and stop together. A second Ctrl-C aborts at once."""

    def __init__(self):
        self.signal: int | None = None
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def restore(self) -> None:
        """The handlers from before this run (a caller that runs steps in-process keeps its own)."""
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            if dist.rank() == 0:
                print("\n[interrupt] Ctrl-C: finishing this step, then a checkpoint; Ctrl-C again aborts without one",
                      file=sys.stderr, flush=True)
        self.signal = self.signal or signum

    def due(self) -> bool:
        return dist.all_reduce_max(float(self.signal or 0)) > 0

    def after_step(self, step: int, save_steps: int, checkpoint: Callable[[], None], checkpoint_dir: str,
                   close: Callable[[], None]) -> None:
        """After optimizer step `step` (step 3: round): the --save_steps checkpoint; on SIGTERM or
        Ctrl-C a checkpoint too (unless just written), then `close()` the logs and stop."""
        saved = bool(save_steps and step % save_steps == 0)
        if saved:
            checkpoint()
        if self.due():
            if not saved:
                checkpoint()
            close()
            self.stop(checkpoint_dir, step)

    def stop(self, checkpoint_dir: str, step: int) -> None:
        """After the checkpoint is written: say how to continue, tear down, exit: 0 for SIGTERM (the
        scheduler requeues the job), 130 for Ctrl-C (a shell pipeline of steps stops there)."""
        interrupted = dist.all_reduce_max(float(self.signal == signal.SIGINT)) > 0
        name = "Ctrl-C" if interrupted else "SIGTERM"
        dist.print_rank0(f"[preempted] {name}: checkpoint at step {step} in {checkpoint_dir}; run the same "
                         f"command with --resume to continue")
        finish()
        raise SystemExit(130 if interrupted else 0)
