"""Resumable checkpoints: every DeepSpeed engine's weights, optimizer and scheduler, and the loop's
client state, under <output_dir>/checkpoints/step<N>/<engine>/.

A checkpoint is written into a hidden `.tmp-step<N>` and sealed by `manifest.json` (every file's
name, size and sha256), written last and atomically; only then is it renamed into place. Resume
trusts a checkpoint only when its files match its manifest, newest first (a checkpoints folder
written before manifests, with no `.sealed` mark, is taken as it is), and loads them as plain
data (`torch.load(weights_only=True)`): a file that would run code is refused. Older checkpoints
are deleted only after a newer one has verified.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import torch

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:   # NumPy 1
    from numpy.core.multiarray import _reconstruct

from . import distributed as dist
from .errors import CheckpointError
from .writing import fsync_dir, seal_files, umask, write_together

LATEST = "latest"          # DeepSpeed's pointer, kept for its tools (zero_to_fp32.py); resume does not need it
MANIFEST = "manifest.json"
SKIPPED = ".skipped-"      # prefix of a checkpoint resume could not trust, kept aside for a look
SEALED = ".sealed"         # in a checkpoints folder whose checkpoints all carry manifests
_TAG = re.compile(r"step(\d+)")


def _plain_types() -> list:
    """What a checkpoint may hold beyond torch's own plain-data allow-list: DeepSpeed's loss scaler
    (also in fp32 ZeRO states), ZeRO stage enum and fragment addresses, and NumPy's RNG-state array
    in checkpoints written before the RNG state became plain lists. Each is rebuilt from plain
    fields; nothing of these runs code."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address,
            np.ndarray, np.dtype, np.dtypes.UInt32DType, _reconstruct]


def step_of(tag: str) -> int:
    return int(_TAG.fullmatch(tag).group(1))


def checkpoint_tags(ckpt_dir: Path) -> list[str]:
    """The sealed-or-not checkpoints `step<N>` in `ckpt_dir`, newest (largest N) first."""
    if not ckpt_dir.is_dir():
        return []
    return sorted((p.name for p in ckpt_dir.iterdir() if p.is_dir() and _TAG.fullmatch(p.name)),
                  key=step_of, reverse=True)


# -- the manifest ----------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def seal(folder: Path) -> None:
    """Write `folder`/manifest.json, durably and last: the files' names, sizes and sha256, and how
    many processes wrote them."""
    seal_files(folder)
    manifest = {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
                for p in _files(folder)}
    tmp = folder / f".{MANIFEST}.tmp"
    with open(tmp, "w") as f:
        json.dump({"processes": dist.world_size(), "files": manifest}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~umask())
    os.replace(tmp, folder / MANIFEST)
    fsync_dir(folder)


def verify(folder: Path, *, hashes: bool = True) -> str | None:
    """Why `folder` cannot be trusted, or None when every file its manifest names is there with
    its size (and, with `hashes`, its sha256)."""
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return "no manifest.json (cut off before it was sealed, or written before manifests)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"manifest.json unreadable ({type(e).__name__})"
    for name, want in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != want["bytes"]:
            return f"{name} is {size} bytes, its manifest says {want['bytes']}"
        if hashes and _sha256(path) != want["sha256"]:
            return f"{name} differs from its manifest's sha256"
    return None


def written_by(folder: Path) -> int | None:
    """How many processes wrote the checkpoint `folder` (None: not recorded, an older checkpoint)."""
    try:
        return json.loads((folder / MANIFEST).read_text()).get("processes")
    except (OSError, ValueError):
        return None


# -- writing ---------------------------------------------------------------------------------------
def save_checkpoint(engines: dict, ckpt_dir: str | Path, tag: str, client_state: dict, keep: int) -> None:
    """Save each DeepSpeed engine under ckpt_dir/<tag>/<name>, seal it, rename it into place, then
    delete the checkpoints beyond the newest `keep`.

    Every rank writes its shards into the hidden temporary tag; rank 0 seals and renames it once
    all ranks finished. A write error (a full disk) on any rank removes the temporary folder and
    raises `WriteFailed` on every rank; the checkpoints already there are untouched.
    """
    ckpt_dir = Path(ckpt_dir)
    tmp, final = ckpt_dir / f".tmp-{tag}", ckpt_dir / tag
    what = f"checkpoint {final}"

    def prepare():
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        (ckpt_dir / SEALED).touch()

    def shards():
        for name, engine in engines.items():
            engine.save_checkpoint(str(tmp), tag=name, client_state=client_state, save_latest=False)

    def commit():
        seal(tmp)
        if final.exists():   # the same step, written again after a resume from an older checkpoint
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer = ckpt_dir / f".{LATEST}.tmp"
        pointer.write_text(tag)
        os.replace(pointer, ckpt_dir / LATEST)
        fsync_dir(ckpt_dir)
        reason = verify(final, hashes=False)
        if reason:
            raise OSError(0, f"did not verify after writing: {reason}")
        for old in checkpoint_tags(ckpt_dir)[keep:]:
            shutil.rmtree(ckpt_dir / old)

    write_together(what, tmp, prepare, every_rank=False)
    write_together(what, tmp, shards, every_rank=True)
    write_together(what, tmp, commit, every_rank=False)
    dist.print_rank0(f"[checkpoint] saved {final}")


