"""One process builds and maps nothing that only several ranks need."""
from __future__ import annotations

import os

from tests.conftest import in_fresh_process


def one_process_group(extensions_dir: str) -> tuple:
    os.environ["TORCH_EXTENSIONS_DIR"] = extensions_dir
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(k, None)
    import torch
    import torch.distributed
    from deepspeed import comm

    from utils.distributed import init_distributed, teardown

    init_distributed()
    x = torch.ones(3)
    torch.distributed.all_reduce(x)
    shm = comm.comm.cdb.shm_comm_op
    teardown()
    return x.tolist(), shm


def test_one_process_skips_the_shared_memory_allreduce(tmp_path):
    reduced, shm = in_fresh_process(one_process_group, str(tmp_path / "ext"))
    assert reduced == [1.0, 1.0, 1.0] and shm is None
    assert not (tmp_path / "ext").exists()   # nothing compiled (about a minute on a machine's first run)
