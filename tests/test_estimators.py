"""Step 3's advantage estimators and their loss options: each formula against a brute-force
loop or a hand derivation, how the flags resolve (their refusals are in test_peer_flags), and
GRPO end to end (critic-free, groups of samples, dropped uniform groups, KL as a loss term, at
one and two processes)."""
from __future__ import annotations

import math
import statistics

import pytest
import torch

from tests.conftest import in_fresh_process, step3_args
from utils.losses import (aggregate_loss, grpo_advantages, kl_estimate, kl_penalized_rewards, masked_moments,
                          ppo_policy_loss, reward_to_go, uniform_groups, whiten)


def brute_force_grpo(rewards, groups, scale):
    out = []
    for r, g in zip(rewards, groups):
        mine = [x for x, h in zip(rewards, groups) if h == g]
        if len(mine) < 2:
            out.append(0.0)
            continue
        mean = sum(mine) / len(mine)
        std = statistics.pstdev(mine)
        out.append((r - mean) / (std + 1e-6) if scale else r - mean)
    return out


@pytest.mark.parametrize("scale", [True, False], ids=["grpo", "dr_grpo"])
def test_grpo_advantages_match_a_loop_over_groups(scale):
    torch.manual_seed(0)
    r = torch.randn(11, dtype=torch.float64)
    groups = [3, 1, 3, 3, 7, 1, 9, 7, 7, 7, 1]       # sizes 3, 3, 4, 1 (prompt 9 alone)
    got = grpo_advantages(r, groups, scale)
    assert got.tolist() == pytest.approx(brute_force_grpo(r.tolist(), groups, scale), abs=1e-9)
    assert got[6] == 0                                 # a lone sample has no group
    lone = grpo_advantages(r, groups, scale, fallback=0.25)
    assert float(lone[6]) == pytest.approx(float(r[6]) - 0.25) and torch.equal(lone[:6], got[:6])
    # by hand: group {1, 3}: mean 2, population std 1 -> -1, +1
    assert grpo_advantages(torch.tensor([1.0, 3.0]), [0, 0]).tolist() == pytest.approx([-1.0, 1.0], abs=1e-5)


def test_uniform_groups_by_hand():
    r = torch.tensor([1.0, 1.0, 0.0, 1.0, 2.0, 2.0, 5.0])
    # prompt 0: {1, 1} uniform; prompt 1: {0, 1} not; prompt 2: {2, 2} uniform; prompt 3 alone: not a group
    assert uniform_groups(r, [0, 0, 1, 1, 2, 2, 3]).tolist() == [True, True, False, False, True, True, False]


def test_kl_estimators_by_hand():
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0]])
    d = [-0.5, 1.0]                                      # log ref - log pi
    assert kl_estimate(logp, ref, "k1")[0].tolist() == pytest.approx([0.5, -1.0])
    assert kl_estimate(logp, ref, "k2")[0].tolist() == pytest.approx([0.125, 0.5])
    assert kl_estimate(logp, ref, "k3")[0].tolist() == pytest.approx([math.exp(x) - x - 1 for x in d])
    # k3 is unbiased: E_pi[exp(d) - d - 1] = KL(pi || ref) for a two-token distribution
    pi, q = torch.tensor([0.7, 0.3]), torch.tensor([0.4, 0.6])
    est = (pi * kl_estimate(pi.log(), q.log(), "k3")).sum()
    assert float(est) == pytest.approx(float((pi * (pi / q).log()).sum()), abs=1e-6)
    # the reward penalty takes any estimator; k1 is the default
    mask = torch.tensor([[1, 1]])
    rewards, kl = kl_penalized_rewards(logp, ref, mask, torch.tensor([0.0]), 0.5, 5.0, "k2")
    assert kl[0].tolist() == pytest.approx([0.125, 0.5]) and rewards[0].tolist() == pytest.approx([-0.0625, -0.25])


