"""The parts of the GPU path whose logic runs on a CPU: the hybrid engine's guard and the metrics
an fp16 / GPU run adds (--torch_compile: tests/test_sft_train.py)."""
from __future__ import annotations

import types

import torch



def test_hybrid_engine_stays_off_for_cache_contract_layers():
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from training.step3_rlhf.rlhf_engine import hybrid_engine_unsupported

    llama = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, vocab_size=50))
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50))
    assert "LlamaDecoderLayer" in hybrid_engine_unsupported(llama)
    assert "GPT2Block" in hybrid_engine_unsupported(gpt2)
    assert hybrid_engine_unsupported(torch.nn.Linear(2, 2)) == "DeepSpeed has no inference kernels for Linear"


def test_engine_stats_reports_fp16_skips_and_scale_only_for_fp16_engines():
    from utils.engines import engine_stats

    def engine(fp16, skipped=0, scale=None):
        opt = types.SimpleNamespace(cur_scale=scale) if scale is not None else object()
        return types.SimpleNamespace(fp16_enabled=lambda: fp16, skipped_steps=skipped, optimizer=opt)

    stats = engine_stats({"actor": engine(True, 3, 32768.0), "critic": engine(True, 1), "ref": engine(False, 9),
                          "none": None})
    # on a CPU there is no device memory to report
    assert stats == {"actor/skipped_steps": 3.0, "actor/loss_scale": 32768.0, "critic/skipped_steps": 1.0}
