"""Twelve causal-LM families, each with its tokenizer's special-token habits (no pad token, pad ==
EOS, a prepended BOS or none): every model call works (falcon's classifier takes no position ids),
the value head is read as stock transformers reads it, and dropout switched off makes train-mode
forwards equal eval-mode ones."""
from __future__ import annotations

import pytest
import torch

from utils.tiny_families import FAMILIES

PROMPT = "User: Repeat after me: fox red owl\nAssistant: "


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory) -> dict:
    from examples.demo.build_model import corpus
    from utils.tiny_families import build_family

    root = tmp_path_factory.mktemp("families")
    texts = corpus()[:1500]
    return {f: build_family(f, texts, root / f, hidden_size=32, layers=2, heads=4) for f in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_value_head_reads_what_stock_pools(family, family_dirs):
    """token_values runs the model's own forward (only the arguments it declares) and its value at
    the last token of an unpadded text is the stock sequence-classification logit, exactly."""
    from utils.models import load_reward_model, load_tokenizer, token_values

    folder = family_dirs[family]
    tok = load_tokenizer(str(folder))
    model = load_reward_model(str(folder), tok, disable_dropout_=True).eval()
    for text in (PROMPT + "fox red owl", PROMPT + "owl"):
        ids = torch.tensor([tok(text)["input_ids"]])
        with torch.no_grad():
            values = token_values(model, ids, torch.ones_like(ids))
            stock = model(input_ids=ids).logits[0, 0]
        assert values.shape == ids.shape and torch.equal(values[0, -1], stock)


@pytest.mark.parametrize("family", FAMILIES)
def test_dropout_off_makes_training_forwards_deterministic(family, family_dirs):
    """What makes PPO's first ratio exactly 1: with dropout off (step 3's default) the update's
    train-mode forward equals the eval-mode forward that sampled the old log-probs."""
    from utils.models import load_causal_lm, load_tokenizer, model_inputs

    folder = family_dirs[family]
    tok = load_tokenizer(str(folder))
    ids = torch.tensor([tok(PROMPT + "fox red owl")["input_ids"]])
    mask = torch.ones_like(ids)
    model = load_causal_lm(str(folder), tok, disable_dropout_=True)
    with torch.no_grad():
        train = model.train()(**model_inputs(model, ids, mask)).logits
        evaluated = model.eval()(**model_inputs(model, ids, mask)).logits
    assert torch.equal(train, evaluated)
