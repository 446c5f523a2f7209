"""utils/masks.py builds exactly the mask transformers' vmap builds (or None where it returns
None), and models give bit-identical logits and generations with it."""
from __future__ import annotations

import random

import pytest
import torch
from transformers import masking_utils as mu

from utils.masks import causal_sdpa_mask, install


def cases():
    rng = random.Random(0)
    for _ in range(300):
        b, q = rng.randint(1, 4), rng.randint(1, 9)
        offset = rng.choice([0, 0, rng.randint(1, 6)])
        kv = q + offset if rng.random() < 0.8 else q + offset + rng.randint(1, 3)
        cache_position = torch.arange(offset, offset + q)
        width = kv + offset - rng.choice([0, 0, 1, 2])  # transformers pads a narrower 2-D mask
        kind = rng.choice(["none", "ones", "left", "right", "holes"])
        if kind == "none":
            mask = None
        else:
            mask = torch.ones(b, max(width, 1), dtype=torch.long)
            for row in mask:
                n = rng.randint(0, row.numel() - 1)
                if kind == "left":
                    row[:n] = 0
                elif kind == "right" and n:
                    row[-n:] = 0
                elif kind == "holes":
                    row[torch.rand(row.numel()) < 0.3] = 0
            mask = mask.bool()  # create_causal_mask hands the builder a boolean 2-D mask
        yield b, cache_position, kv, offset, mask, rng.choice([True, False])


@pytest.mark.parametrize("case", list(cases()))
def test_same_mask_as_transformers(case):
    b, cache_position, kv, offset, mask, skip = case
    want = mu.sdpa_mask_recent_torch(b, cache_position, kv, offset, attention_mask=mask, allow_is_causal_skip=skip)
    got = causal_sdpa_mask(b, cache_position, kv, offset, attention_mask=mask, allow_is_causal_skip=skip)
    if want is None:
        assert got is None
    else:
        assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want)


def test_other_mask_kinds_go_to_transformers():
    window = mu.sliding_window_causal_mask_function(3)
    mask = torch.tensor([[0, 1, 1, 1, 1, 1]])
    want = mu.sdpa_mask_recent_torch(1, torch.arange(6), 6, mask_function=window, attention_mask=mask)
    got = causal_sdpa_mask(1, torch.arange(6), 6, mask_function=window, attention_mask=mask)
    assert torch.equal(got, want) and not torch.equal(got, causal_sdpa_mask(1, torch.arange(6), 6, attention_mask=mask))


def test_models_score_and_generate_the_same(family_dirs):
    from transformers import AutoModelForCausalLM

    from utils.generation import left_pad
    from utils.models import lm_logits

    assert install()  # utils.models installs it at import; a second call changes nothing
    rows = [[5, 6, 7, 8, 9, 10], [11, 12, 13], [14, 15, 16, 17]]
    for family in ("llama", "qwen2", "gpt2", "gpt_neox", "opt"):
        model = AutoModelForCausalLM.from_pretrained(family_dirs[family]).eval()
        pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
        ids, mask = left_pad(rows, pad)
        out = {}
        for fast in (True, False):
            mu.AttentionMaskInterface.register("sdpa", causal_sdpa_mask if fast else mu.sdpa_mask_recent_torch)
            with torch.no_grad():
                logits = lm_logits(model, ids, mask)
                gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                                     pad_token_id=pad)
            out[fast] = logits, gen
        install()
        assert torch.equal(out[True][0], out[False][0]), family
        assert torch.equal(out[True][1], out[False][1]), family
