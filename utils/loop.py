"""The run machinery every step's training loop shares, written once: resume from the latest
checkpoint, checkpoints every --save_steps and on SIGTERM, metrics rows (metrics.jsonl,
TensorBoard) and their history, and the progress bar. A step keeps its own loop body (the
supervised `Trainer`'s optimizer steps, step 3's rounds) and its own state, through two methods:

    state_dict() -> dict           this rank's state (position, RNG, running statistics)
    load_state_dict(dict) -> None  the same, from a checkpoint

Keys named in `shared` hold what is the same on every rank (step 3's EMA weights): saved once.
Every other key is saved per rank (DeepSpeed keeps rank 0's client state only, so the ranks'
states travel gathered in it). A step that can continue on another number of processes passes
`redeal` (the saved ranks' states -> this rank's); without it a run resumes with as many
processes as wrote it.

Resume takes the newest checkpoint that verifies against its manifest (utils/checkpoint.py) and
cuts metrics.jsonl back to the rows logged before it, so the resumed run's rows follow on without
repeats.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

from . import distributed as dist
from .checkpoint import checkpoint_tags, load_checkpoint, resume_point, save_checkpoint, step_of, written_by
from .engines import grad_norms, non_finite_weights
from .errors import ConfigError, TrainingHalted
from .logging import MetricsLogger, progress
from .run import Preemption, user_errors


class RunLoop:
    """`engines`: name -> DeepSpeed engine (checkpointed with their optimizers); `state`: the step's
    object with `state_dict` / `load_state_dict`; `name`: the metrics' name (TensorBoard run)."""

    def __init__(self, cfg, engines: dict, state, *, name: str, shared: tuple[str, ...] = (),
                 redeal: Callable[[list[dict]], dict] | None = None):
        self.cfg, self.engines, self.state, self.shared, self.redeal = cfg, engines, state, shared, redeal
        self.ckpt_dir = Path(cfg.output_dir) / "checkpoints"
        self.logger = MetricsLogger(cfg.output_dir, tensorboard=cfg.enable_tensorboard,
                                    tensorboard_path=cfg.tensorboard_path, name=name, append=cfg.resume)
        self.preemption = Preemption()
        self.history: list[dict] = []
        self.bar = None

    # -- checkpoints -------------------------------------------------------------------------------
    def resume(self) -> str | None:
        """With --resume, load the newest checkpoint that verifies into the engines and the step's
        state; returns its folder (None: nothing to resume)."""
        if not self.cfg.resume:
            return None
        with user_errors():
            tag = resume_point(self.ckpt_dir)
            if tag is None:
                dist.print_rank0(f"[resume] no checkpoint in {self.ckpt_dir}; starting from scratch")
                self.logger.rewind(0, -1)
                return None
            by = written_by(self.ckpt_dir / tag)
            if by not in (None, dist.world_size()) and self.redeal is None:
                raise ConfigError(self._same_processes(tag, by))
            client = load_checkpoint(self.engines, self.ckpt_dir, tag)
            ranks, shared = client_states(client)
            if len(ranks) == dist.world_size():
                own = ranks[dist.rank()]
            elif self.redeal is not None:
                own = self.redeal(ranks)
                dist.print_rank0(f"[resume] {self.ckpt_dir}/{tag} was written by {len(ranks)} "
                                 f"process{'es' if len(ranks) > 1 else ''}; continuing on {dist.world_size()}")
            else:
                raise ConfigError(self._same_processes(tag, len(ranks)))
            self.state.load_state_dict({**own, **shared})
        self.logger.rewind(client.get("metrics_rows"), step_of(tag))
        return f"{self.ckpt_dir}/{tag}"

    def _same_processes(self, tag: str, by: int) -> str:
        return (f"--resume: {self.ckpt_dir}/{tag} was written by {by} process{'es' if by > 1 else ''}; this step "
                f"resumes with as many "
                f"(this run has {dist.world_size()}): each process's state cannot be re-dealt")

    def checkpoint(self, step: int) -> None:
        """Save the engines and every rank's state as checkpoints/step<step>, unless a weight is not
        finite (a finite loss whose update overflowed, which no loss check sees): then the run stops
        (`TrainingHalted`) with the last checkpoint untouched."""
        bad = non_finite_weights(self.engines)
        if bad:
            raise TrainingHalted(f"step {step}: the {' and '.join(bad)} weights are not finite; stopped before saving "
                                 f"anything of it ({self._last_checkpoint()})")
        own = self.state.state_dict()
        shared = {k: own.pop(k) for k in self.shared}
        state = {"ranks": dist.all_gather_object(own), "shared": shared, "metrics_rows": self.logger.rows}
        save_checkpoint(self.engines, self.ckpt_dir, f"step{step}", state, self.cfg.save_total_limit)

    def halt_if_not_finite(self, where: str, losses: dict[str, float]) -> None:
        """Stop the run (`TrainingHalted`) when a loss of the step or round `where`, or an engine's
        gradient norm, is not finite, before anything of it is logged or saved. `losses` must be
        reduced over the ranks (the norms are global), so every rank stops together."""
        bad = {k: v for k, v in {**losses, **grad_norms(self.engines)}.items() if not math.isfinite(v)}
        if bad:
            raise TrainingHalted(f"{where}: {', '.join(f'{k} is {v}' for k, v in bad.items())}; stopped before saving "
                                 f"anything of it ({self._last_checkpoint()})")

    def _last_checkpoint(self) -> str:
        tags = checkpoint_tags(self.ckpt_dir)
        return f"the last checkpoint, {self.ckpt_dir}/{tags[0]}, is untouched" if tags else "no checkpoint was written"

    # -- progress and metrics ------------------------------------------------------------------------
    def start(self, total: int, done: int, desc: str = "train") -> None:
        self.bar = progress(total, done, desc=desc, disable=self.cfg.disable_tqdm)

    def log(self, step: int, row: dict) -> None:
        self.logger.log(step, row)
        self.history.append({"step": step, **row})

    def after_step(self, step: int) -> None:
        """After optimizer step (step 3: round) `step`: the --save_steps checkpoint, and on SIGTERM a
        checkpoint and a clean stop."""
        self.preemption.after_step(step, self.cfg.save_steps, lambda: self.checkpoint(step), str(self.ckpt_dir),
                                   self.logger.close)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.logger.close()
        self.preemption.restore()


def client_states(client: dict) -> tuple[list[dict], dict]:
    """(each rank's state, the shared state) of a checkpoint's client state, also as the loops wrote
    them before they shared this module: step 3's {"recipe": [...], "ema": ...}, the supervised
    trainer's {"train_state": ..., "rng": [...]}."""
    if "ranks" in client:
        return client["ranks"], client["shared"]
    if "recipe" in client:
        return client["recipe"], {"ema": client["ema"]}
    return [{"train_state": client["train_state"], "rng": r} for r in client["rng"]], {}