# -- resuming --------------------------------------------------------------------------------------
def resume_point(ckpt_dir: str | Path) -> str | None:
    """The newest checkpoint in `ckpt_dir` that verifies (None: there is none at all). Rank 0 checks
    and every rank gets its answer. Checkpoints that do not verify are named with the reason and
    moved aside (`.skipped-step<N>`), so a later rotation cannot count them; leftover temporary
    folders of an interrupted write are removed. Raises `CheckpointError` when checkpoints exist
    but none verifies: a run must never silently start again from scratch."""
    ckpt_dir = Path(ckpt_dir)
    tag, error = dist.all_gather_object(_choose(ckpt_dir) if dist.is_main() else None)[0]
    if error:
        raise CheckpointError(error)
    return tag


def _choose(ckpt_dir: Path) -> tuple[str | None, str | None]:
    """(the tag to resume from, or an error line), on rank 0."""
    if ckpt_dir.is_dir():
        for p in ckpt_dir.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True)
    skipped = []
    for tag in checkpoint_tags(ckpt_dir):
        legacy = not (ckpt_dir / SEALED).exists()
        reason = None if legacy else verify(ckpt_dir / tag)
        if legacy:
            dist.print_rank0(f"[resume] {ckpt_dir / tag} was written before checkpoints were sealed: its files "
                             f"are taken as they are")
        if reason is None:
            for bad, why in skipped:
                aside = ckpt_dir / f"{SKIPPED}{bad}"
                if aside.exists():
                    shutil.rmtree(aside)
                os.replace(ckpt_dir / bad, aside)
                dist.print_rank0(f"[resume] skipped {ckpt_dir / bad}: {why}; moved to {aside}")
            return tag, None
        skipped.append((tag, reason))
    if skipped:
        return None, (f"--resume: no checkpoint in {ckpt_dir} verifies (" +
                      "; ".join(f"{t}: {why}" for t, why in skipped) +
                      "); nothing was loaded. Start afresh with --overwrite_output_dir, or restore a checkpoint")
    return None, None


def _plain_load(path: str, map_location=None):
    """DeepSpeed's checkpoint read as plain data: tensors, numbers, strings and containers only."""
    try:
        with torch.serialization.safe_globals(_plain_types()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = f"`{found.group(1)}`" if found else "an object that is not plain data"
        raise CheckpointError(f"{path} holds {what}, which loading would run; refused, nothing of it was "
                              f"run (a checkpoint holds plain data only)") from None


def load_checkpoint(engines: dict, ckpt_dir: str | Path, tag: str) -> dict:
    """Restore every engine (weights, optimizer, scheduler) from ckpt_dir/<tag> as plain data and
    return the client state. A checkpoint written by another number of processes is re-dealt: a
    ZeRO 1-3 engine's partitioned optimizer state goes through DeepSpeed's universal checkpoint
    (`ds_to_universal`, into a temporary folder beside it); ZeRO 0 keeps it whole already."""
    ckpt_dir = Path(ckpt_dir)
    others = written_by(ckpt_dir / tag) not in (None, dist.world_size())
    client = {}
    for name, engine in engines.items():
        engine.checkpoint_engine.load = _plain_load
        folder = ckpt_dir / tag
        if others and engine.zero_optimization_stage() > 0:
            folder = _universal(ckpt_dir, tag, name)
            engine._config.load_universal_checkpoint = True
        try:
            path, client = engine.load_checkpoint(str(folder), tag=name)
        finally:
            engine._config.load_universal_checkpoint = False
        if path is None:
            raise CheckpointError(f"checkpoint {ckpt_dir}/{tag}/{name} could not be loaded")
    if others and dist.is_main():
        shutil.rmtree(ckpt_dir / f".universal-{tag}", ignore_errors=True)
    return client


def _universal(ckpt_dir: Path, tag: str, name: str) -> Path:
    """ckpt_dir/<tag>/<name> converted to DeepSpeed's universal checkpoint on rank 0 (every file read
    as plain data first: the converter itself unpickles); returns the folder to load `name` from."""
    out = ckpt_dir / f".universal-{tag}"
    if dist.is_main():
        from argparse import Namespace

        from deepspeed.checkpoint.ds_to_universal import main as to_universal

        for path in sorted((ckpt_dir / tag / name).glob("*.pt")):
            _plain_load(str(path), map_location="cpu")
        shutil.rmtree(out / name, ignore_errors=True)
        dist.print_rank0(f"[resume] {ckpt_dir / tag / name}: its ZeRO partitions re-dealt through DeepSpeed's "
                         f"universal checkpoint (in {out}, removed after loading)")
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):   # the converter's prints and bars
            to_universal(Namespace(input_folder=str(ckpt_dir / tag / name), output_folder=str(out / name),
                                   num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False, strict=True,
                                   inject_missing_state=True))
    dist.barrier()
    return out
