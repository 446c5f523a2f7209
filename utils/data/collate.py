"""Batches as typed containers, the padding collator, and the per-rank batch order."""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from .encoding import IGNORE_INDEX, Example


@dataclass
class LMBatch:
    input_ids: torch.Tensor       # [B, T] long, right-padded with pad_id
    attention_mask: torch.Tensor  # [B, T] long, 1 on real tokens
    labels: torch.Tensor          # [B, T] long, IGNORE_INDEX on prompt, context and padding
    # [1, T] long, restarting at 0 at each example packed into the one row (collate_packed);
    # None: positions are counted from attention_mask
    position_ids: torch.Tensor | None = None

    def to(self, device) -> "LMBatch":
        return batch_to(self, device)


def batch_to(batch, device):
    """A copy of a batch dataclass with every tensor field on `device` (other fields as they are)."""
    return type(batch)(**{f.name: (v.to(device) if torch.is_tensor(v := getattr(batch, f.name)) else v)
                          for f in fields(batch)})


def pad_right(seqs: list[list[int]], value: int, length: int | None = None) -> torch.Tensor:
    """[len(seqs), length] long tensor; `length` defaults to the longest sequence."""
    length = length or max(len(s) for s in seqs)
    out = torch.full((len(seqs), length), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def collate_lm(examples: list[Example], pad_id: int, pad_to_multiple_of: int = 1) -> LMBatch:
    """Right-pad to the longest example (rounded up to a multiple, for tensor cores)."""
    longest = max(len(e.input_ids) for e in examples)
    length = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    ids = pad_right([e.input_ids for e in examples], pad_id, length)
    mask = pad_right([[1] * len(e.input_ids) for e in examples], 0, length)
    labels = pad_right([e.labels for e in examples], IGNORE_INDEX, length)
    return LMBatch(ids, mask, labels)


def collate_packed(examples: list[Example], pad_id: int = 0) -> LMBatch:
    """Padding-free: the examples end to end in one row, position ids restarting at each (TRL's
    padding_free). transformers' attention reads the restarts as sequence boundaries (a block-
    diagonal causal mask, or flash attention's varlen form), so each example sees only itself.
    Each example's first label is dropped: it would be predicted from the previous example's last
    token (in a padded batch no position predicts it). `pad_id` is unused (no padding)."""
    ids = [t for e in examples for t in e.input_ids]
    labels = [lab for e in examples for lab in [IGNORE_INDEX, *e.labels[1:]]]
    pos = [i for e in examples for i in range(len(e.input_ids))]
    as_row = lambda xs: torch.tensor([xs], dtype=torch.long)  # noqa: E731
    return LMBatch(as_row(ids), torch.ones((1, len(ids)), dtype=torch.long), as_row(labels), as_row(pos))


def epoch_batches(n: int, batch_size: int, *, rank: int, world_size: int, seed: int, epoch: int,
                  shuffle: bool = True, drop_last: bool = False) -> list[list[int]]:
    """This rank's micro-batches of example indices for one epoch.

    The order depends only on (seed, epoch), so a resumed run sees the same batches. Like
    DistributedSampler, indices wrap around so every rank gets the same number of batches.
    """
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    per_rank = -(-n // world_size)
    if drop_last:
        per_rank = n // world_size
    total = per_rank * world_size
    order = np.concatenate([order, order[: total - n]]) if total > n else order[:total]
    mine = order[rank::world_size].tolist()
    batches = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


class BatchStream:
    """Endless micro-batches of `examples` (e.g. step 3's pretraining text): each pass is this rank's
    share of a new seeded permutation, and the position is state, so ranks train on different
    batches and a resumed run continues with the next batch, not the first."""

    def __init__(self, examples: list[Example], batch_size: int, pad_id: int, *, rank: int, world_size: int,
                 seed: int):
        self.examples, self.batch_size, self.pad_id = examples, batch_size, pad_id
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epoch, self.index = 0, 0
        self._order: tuple[int, list[list[int]]] | None = None

    def _batches(self) -> list[list[int]]:
        if self._order is None or self._order[0] != self.epoch:
            self._order = (self.epoch, epoch_batches(len(self.examples), self.batch_size, rank=self.rank,
                                                     world_size=self.world_size, seed=self.seed, epoch=self.epoch))
        return self._order[1]

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> LMBatch:
        if self.index >= len(self._batches()):
            self.epoch, self.index = self.epoch + 1, 0
        batch = self._batches()[self.index]
        self.index += 1
        return collate_lm([self.examples[i] for i in batch], self.pad_id)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = state["epoch"], state["index"]