def test_loss_aggregation_modes_by_hand():
    loss = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    assert float(aggregate_loss(loss, mask, "token-mean")) == pytest.approx(10 / 4)
    assert float(aggregate_loss(loss, mask, "seq-mean-token-mean")) == pytest.approx((2 + 4) / 2)
    assert float(aggregate_loss(loss, mask, "seq-mean-token-sum")) == pytest.approx((6 + 4) / 2)
    assert float(aggregate_loss(loss, mask, "seq-mean-token-sum-norm", horizon=8)) == pytest.approx((6 / 8 + 4 / 8) / 2)
    with pytest.raises(ValueError):
        aggregate_loss(loss, mask, "seq-mean-token-sum-norm")


def test_asymmetric_clip_by_hand():
    # ratio e^0.24 = 1.271 with A > 0: clipped at 1.2 by default, not with cliprange_high 0.28
    logp, old, adv, m = torch.tensor([[0.24]]), torch.zeros(1, 1), torch.tensor([[1.0]]), torch.ones(1, 1)
    sym, st = ppo_policy_loss(logp, old, adv, m, 0.2)
    high, st_high = ppo_policy_loss(logp, old, adv, m, 0.2, 0.28)
    assert float(sym) == pytest.approx(-1.2) and float(st["clipfrac"]) == 1.0
    assert float(high) == pytest.approx(-math.exp(0.24)) and float(st_high["clipfrac"]) == 0.0
    # the low side still clips at 1 - 0.2 for A < 0
    low, _ = ppo_policy_loss(torch.tensor([[-0.5]]), old, -adv, m, 0.2, 0.28)
    assert float(low) == pytest.approx(0.8)


def test_round_whitening_equals_whitening_the_concatenation():
    torch.manual_seed(1)
    a, b = torch.randn(3, 5), torch.randn(2, 5)
    ma, mb = (torch.rand(3, 5) > 0.3).float(), (torch.rand(2, 5) > 0.3).float()
    moments = masked_moments(a, ma) + masked_moments(b, mb)      # what finish_round sums over batches and ranks
    whole = whiten(torch.cat([a, b]), torch.cat([ma, mb]))
    torch.testing.assert_close(torch.cat([whiten(a, ma, moments=moments), whiten(b, mb, moments=moments)]), whole,
                               atol=1e-5, rtol=0)


def test_grpo_advantage_is_constant_over_the_answer_without_kl_in_reward():
    # the critic-free path: shaped sequence reward on the last token, reward-to-go with gamma 1
    mask = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 0]])
    end = grpo_advantages(torch.tensor([1.0, 0.0]), [5, 5])
    rewards, _ = kl_penalized_rewards(torch.zeros(2, 4), torch.zeros(2, 4), mask, end, 0.0, 5.0)
    adv = reward_to_go(rewards, mask, 1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.0, 1, 1, 1], [0, -1, -1, 0]]), atol=1e-5, rtol=0)


# -- flags -------------------------------------------------------------------------------------
BASE = ["--actor_model_name_or_path", "a", "--critic_model_name_or_path", "c", "--data_path", "d",
        "--output_dir", "o"]


