"""PPO formulas against brute-force loops and hand-derived values."""
import math

import pytest
import torch

from utils.losses import (adaptive_kl_coef, entropy_from_logits, gae, kl_penalized_rewards, masked_mean,
                          ppo_policy_loss, ppo_value_loss, standardize, whiten)


def brute_force_gae(rewards, values, gamma, lam):
    """A_t = sum_k (gamma*lam)^k delta_{t+k} over one answer (list of floats), V_end = 0."""
    T = len(rewards)
    v = list(values) + [0.0]
    deltas = [rewards[t] + gamma * v[t + 1] - v[t] for t in range(T)]
    adv = [sum((gamma * lam) ** k * deltas[t + k] for k in range(T - t)) for t in range(T)]
    return adv, [a + v[t] for t, a in enumerate(adv)]


def test_gae_matches_brute_force_sum_with_prompt_and_padding():
    torch.manual_seed(0)
    rewards, values = torch.randn(2, 7), torch.randn(2, 7)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 0], [0, 1, 1, 1, 0, 0, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    for b in range(2):
        idx = mask[b].nonzero().flatten().tolist()
        want_adv, want_ret = brute_force_gae(rewards[b, idx].tolist(), values[b, idx].tolist(), 0.9, 0.8)
        assert adv[b, idx].tolist() == pytest.approx(want_adv, abs=1e-5)
        assert ret[b, idx].tolist() == pytest.approx(want_ret, abs=1e-5)
        assert adv[b][mask[b] == 0].abs().sum() == 0


def test_kl_penalty_and_end_reward_by_hand():
    logp = torch.tensor([[0.0, -1.0, -2.0, 0.0]])
    ref = torch.tensor([[0.0, -1.5, -1.0, 0.0]])
    mask = torch.tensor([[0, 1, 1, 0]])
    rewards, kl = kl_penalized_rewards(logp, ref, mask, torch.tensor([9.0]), kl_ctl=0.1)
    # kl = [0, 0.5, -1, 0]; r = -0.1*kl, + 9 on the last answer token (index 2): the end reward arrives
    # shaped (a group advantage) and is never clipped here; --clip_reward_value clips the raw reward earlier
    assert kl.tolist() == [[0.0, 0.5, -1.0, 0.0]]
    assert rewards[0].tolist() == pytest.approx([0.0, -0.05, 0.1 + 9.0, 0.0], abs=1e-6)


def test_whiten_by_hand():
    x = torch.tensor([[1.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 0]])
    # mean 2, population std 1 over the masked entries
    assert whiten(x, mask)[0].tolist() == pytest.approx([-1.0, 1.0, 0.0], abs=1e-4)
    assert whiten(x, mask, shift_mean=False)[0].tolist() == pytest.approx([1.0, 3.0, 0.0], abs=1e-4)


def test_standardize_and_adaptive_kl_coef_by_hand():
    # reference [1, 2, 3, 6]: mean 3, population std sqrt((4 + 1 + 0 + 9) / 4) = sqrt(3.5)
    out = standardize(torch.tensor([3.0, 6.0]), torch.tensor([1.0, 2.0, 3.0, 6.0]))
    assert out.tolist() == pytest.approx([0.0, 3 / 3.5 ** 0.5], abs=1e-6)
    # error 0.1 / 0.2 - 1 = -0.5 clips to -0.2: 0.1 * (1 - 0.2 * 64 / 1000)
    assert adaptive_kl_coef(0.1, 0.1, 0.2, 64, 1000) == pytest.approx(0.1 * (1 - 0.0128))
    # error 0.22 / 0.2 - 1 = 0.1 inside the clip: 0.1 * (1 + 0.1 * 500 / 1000)
    assert adaptive_kl_coef(0.1, 0.22, 0.2, 500, 1000) == pytest.approx(0.105)


def test_policy_loss_ratio_one_on_first_minibatch():
    logp = torch.tensor([[-1.0, -2.0, -0.5]])
    adv = torch.tensor([[1.0, -2.0, 0.5]])
    mask = torch.tensor([[1, 1, 0]])
    loss, stats = ppo_policy_loss(logp, logp.clone(), adv, mask, cliprange=0.2)
    assert stats["ratio"].item() == 1.0 and stats["approx_kl"].item() == 0.0 and stats["clipfrac"].item() == 0.0
    assert loss.item() == pytest.approx(-(1.0 - 2.0) / 2, abs=1e-6)


def test_policy_loss_clips_on_both_sides():
    old = torch.zeros(1, 2)
    mask = torch.ones(1, 2)
    # ratio e^0.5 = 1.65 with A>0: clipped at 1.2 -> -1.2; ratio e^-0.5 = 0.61 with A<0: clipped at 0.8 -> 0.8
    logp = torch.tensor([[0.5, -0.5]])
    adv = torch.tensor([[1.0, -1.0]])
    loss, stats = ppo_policy_loss(logp, old, adv, mask, cliprange=0.2)
    assert loss.item() == pytest.approx((-1.2 + 0.8) / 2, abs=1e-6)
    assert stats["clipfrac"].item() == 1.0
    # on the other sides the unclipped term is the max: A>0 with ratio 0.61 -> -0.61
    loss2, stats2 = ppo_policy_loss(torch.tensor([[-0.5]]), torch.zeros(1, 1), torch.tensor([[1.0]]),
                                    torch.ones(1, 1), cliprange=0.2)
    assert loss2.item() == pytest.approx(-math.exp(-0.5), abs=1e-6) and stats2["clipfrac"].item() == 0.0
    kl = (math.exp(0.5) - 1 - 0.5 + math.exp(-0.5) - 1 + 0.5) / 2
    assert stats["approx_kl"].item() == pytest.approx(kl, abs=1e-6)


def test_value_loss_clipped_by_hand():
    old, ret, mask = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 1.0]]), torch.ones(1, 2)
    # v=0.5: clipped to 0.2 -> max(0.25, 0.64) = 0.64 ; v=0.1: unclipped -> max(0.81, 0.81) = 0.81
    loss, frac = ppo_value_loss(torch.tensor([[0.5, 0.1]]), old, ret, mask, cliprange_value=0.2)
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.81) / 2, abs=1e-6)
    assert frac.item() == 0.5


def test_masked_mean_and_entropy():
    assert masked_mean(torch.tensor([1.0, 5.0, 9.0]), torch.tensor([1, 0, 1])).item() == 5.0
    assert entropy_from_logits(torch.zeros(1, 1, 4)).item() == pytest.approx(math.log(4), abs=1e-6)
