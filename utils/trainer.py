"""The training loop every supervised-style step shares (SFT, reward model, DPO).

A step supplies its examples, a collator and a loss function returning sums; this module
owns the DeepSpeed engine, the batch order, exact loss normalisation over accumulation
windows, evaluation, logging, checkpoints and resume.

Normalisation: a step's loss is the sum over every counted item (token, pair) in the whole
accumulation window on every rank, divided by their number. Each micro-batch's sum is
scaled by gas * world / total before `engine.backward`, which undoes DeepSpeed's 1/gas
scaling and its mean over ranks, so batch 8 equals batch 4 x 2 accumulation exactly, even
when micro-batches hold different numbers of tokens.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from . import distributed as dist
from .engines import engine_stats, total_steps
from .errors import ConfigError
from .loop import RunLoop
from .seeding import rng_state, set_rng_state


@dataclass
class LossOutput:
    loss_sum: torch.Tensor                 # [] loss summed over the counted items
    count: float                           # number of counted items (tokens, pairs) in loss_sum
    # name -> (sum, number of items it sums over); reported as sum / number over all ranks
    metrics: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass
class TrainState:
    epoch: int = 0
    window: int = 0        # next accumulation window within the epoch
    global_step: int = 0   # optimizer steps done


class Trainer:
    """Runs `loss_fn` over `train` with DeepSpeed; evaluates with the same function on `test`.

    Args:
        engine: a DeepSpeed engine (see `init_engine`).
        collate: list of examples -> batch (with `.to(device)`).
        loss_fn: (engine, batch) -> LossOutput.
        count_fn: batch -> number of items its loss counts (known before the forward).
    """

    def __init__(self, cfg, engine, train: Sequence, test: Sequence, *, collate: Callable,
                 loss_fn: Callable, count_fn: Callable, name: str = "train"):
        self.cfg, self.engine = cfg, engine
        self.train_data, self.test_data = train, test
        self.collate, self.loss_fn, self.count_fn = collate, loss_fn, count_fn
        self.rank, self.world = dist.rank(), dist.world_size()
        self.gas = cfg.gradient_accumulation_steps
        self.state = TrainState()
        self.device = dist.device()
        self.loop = RunLoop(cfg, {"model": engine}, self, name=name, redeal=self.redeal)

    @property
    def history(self) -> list[dict]:
        return self.loop.history

    # -- batch order ---------------------------------------------------------------------
    def windows(self, epoch: int) -> list[list[list[int]]]:
        """Accumulation windows (lists of micro-batches of indices) of one epoch; a trailing
        incomplete window is dropped so every optimizer step sees gas micro-batches."""
        from .data import epoch_batches

        batches = epoch_batches(len(self.train_data), self.cfg.per_device_train_batch_size,
                                rank=self.rank, world_size=self.world, seed=self.cfg.seed, epoch=epoch)
        n = len(batches) // self.gas
        return [batches[i * self.gas:(i + 1) * self.gas] for i in range(n)]

    def total_steps(self) -> int:
        return total_steps(len(self.train_data), self.cfg, self.world)

    # -- state (checkpointed by the run loop) ---------------------------------------------------
    def global_batch(self) -> int:
        """Examples per optimizer step over every rank: what fixes each step's examples (a window is
        the next `global_batch` of the epoch's permutation, however the ranks split it)."""
        return self.cfg.per_device_train_batch_size * self.world * self.gas

    def state_dict(self) -> dict:
        return {"train_state": vars(self.state).copy(), "rng": rng_state(), "global_batch": self.global_batch()}

    def load_state_dict(self, s: dict) -> None:
        saved = s.get("global_batch", self.global_batch())
        if saved != self.global_batch():
            raise ConfigError(f"--resume: the checkpoint trained on {saved} examples per optimizer step "
                              f"(--per_device_train_batch_size x processes x --gradient_accumulation_steps); this run "
                              f"takes {self.global_batch()}: resume with the same product, or the data order and "
                              f"learning-rate schedule would not continue")
        self.state = TrainState(**s["train_state"])
        set_rng_state(s["rng"])

    def redeal(self, ranks: list[dict]) -> dict:
        """This rank's state from a checkpoint written by another number of processes: the position is
        every rank's; the RNG (dropout) is this rank's where it existed, else rank 0's."""
        return {**ranks[0], "rng": ranks[self.rank if self.rank < len(ranks) else 0]["rng"]}

    # -- one optimizer step ------------------------------------------------------------------
    def train_window(self, window: list[list[int]]) -> dict[str, float]:
        batches = [self.collate([self.train_data[i] for i in b]) for b in window]
        total = dist.all_reduce_sum(sum(float(self.count_fn(b)) for b in batches))
        scale = self.gas * self.world / max(total, 1.0)
        loss_sum, sums, tokens = 0.0, {}, 0
        for batch in batches:
            batch = batch.to(self.device)
            out = self.loss_fn(self.engine, batch)
            self.engine.backward(out.loss_sum * scale)
            self.engine.step()
            loss_sum += float(out.loss_sum.detach())
            _accumulate(sums, out.metrics)
            tokens += int(batch.attention_mask.sum())
        metrics = {"loss": dist.all_reduce_sum(loss_sum) / max(total, 1.0), **_reduce(sums)}
        metrics["tokens"] = dist.all_reduce_sum(tokens)
        return metrics

    # -- evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Exact mean over the test set: each rank takes a contiguous slice; a rank with fewer
        batches repeats a forward and discards it, so ZeRO-3's collective forwards stay matched."""
        if not self.test_data:
            return {}
        self.engine.eval()
        bs = self.cfg.per_device_eval_batch_size
        mine, per_rank = dist.share(len(self.test_data), self.cfg.eval_iters * bs if self.cfg.eval_iters else None)
        loss_sum, count, sums = 0.0, 0.0, {}
        for b in range(-(-per_rank // bs)):
            idx = mine[b * bs:(b + 1) * bs]
            batch = self.collate([self.test_data[i] for i in (idx or [0])]).to(self.device)
            out = self.loss_fn(self.engine, batch)
            if not idx:
                continue
            loss_sum += float(out.loss_sum)
            count += float(out.count)
            _accumulate(sums, out.metrics)
        self.engine.train()
        count = dist.all_reduce_sum(count)
        return {"loss": dist.all_reduce_sum(loss_sum) / max(count, 1.0), **_reduce(sums)}

    def log_eval(self, extra: Callable[[dict], dict] | None = None) -> dict[str, float]:
        m = self.evaluate()
        if not m:
            return m
        if extra:
            m.update(extra(m))
        row = {f"eval/{k}": v for k, v in m.items()}
        self.loop.log(self.state.global_step, row)
        dist.print_rank0(f"[eval] step {self.state.global_step}: " +
                         ", ".join(f"{k} {v:.4f}" for k, v in m.items()))
        return m

    # -- the loop --------------------------------------------------------------------------
    def fit(self, eval_extra: Callable[[dict], dict] | None = None,
            after_step: Callable[[int, int], None] | None = None) -> dict[str, float]:
        """Train to the end (resuming when asked); returns the last evaluation metrics.
        `after_step(epoch, step)` runs after every optimizer step (e.g. predictions)."""
        cfg = self.cfg
        total = self.total_steps()
        where = self.loop.resume()
        if where:
            dist.print_rank0(f"[resume] {where}: epoch {self.state.epoch}, step {self.state.global_step}")
        self.engine.train()
        self.loop.start(total, self.state.global_step)
        bar = self.loop.bar
        last_eval: dict[str, float] = {}
        if self.state.global_step == 0:
            last_eval = self.log_eval(eval_extra)
        t0, tok0 = time.perf_counter(), 0.0
        for epoch in range(self.state.epoch, cfg.num_train_epochs):
            if self.state.global_step >= total and self.state.window == 0:
                break   # a finished run resumed from its last step, which ended an epoch: all was done
            windows = self.windows(epoch)
            for w in range(self.state.window, len(windows)):
                if self.state.global_step >= total:
                    break   # a finished run resumed from its last step: only its final evaluation follows
                m = self.train_window(windows[w])
                self.state = TrainState(epoch, w + 1, self.state.global_step + 1)
                step = self.state.global_step
                self.loop.halt_if_not_finite(f"step {step}", {"the training loss": m["loss"]})
                tok0 += m.pop("tokens")
                bar.update(1)
                bar.set_postfix(loss=f"{m['loss']:.4f}")
                if cfg.print_loss:
                    dist.print_rank0(f"[train] epoch {epoch} step {step} loss {m['loss']:.6f}")
                if step % cfg.logging_steps == 0 or step == total:
                    dt = time.perf_counter() - t0
                    row = {f"train/{k}": v for k, v in m.items()}
                    row.update({"train/lr": self.engine.get_lr()[0], "train/epoch": epoch,
                                "train/tokens_per_s": tok0 / dt if dt > 0 else 0.0})
                    gn = self.engine.get_global_grad_norm()
                    if gn is not None:
                        row["train/grad_norm"] = float(gn)
                    row.update(engine_stats({"train": self.engine}))
                    self.loop.log(step, row)
                    t0, tok0 = time.perf_counter(), 0.0
                if cfg.eval_steps and step % cfg.eval_steps == 0:
                    last_eval = self.log_eval(eval_extra)
                if after_step is not None:
                    after_step(epoch, step)
                self.loop.after_step(step)
                if step >= total:
                    break
            if not cfg.eval_steps or (self.state.global_step % cfg.eval_steps):
                last_eval = self.log_eval(eval_extra)
            self.state = TrainState(epoch + 1, 0, self.state.global_step)
            if self.state.global_step >= total:
                break
        self.loop.close()
        return last_eval


def _accumulate(sums: dict, metrics: dict) -> None:
    for k, (v, n) in metrics.items():
        s, c = sums.get(k, (0.0, 0.0))
        sums[k] = (s + float(v), c + float(n))


def _reduce(sums: dict) -> dict[str, float]:
    """Global (over ranks) sum / count per metric, over the union of every rank's keys in one order
    (a rank may hold no row of a kind, e.g. no scored row of a blended reward dataset: it adds 0)."""
    out = {}
    keys = sorted(set().union(*dist.all_gather_object(sorted(sums))))
    for k in keys:
        s, n = sums.get(k, (0.0, 0.0))
        n = dist.all_reduce_sum(n)
        out[k] = dist.all_reduce_sum(s) / n if n else float("nan")
    return out


def perplexity(metrics: dict) -> dict:
    return {"perplexity": math.exp(min(metrics["loss"], 50.0))}
