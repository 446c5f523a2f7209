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


def test_arch_list_is_rewritten_to_what_deepspeeds_op_builder_parses():
    from deepspeed.ops.op_builder.transformer_inference import InferenceBuilder

    from utils.distributed import deepspeed_arch_list

    assert deepspeed_arch_list("9.0a") == "9.0"
    assert deepspeed_arch_list("8.0;9.0a+PTX 10.0f") == "8.0;9.0+PTX;10.0"
    assert deepspeed_arch_list("9.0 9.0a") == "9.0"
    assert deepspeed_arch_list("8.6+PTX") == "8.6+PTX"
    # DeepSpeed's JIT builder takes the rewritten list (and crashes on the original)
    builder = InferenceBuilder()
    builder.jit_mode = True
    old = os.environ.get("TORCH_CUDA_ARCH_LIST")
    try:
        os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0a"
        try:
            builder.compute_capability_args()
            raise AssertionError("DeepSpeed parses 9.0a now: the rewrite may be unnecessary")
        except ValueError:
            pass
        os.environ["TORCH_CUDA_ARCH_LIST"] = deepspeed_arch_list("9.0a")
        builder.compute_capability_args()  # in JIT mode it leaves torch its (parsed) list
        assert os.environ["TORCH_CUDA_ARCH_LIST"] == "9.0+PTX"
    finally:
        if old is None:
            os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = old


def test_shares_are_contiguous_equal_length_and_cover_every_item_once(monkeypatch):
    from utils import distributed as dist

    def shares(n, world, cap=None):
        monkeypatch.setattr(dist, "world_size", lambda: world)
        out = []
        for r in range(world):
            monkeypatch.setattr(dist, "rank", lambda: r)
            out.append(dist.share(n, cap))
        return out

    # 10 items over 4 ranks: shares of ceil(10 / 4) = 3, the last rank holds 1 and works through 3
    assert shares(10, 4) == [([0, 1, 2], 3), ([3, 4, 5], 3), ([6, 7, 8], 3), ([9], 3)]
    # fewer items than ranks: the last ranks hold none and still make one forward
    assert shares(2, 3) == [([0], 1), ([1], 1), ([], 1)]
    # a cap (evaluation's --eval_iters x batch): the ranks share the first world x cap items
    assert shares(10, 2, cap=2) == [([0, 1], 2), ([2, 3], 2)]
    assert shares(0, 2) == [([], 0), ([], 0)]
