"""An output folder belongs to one run: a fresh run does not write over another run's model,
metrics or checkpoints unless told to (`--overwrite_output_dir`, whose old checkpoints then go
too), and a lock file (`.lock`: host and pid) refuses a second live run in the same folder."""
from __future__ import annotations

import atexit
import json
import os
import socket
from pathlib import Path

from . import distributed as dist
from .errors import ConfigError
from .writing import remove

LOCK = ".lock"
# What a run leaves at the top of its folder and --overwrite_output_dir removes. The exported model
# stays until the new run's export replaces it whole: the new run may be loading from it.
RUN_FILES = ("checkpoints", "metrics.jsonl", "training_curves.png", "tensorboard")


def claim(output_dir: str, *, resume: bool, overwrite: bool) -> None:
    """Take `output_dir` for this run (rank 0 decides, every rank raises the same `ConfigError`)."""
    error = None
    if dist.is_main():
        try:
            _claim(Path(output_dir), resume=resume, overwrite=overwrite)
        except ConfigError as e:
            error = str(e)
    error = dist.all_gather_object(error)[0]
    if error:
        raise ConfigError(error)


def _claim(out: Path, *, resume: bool, overwrite: bool) -> None:
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    _lock(out, created)
    held = another_run(out)
    if not held or resume:
        return
    if not overwrite:
        _unlock(out, created)
        raise ConfigError(f"--output_dir {out} holds another run ({', '.join(held)}); continue it with --resume, "
                          f"or replace it with --overwrite_output_dir")
    gone = [name for name in RUN_FILES if (out / name).exists()]
    for name in gone:
        remove(out / name)
    if gone:
        dist.print_rank0(f"[output] --overwrite_output_dir: removed the previous run's {', '.join(gone)} from {out}")


def another_run(out: Path) -> list[str]:
    """What in `out` another run left: its checkpoints, metrics, picture, exported models."""
    held = [name for name in RUN_FILES if (out / name).exists()]
    if "checkpoints" in held and not any((out / "checkpoints").iterdir()):
        held.remove("checkpoints")
    models = [p.parent for p in sorted([out / "config.json", *out.glob("*/config.json")]) if p.is_file()]
    held += ["a model" if m == out else f"a model in {m.name}/" for m in models]
    return held


# -- the lock --------------------------------------------------------------------------------------
def _lock(out: Path, created: bool) -> None:
    """Create out/.lock (host, pid) or refuse: a lock left by a dead process on this host (or by this
    very process, a run before this one in it) is taken over."""
    path, me = out / LOCK, {"host": socket.gethostname(), "pid": os.getpid()}
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder is not None and holder.get("host") == me["host"] and holder.get("pid") == me["pid"]:
                path.unlink()
                continue
            if holder is None or (holder.get("host") == me["host"] and not _alive(holder.get("pid"))):
                who = f"pid {holder['pid']}" if holder else "a process that never wrote its pid"
                dist.print_rank0(f"[output] {path} was left by {who} on {me['host']}, which is gone; taking it over")
                path.unlink(missing_ok=True)
                continue
            raise ConfigError(f"--output_dir {out} is in use by another run (pid {holder.get('pid')} on "
                              f"{holder.get('host')}, see {path}); wait for it, or delete the lock if that run is dead")
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    atexit.register(_unlock, out, created)


def _holder(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text())
        return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None
    except (OSError, ValueError):
        return None


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return True
    return True


def _unlock(out: Path, created: bool) -> None:
    """Remove out/.lock if this process holds it; a folder this run created and left empty goes too."""
    holder = _holder(out / LOCK)
    if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        (out / LOCK).unlink(missing_ok=True)
    if created and out.is_dir() and not any(out.iterdir()):
        out.rmdir()
