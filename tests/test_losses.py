import math

import pytest
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


# -- reward model ---------------------------------------------------------------------------------
from utils.losses import (centering_penalty, divergence_pairwise_loss, dpo_loss, ipo_loss, orpo_loss,  # noqa: E402
                          pairwise_loss, score_mse, sequence_logprobs, simpo_loss)


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_pairwise_and_mse_by_hand():
    loss = pairwise_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]))
    assert loss.tolist() == pytest.approx([math.log1p(math.exp(-1.0)), math.log(2)], abs=1e-6)
    assert score_mse(torch.tensor([3.0, 0.5]), torch.tensor([1.0, 0.5])).tolist() == [4.0, 0.0]


def test_pairwise_margin_and_centering_by_hand():
    # margins 1 and -1 shift the differences 1 and 0 to 0 and 1
    loss = pairwise_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]), torch.tensor([1.0, -1.0]))
    assert loss.tolist() == pytest.approx([math.log(2), math.log1p(math.exp(-1.0))], abs=1e-6)
    assert centering_penalty(torch.tensor([1.0, -2.0]), torch.tensor([0.5, 2.0])).tolist() == [2.25, 0.0]


def test_divergence_pairwise_loss_by_hand():
    # Sequences agree on positions 0-1, differ from 2; chosen has 4 real tokens, rejected 3,
    # so the span is positions 2 and 3: mean(-log s(1 - 0), -log s(2 - 9)).
    chosen_ids, rejected_ids = torch.tensor([[1, 5, 6, 7]]), torch.tensor([[1, 5, 8, 0]])
    cv, rv = torch.tensor([[0.0, 0.0, 1.0, 2.0]]), torch.tensor([[0.0, 0.0, 0.0, 9.0]])
    got = divergence_pairwise_loss(cv, rv, chosen_ids, rejected_ids, torch.tensor([4]), torch.tensor([3]))
    want = (-log_sigmoid(1.0) - log_sigmoid(-7.0)) / 2
    assert got.item() == pytest.approx(want, abs=1e-6)
    # a margin of 0.5 is taken off every position's difference
    got = divergence_pairwise_loss(cv, rv, chosen_ids, rejected_ids, torch.tensor([4]), torch.tensor([3]),
                                   torch.tensor([0.5]))
    assert got.item() == pytest.approx((-log_sigmoid(0.5) - log_sigmoid(-7.5)) / 2, abs=1e-6)


# -- DPO family -------------------------------------------------------------------------------------
def test_dpo_is_ln2_when_policy_equals_reference():
    x, y = torch.tensor([-3.0, -7.5]), torch.tensor([-4.0, -1.0])
    assert dpo_loss(x, y, x, y, beta=0.1).tolist() == pytest.approx([math.log(2)] * 2, abs=1e-6)


def test_dpo_label_smoothing_and_ipo_by_hand():
    # h = (-1 - -2) - (-3 - -2) = 2; beta 0.5 -> beta*h = 1.
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-1.0, -3.0, -2.0, -2.0))
    assert dpo_loss(pc, pr, rc, rr, 0.5).item() == pytest.approx(-log_sigmoid(1.0), abs=1e-6)
    cdpo = dpo_loss(pc, pr, rc, rr, 0.5, label_smoothing=0.1).item()
    assert cdpo == pytest.approx(-0.9 * log_sigmoid(1.0) - 0.1 * log_sigmoid(-1.0), abs=1e-6)
    assert ipo_loss(pc, pr, rc, rr, 0.5).item() == pytest.approx((2 - 1 / (2 * 0.5)) ** 2, abs=1e-6)


def test_simpo_and_orpo_by_hand():
    # SimPO: beta 2, gamma 0.5, averages -0.5 and -1.5: -log s(2 * 1 - 0.5).
    assert simpo_loss(torch.tensor([-0.5]), torch.tensor([-1.5]), 2.0, 0.5).item() == \
        pytest.approx(-log_sigmoid(1.5), abs=1e-6)
    # ORPO: p_w = 1/2 -> log odds 0; p_l = 1/4 -> log odds -ln 3; ratio ln 3.
    total, ratio = orpo_loss(torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)]), lam=0.2)
    assert ratio.item() == pytest.approx(math.log(3), abs=1e-5)
    assert total.item() == pytest.approx(math.log(2) + 0.2 * math.log(4 / 3), abs=1e-5)


def test_sequence_logprobs_sum_and_average():
    # V=2 uniform logits: every labelled token has log-prob ln(1/2).
    logits = torch.zeros(1, 4, 2)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 1, 0]])
    assert sequence_logprobs(logits, labels).item() == pytest.approx(2 * math.log(0.5), abs=1e-6)
    assert sequence_logprobs(logits, labels, average=True).item() == pytest.approx(math.log(0.5), abs=1e-6)
