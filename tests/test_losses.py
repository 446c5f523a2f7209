import math

import torch

from utils.losses import IGNORE_INDEX, causal_lm_loss, token_logprobs


def test_causal_lm_loss_by_hand():
    # V=2, T=3. Position 0 predicts labels[1]=1 from logits [0, 0]: -ln(1/2) = ln 2.
    # Position 1 predicts labels[2]=0 from logits [ln 3, 0]: p(0) = 3/4, loss ln(4/3).
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]]])
    labels = torch.tensor([[7, 1, 0]])  # labels[0] is never predicted
    loss_sum, n = causal_lm_loss(logits, labels)
    assert n.item() == 2
    assert abs(loss_sum.item() - (math.log(2) + math.log(4 / 3))) < 1e-6


def test_causal_lm_loss_ignores_masked_tokens():
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 1, IGNORE_INDEX]])
    loss_sum, n = causal_lm_loss(logits, labels)
    assert n.item() == 1
    assert abs(loss_sum.item() - math.log(2)) < 1e-6


def test_token_logprobs_matches_loss():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.randint(0, 7, (2, 5))
    labels[0, :2] = IGNORE_INDEX
    lp = token_logprobs(logits, labels)
    assert lp.shape == (2, 4)
    assert lp[0, 0].item() == 0.0  # labels[0, 1] is masked
    loss_sum, _ = causal_lm_loss(logits, labels)
    assert abs(-lp.sum().item() - loss_sum.item()) < 1e-5
