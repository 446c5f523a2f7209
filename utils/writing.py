"""How a run writes what it leaves (checkpoints, the exported model): into a temporary folder first,
durably (fsync) and with the umask's file mode, and a failure (a full disk, no permission) as one
line naming the folder and the cause, with the partial files removed."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from safetensors import SafetensorError

from . import distributed as dist
from .errors import WriteFailed

# torch.save reports a full disk as a RuntimeError ("unexpected pos ...", "basic_ios::clear") and
# safetensors as its own error, not as an OSError
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def seal_files(folder: Path) -> None:
    """fsync every file under `folder`, then the folders, and give each the mode the umask asks for:
    libraries write some files through mkstemp (mode 0600), which teammates on a shared cluster
    cannot read."""
    mask = umask()
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            os.chmod(path, 0o666 & ~mask)
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(root, 0o777 & ~mask)
        fsync_dir(Path(root))


def fsync_dir(folder: Path) -> None:
    """Make the names in `folder` (a rename, a new file) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def cause(e: BaseException, folder: Path) -> str:
    """What went wrong writing into `folder`, in a few words: the OS's reason, also where a library
    wraps it in its own error, or a full disk where the writer did not say so."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = str(e).strip()
    for errno_name, reason in (("28", "No space left on device"), ("13", "Permission denied")):
        if reason in text or f"os error {errno_name}" in text:
            return reason
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    st = os.statvfs(probe)
    if st.f_bavail * st.f_frsize < (1 << 20):
        return "No space left on device"
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def remove(path: Path) -> None:
    """Delete a file, a link or a folder, if there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_together(what: str, tmp: Path, write: Callable[[], None], *, every_rank: bool) -> None:
    """Run `write` (on every rank, or rank 0 only); a write error on any rank removes the temporary
    folder `tmp` and raises `WriteFailed` on every rank, naming `what` and the cause. Collective."""
    error = None
    if every_rank or dist.is_main():
        try:
            write()
        except WRITE_ERRORS as e:
            error = cause(e, tmp)
    errors = [e for e in dist.all_gather_object(error) if e]
    if errors:
        if dist.is_main():
            shutil.rmtree(tmp, ignore_errors=True)
        raise WriteFailed(f"{what}: {errors[0]}; its partial files were removed")
