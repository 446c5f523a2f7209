"""A direct build of transformers' causal-and-padding attention mask for sdpa models.

transformers 4.57 builds the 4-D mask of every forward whose batch holds padding (each
generation step, each teacher-forced pass) by `vmap`-ing a Python mask function over batch,
query and key indices: about 10 ms a call on a CPU, 32% of a PPO round on a tiny model
(scripts/bench/ppo.py under cProfile), whatever the model size. For the plain causal mask the
same boolean tensor is two comparisons. Every other mask kind (sliding window, chunked,
packed sequences, a model's own mask function) still goes to transformers' function.
"""
from __future__ import annotations

import torch

try:
    from transformers import masking_utils as mu

    _ORIGINAL = mu.sdpa_mask_recent_torch
    _PARTS = (mu.causal_mask_function, mu.prepare_padding_mask, mu._ignore_causal_mask_sdpa)
except (ImportError, AttributeError):  # another transformers: leave its masks alone
    _ORIGINAL = None


def causal_sdpa_mask(batch_size: int, cache_position: torch.Tensor, kv_length: int, kv_offset: int = 0,
                     mask_function=None, attention_mask: torch.Tensor | None = None, local_size: int | None = None,
                     allow_is_causal_skip: bool = True, **kwargs) -> torch.Tensor | None:
    """transformers' `sdpa_mask_recent_torch`, the same tensor (or None where sdpa's own is_causal
    serves): [B, 1, Q, K] bool, True where query cache_position[q] may attend key kv_offset + k,
    i.e. key <= query and the key is not padding in the 2-D `attention_mask` [B, >= K + offset]."""
    causal, prepare_padding_mask, ignore_mask = _PARTS
    if mask_function is not None and mask_function is not causal:
        return _ORIGINAL(batch_size, cache_position, kv_length, kv_offset, mask_function, attention_mask,
                         local_size, allow_is_causal_skip, **kwargs)
    padding = prepare_padding_mask(attention_mask, kv_length, kv_offset, _slice=False)
    if allow_is_causal_skip and ignore_mask(padding, cache_position.shape[0], kv_length, kv_offset, local_size):
        return None
    keys = torch.arange(kv_length, device=cache_position.device) + kv_offset
    mask = (keys[None, :] <= cache_position[:, None])[None, None]
    if padding is not None:
        mask = mask & padding[:, keys].bool()[:, None, None, :]
    return mask.expand(batch_size, 1, cache_position.shape[0], kv_length).contiguous()


def install() -> bool:
    """Make `causal_sdpa_mask` the mask builder of every sdpa model in this process (through
    transformers' own registry); False, changing nothing, where transformers differs."""
    if _ORIGINAL is None or mu.AttentionMaskInterface._global_mapping.get("sdpa") is not _ORIGINAL:
        return _ORIGINAL is not None and mu.AttentionMaskInterface._global_mapping.get("sdpa") is causal_sdpa_mask
    mu.AttentionMaskInterface.register("sdpa", causal_sdpa_mask)
    return True
