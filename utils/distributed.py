"""Process-group setup shared by every step: one place for env defaults, init and teardown.

DeepSpeed picks the accelerator itself (CPU + gloo here, CUDA + nccl on GPUs). A single
process started without a launcher still needs the rendezvous variables, or DeepSpeed
falls back to MPI discovery; `init_distributed` fills them in.
"""
from __future__ import annotations

import os
import re
import socket
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def set_env_defaults() -> None:
    """Environment every entry point wants before torch/deepspeed/datasets are imported."""
    cache = REPO_ROOT / ".cache"
    # The op cache is keyed by ninja's log: a different ninja on PATH (system vs venv)
    # rebuilds every op (~30 s) at each start, so always use the interpreter's own.
    bindir = os.path.dirname(sys.executable)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != bindir:
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    # DeepSpeed compiles C++ ops on first use (~30-45 s each); keep them across runs.
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(cache / "torch_extensions"))
    os.environ.setdefault("HF_DATASETS_CACHE", str(cache / "hf_datasets"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        os.environ["TORCH_CUDA_ARCH_LIST"] = deepspeed_arch_list(os.environ["TORCH_CUDA_ARCH_LIST"])
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def deepspeed_arch_list(value: str) -> str:
    """TORCH_CUDA_ARCH_LIST in the form DeepSpeed's JIT op builder parses: it reads every entry as
    numbers ("9.0", "8.6+PTX") and crashes on the architecture-specific forms torch also accepts
    ("9.0a", "10.0f"), e.g. when --enable_hybrid_engine builds its inference kernels. Those become
    their plain architecture (DeepSpeed's kernels use no sm_90a-only instruction); the rest stays."""
    out: list[str] = []
    for entry in value.replace(" ", ";").split(";"):
        m = re.fullmatch(r"(\d+\.\d+)[a-z]?(\+PTX)?", entry.strip())
        entry = f"{m[1]}{m[2] or ''}" if m else entry.strip()
        if entry and entry not in out:
            out.append(entry)
    return ";".join(out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> None:
    """Initialise torch.distributed through DeepSpeed (idempotent)."""
    import deepspeed
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return
    if "RANK" not in os.environ:
        os.environ.update(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())),
            RANK="0",
            WORLD_SIZE="1",
            LOCAL_RANK="0",
        )
    if os.environ.get("WORLD_SIZE") == "1":
        _skip_shared_memory_allreduce()
    deepspeed.init_distributed(verbose=False)
    from deepspeed.accelerator import get_accelerator

    acc = get_accelerator()
    if acc.device_name() != "cpu":
        acc.set_device(local_rank())


def _skip_shared_memory_allreduce() -> None:
    """One process never reduces across ranks, yet DeepSpeed's CPU backend loads its shared-memory
    allreduce op in every process group: compiled on a machine's first run (about a minute) and
    a 69 MB /dev/shm buffer after that. Marking the op unavailable is DeepSpeed's own switch."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:
        deepspeed.ops.__compatible_ops__[builder.NAME] = False


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def print_rank0(*args, **kwargs) -> None:
    if is_main():
        print(*args, **kwargs, flush=True)


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def _all_reduce(value: float, op: str) -> float:
    import torch
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device())
    dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
    return float(t.item())


def all_reduce_sum(value: float) -> float:
    """Sum a Python number over ranks (returns it unchanged in one process)."""
    return _all_reduce(value, "SUM")


def all_reduce_max(value: float) -> float:
    """Max of a Python number over ranks (returns it unchanged in one process)."""
    return _all_reduce(value, "MAX")


def all_gather_object(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...]; [obj] in one process."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def share(n: int, cap: int | None = None) -> tuple[list[int], int]:
    """This rank's contiguous share of n items, and the share's full length every rank works
    through: ceil(n / world), at most `cap`. The last ranks' shares may hold fewer (or no) items;
    they still make as many forwards (on a stand-in the caller picks, its result discarded),
    since ZeRO-3's forwards are collective. Returns (indices, per-rank length)."""
    per_rank = -(-n // world_size())
    if cap is not None:
        per_rank = min(per_rank, cap)
    return list(range(rank() * per_rank, min(n, (rank() + 1) * per_rank))), per_rank


def device():
    import torch
    from deepspeed.accelerator import get_accelerator

    acc = get_accelerator()
    if acc.device_name() == "cpu":
        return torch.device("cpu")
    return torch.device(acc.device_name(), local_rank())


def on_gpu() -> bool:
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().device_name() != "cpu"


def teardown() -> None:
    """Destroy the process group; without it ~1 multi-process CPU run in 3 crashes at exit.
    Through deepspeed.comm, which also drops DeepSpeed's cached groups: a later step run in the
    same single-process interpreter (a notebook, a test) then builds its engines on the new
    process group. Several steps in one multi-process launch are not supported (DPO's start
    hangs after two steps there)."""
    import deepspeed.comm
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        _unlink_shm_buffer()
        deepspeed.comm.destroy_process_group()


def _unlink_shm_buffer() -> None:
    """DeepSpeed's CPU shared-memory allreduce creates /dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_
    <port>_<rank> (~69 MB per rank) and never unlinks it, so every CPU run leaked it until /dev/shm
    filled up. After the final barrier no rank opens a peer's buffer again; mappings stay valid."""
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not addr or not port:
        return
    path = f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_{rank()}"
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
