"""Generation from a training engine: ZeRO-3 weights gathered once per call (--ds3_gather_for_generation)
and transformers' static KV cache (--cache_implementation) decode the same tokens as the plain path."""
from __future__ import annotations

import pytest
import torch

from tests.conftest import in_fresh_process


def _engine(folder: str, stage: int):
    import deepspeed
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder)
    ds = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
          "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 0},
          "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}}}
    engine, *_ = deepspeed.initialize(model=model, config=ds, model_parameters=model.parameters())
    return engine


def _greedy(model, ids, mask, **kw):
    return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, min_new_tokens=10,
                          do_sample=False, pad_token_id=0, use_cache=True, **kw)


def zero3_generation(folder: str) -> dict:
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus
    from transformers import AutoModelForCausalLM

    from utils import distributed as dist
    from utils.generation import generation_model

    dist.set_env_defaults()
    dist.init_distributed()
    ids = torch.tensor([[0, 0, 5, 9, 14, 3], [7, 8, 9, 10, 11, 12]])
    mask = (torch.arange(6) >= torch.tensor([[2], [0]])).long()
    stock = _greedy(AutoModelForCausalLM.from_pretrained(folder).eval(), ids, mask).tolist()
    out, after = {}, {}
    for gather in (True, False):
        engine = _engine(folder, 3)
        offload = engine.optimizer.parameter_offload
        hooks = len(offload.forward_hooks), len(offload.backward_hooks)
        engine.eval()
        with torch.no_grad(), generation_model(engine, gather=gather, world_size=2) as (model, synced):
            inside = {"synced": synced, "hooks": len(offload.forward_hooks),
                      "available": all(p.ds_status == ZeroParamStatus.AVAILABLE for p in model.parameters())}
            tokens = _greedy(model, ids, mask).tolist()
            static = _greedy(model, ids, mask, cache_implementation="static").tolist()
        out[gather] = {"inside": inside, "tokens": tokens, "static": static,
                       "partitioned": all(p.ds_status == ZeroParamStatus.NOT_AVAILABLE for p in model.parameters()),
                       "hooks_back": (len(offload.forward_hooks), len(offload.backward_hooks)) == hooks}
        # a training step after generating: ZeRO-3 gathers, reduces and re-partitions through the hooks
        engine.train()
        seq = torch.cat([ids[1:], ids[1:]])
        loss = engine(input_ids=seq, labels=seq).loss
        engine.backward(loss)
        engine.step()
        from deepspeed.runtime.zero.partition_parameters import GatheredParameters

        with GatheredParameters(list(engine.module.parameters())):
            after[gather] = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
    dist.teardown()
    return {"stock": stock, "out": out, "same_step": all(torch.equal(after[True][n], after[False][n])
                                                         for n in after[True])}


def test_zero3_gathered_generation_decodes_as_stock_and_training_goes_on(tiny_dir):
    r = in_fresh_process(zero3_generation, str(tiny_dir))
    gathered, partitioned = r["out"][True], r["out"][False]
    # gathered: full weights, ZeRO's hooks lifted, ranks decode independently
    assert gathered["inside"] == {"synced": False, "hooks": 0, "available": True}
    # not gathered: every decoding step's forward gathers (collective), so ranks stay in step
    assert partitioned["inside"] == {"synced": True, "hooks": partitioned["inside"]["hooks"], "available": False}
    assert partitioned["inside"]["hooks"] > 0
    for side in (gathered, partitioned):
        assert side["tokens"] == r["stock"] and side["static"] == r["stock"]
        assert side["partitioned"] and side["hooks_back"]
    assert r["same_step"]   # the step after a gathered generation equals the one after a partitioned one


@pytest.mark.parametrize("family", ["gpt2", "qwen2", "gpt_neo"])
def test_static_cache_decodes_as_the_dynamic_cache(family_dirs, family):
    from transformers import AutoModelForCausalLM

    from utils.generation import generation_model

    model = AutoModelForCausalLM.from_pretrained(family_dirs[family]).eval()
    ids = torch.tensor([[3, 3, 3, 11, 12, 13, 14], [20, 21, 22, 23, 24, 25, 26]])
    mask = (torch.arange(7) >= torch.tensor([[3], [0]])).long()
    torch.manual_seed(1)
    with generation_model(model) as (gen, synced):   # a plain module: itself, no lockstep
        assert gen is model and synced is False
        dynamic = _greedy(gen, ids, mask)
        static = _greedy(gen, ids, mask, cache_implementation="static")
        again = _greedy(gen, ids, mask, cache_implementation="static")   # the cache is reused
    assert torch.equal(static, dynamic) and torch.equal(again, dynamic)