def test_estimator_flags_resolve():
    from utils.config import RLHFConfig, parse_config

    cfg = parse_config(RLHFConfig, BASE)
    assert cfg.advantage_estimator == "gae" and not cfg.remove_critic_model and cfg.use_kl_in_reward
    assert cfg.kl_estimator == "k1" and cfg.cliprange_low == cfg.cliprange_high == 0.2
    cfg = parse_config(RLHFConfig, BASE + ["--advantage_estimator", "group_norm", "--n_samples_per_prompt", "4",
                                           "--use_kl_loss", "true", "--clip_ratio_high", "0.28"])
    assert cfg.advantage_estimator == "grpo" and cfg.remove_critic_model and cfg.num_samples_per_prompt == 4
    assert not cfg.use_kl_in_reward and cfg.kl_estimator == "k3" and cfg.cliprange_high == 0.28
    cfg = parse_config(RLHFConfig, BASE + ["--advantage_estimator", "dr_grpo", "--num_generations", "2"])
    assert cfg.advantage_estimator == "grpo" and not cfg.norm_adv_by_std_in_grpo
    cfg = parse_config(RLHFConfig, BASE + ["--remove_critic_model"])
    assert cfg.advantage_estimator == "rloo"
    cfg = parse_config(RLHFConfig, BASE + ["--advantage_estimator", "reinforce_plus_plus", "--use_kl_in_reward",
                                           "false"])
    assert cfg.advantage_estimator == "reinforce_pp" and cfg.remove_kl_penalty    # no KL anywhere: no reference
    cfg = parse_config(RLHFConfig, BASE + ["--dynamic_sampling", "--num_samples_per_prompt", "6"])
    assert cfg.num_samples_per_prompt == 6 and cfg.esrl_max_samples == 12     # ESRL's budget, twice for one prompt
    assert parse_config(RLHFConfig, BASE + ["--dynamic_sampling"]).esrl_max_samples == 8


# -- end to end -----------------------------------------------------------------------------------
def grpo_args(sft_dir, prompts, out, *extra):
    return step3_args(sft_dir, sft_dir, prompts, out, "--use_reward_model", "false", "--reward_functions",
                      "examples.rlhf_with_comet_reward.chrf:reward", "--advantage_estimator", "grpo",
                      "--num_samples_per_prompt", 3, *extra, seed=4)


def grpo_round(argv):
    """One round of experience and updates; what the passes and the update saw."""
    from training.step3_rlhf.build import build
    from training.step3_rlhf.recipe import PPORecipe
    from utils.config import RLHFConfig, parse_config
    from utils.run import start

    cfg = parse_config(RLHFConfig, argv)
    start(cfg)
    parts = build(cfg)
    recipe = PPORecipe(cfg, parts)
    exp, stats = recipe.maker.make_experience(parts.prompts[:8], list(range(8)))
    seen = []
    step = recipe.updater.step
    recipe.updater.step = lambda mb, *a: (seen.append(mb.sequences.shape[0]), step(mb, *a))[1]
    train = recipe.updater.train_on([exp], 0)
    return {"no_critic": parts.rlhf.critic is None, "prompt_index": exp.prompt_index, "end": exp.end_rewards.tolist(),
            "adv": exp.advantages.tolist(), "mask": exp.action_mask.tolist(), "loss_mask": exp.loss_mask.tolist(),
            "stats": stats, "train": train, "minibatches": seen}


def test_grpo_round_groups_samples_and_drops_uniform_groups(sft_dir, prompts, tmp_path):
    r = in_fresh_process(grpo_round, grpo_args(sft_dir, prompts, tmp_path / "o", "--drop_uniform_groups",
                                               "--use_kl_loss", "--kl_loss_coef", 0.05,
                                               "--per_device_training_batch_size", 5))
    assert r["no_critic"] and r["prompt_index"] == [i for i in range(8) for _ in range(3)]
    end, adv, mask = torch.tensor(r["end"]), torch.tensor(r["adv"]), torch.tensor(r["mask"])
    # no KL in the reward: every answer token carries its sequence's group-normalised reward
    want = grpo_advantages(end, r["prompt_index"])
    for i in range(24):
        m = mask[i].bool()
        assert adv[i][m].tolist() == pytest.approx([float(want[i])] * int(m.sum()), abs=1e-5)
    uniform = uniform_groups(end, r["prompt_index"])
    assert torch.tensor(r["loss_mask"]).sum(1).tolist() == (mask.sum(1) * ~uniform).tolist()
    assert r["stats"]["dropped_uniform"] == pytest.approx(float(uniform.float().mean()))
    assert r["minibatches"] == [5, 5, 5, 5, 4]        # 24 rows, at most 5 per minibatch: ceil(24 / 5) = 5
    # k3 is 0 only while the actor equals the reference, i.e. on the first minibatch alone
    assert r["train"]["kl_loss"] > 0 and "vf_loss" not in r["train"]
