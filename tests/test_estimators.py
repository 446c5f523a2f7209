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
from utils.losses import (aggregate_loss, aggregate_loss_sum, grpo_advantages, kl_estimate, kl_penalized_rewards,
                          masked_moments, ppo_policy_loss, ppo_policy_loss_sum, prompt_lm_mask, reward_to_go,
                          uniform_groups, whiten)


def brute_force_grpo(rewards, groups, scale):
    out = []
    for r, g in zip(rewards, groups):
        mine = [x for x, h in zip(rewards, groups) if h == g]
        if len(mine) < 2:
            out.append(0.0)
            continue
        mean = sum(mine) / len(mine)
        std = statistics.stdev(mine)       # Bessel's, as TRL, verl and OpenRLHF
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
    # by hand: group {1, 3}: mean 2, unbiased std sqrt((1 + 1) / (2 - 1)) = sqrt(2) -> -1/sqrt(2), +1/sqrt(2)
    assert grpo_advantages(torch.tensor([1.0, 3.0]), [0, 0]).tolist() == pytest.approx([-0.5 ** 0.5, 0.5 ** 0.5],
                                                                                        abs=1e-5)


def test_uniform_groups_by_hand():
    r = torch.tensor([1.0, 1.0, 0.0, 1.0, 2.0, 2.0, 5.0])
    # prompt 0: {1, 1} uniform; prompt 1: {0, 1} not; prompt 2: {2, 2} uniform; prompt 3 alone: not a group
    assert uniform_groups(r, [0, 0, 1, 1, 2, 2, 3]).tolist() == [True, True, False, False, True, True, False]


def test_truncated_importance_weights_by_hand():
    from utils.losses import truncated_is_weights

    old = torch.tensor([[-1.0, -2.0, -0.5]])
    rollout = torch.tensor([[-1.0, -2.5, 0.5]])          # ratios 1, e^0.5 = 1.649, e^-1 = 0.368
    assert truncated_is_weights(old, rollout, 1.5)[0].tolist() == pytest.approx([1.0, 1.5, math.exp(-1)], abs=1e-6)
    old.requires_grad_(True)
    assert not truncated_is_weights(old, rollout, 2.0).requires_grad


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
    rewards, kl = kl_penalized_rewards(logp, ref, mask, torch.tensor([0.0]), 0.5, "k2")
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


def test_sum_form_aggregation_counts_the_rows_that_train_and_adds_over_micro_batches():
    # row 2 is out of the loss (a dropped uniform group): it counts in no mode's denominator
    loss = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0], [7.0, 7.0, 7.0, 7.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    by_hand = {"token-mean": (1 + 2 + 3 + 4, 4),              # every loss token
               "seq-mean-token-mean": (6 / 3 + 4 / 1, 2),      # row means 2 and 4, two rows train
               "seq-mean-token-sum": (6 + 4, 2),
               "seq-mean-token-sum-norm": (6 / 8 + 4 / 8, 2)}  # horizon 8
    for mode, (total, count) in by_hand.items():
        got = aggregate_loss_sum(loss, mask, mode, horizon=8)
        assert (float(got[0]), float(got[1])) == pytest.approx((total, count)), mode
        assert float(aggregate_loss(loss, mask, mode, horizon=8)) == pytest.approx(total / count), mode
        # micro-batches {row 0} and {rows 1, 2}: their sums and counts add up to the whole batch's
        a, b = aggregate_loss_sum(loss[:1], mask[:1], mode, 8), aggregate_loss_sum(loss[1:], mask[1:], mode, 8)
        assert (float(a[0] + b[0]), float(a[1] + b[1])) == pytest.approx((total, count)), mode


def test_policy_loss_sum_form_and_per_token_weights_by_hand():
    # ratio 1 everywhere: each token's loss is -A_t, times its weight w_t
    logp, adv = torch.tensor([[-1.0, -2.0, -0.5]]), torch.tensor([[1.0, -2.0, 3.0]])
    mask, w = torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([[0.5, 2.0, 7.0]])
    pg_sum, count, sums = ppo_policy_loss_sum(logp, logp.clone(), adv, mask, 0.2, weights=w)
    assert (float(pg_sum), float(count)) == pytest.approx((-1.0 * 0.5 + 2.0 * 2.0, 2.0))
    assert {k: float(v) for k, v in sums.items()} == pytest.approx({"clipfrac": 0.0, "approx_kl": 0.0, "ratio": 2.0})
    mean, stats = ppo_policy_loss(logp, logp.clone(), adv, mask, 0.2, weights=w)
    assert float(mean) == pytest.approx(3.5 / 2) and float(stats["ratio"]) == 1.0
    assert float(ppo_policy_loss(logp, logp.clone(), adv, mask, 0.2)[0]) == pytest.approx((-1.0 + 2.0) / 2)


def test_pretraining_mask_without_a_dataset_by_hand():
    # P = 4: row 0 = [pad, pad, BOS, a | b, EOS, pad], row 1 = [BOS, c, d, e | f, pad, pad]
    attn = torch.tensor([[0, 0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0, 0]])
    action = torch.tensor([[0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 0, 0]]).float()   # t: token t+1 is an answer token
    # position t counts when tokens t and t+1 are both prompt tokens: row 0 only BOS -> a (t = 2), never the
    # left pad at t = 1 predicting BOS; row 1 BOS -> c, c -> d, d -> e
    want = torch.tensor([[0.0, 0, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0]])
    assert torch.equal(prompt_lm_mask(attn, action), want)


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
    end = grpo_advantages(torch.tensor([1.0, 0.0]), [5, 5])       # mean 0.5, unbiased std 1/sqrt(2)
    rewards, _ = kl_penalized_rewards(torch.zeros(2, 4), torch.zeros(2, 4), mask, end, 0.0)
    adv = reward_to_go(rewards, mask, 1.0)
    a = 0.5 ** 0.5
    torch.testing.assert_close(adv, torch.tensor([[0.0, a, a, a], [0, -a, -a, 0]]), atol=1e-5, rtol=0)


# -- flags -------------------------------------------------------------------------------------
BASE = ["--actor_model_name_or_path", "a", "--critic_model_name_or_path", "c", "--data_path", "d",
        "--output_dir", "o"]


def test_estimator_flags_resolve():
    from utils.cli import parse_config
    from utils.config import RLHFConfig

    cfg = parse_config(RLHFConfig, BASE)
    assert cfg.advantage_estimator == "gae" and not cfg.remove_critic_model and cfg.use_kl_in_reward
    assert cfg.kl_estimator == "k1" and cfg.cliprange_low == cfg.cliprange_high == 0.2
    cfg = parse_config(RLHFConfig, BASE + ["--advantage_estimator", "group_norm", "--n_samples_per_prompt", "4",
                                           "--use_kl_loss", "true", "--clip_ratio_high", "0.28"])
    assert cfg.advantage_estimator == "grpo" and cfg.remove_critic_model and cfg.num_samples_per_prompt == 4
    assert not cfg.use_kl_in_reward and cfg.kl_estimator == "k3" and cfg.cliprange_high == 0.28
    assert cfg.loss_agg_mode == "token-mean" and cfg.whiten_advantages is False    # grpo normalises per group
    cfg = parse_config(RLHFConfig, BASE + ["--advantage_estimator", "dr_grpo", "--num_generations", "2"])
    assert cfg.advantage_estimator == "grpo" and not cfg.norm_adv_by_std_in_grpo
    assert parse_config(RLHFConfig, BASE + ["--advantage_estimator", "grpo"]).norm_adv_by_std_in_grpo
    assert cfg.loss_agg_mode == "seq-mean-token-sum-norm"                            # Dr. GRPO's aggregation
    cfg = parse_config(RLHFConfig, BASE + ["--remove_critic_model"])
    assert cfg.advantage_estimator == "rloo" and cfg.whiten_advantages is False     # as TRL's and verl's RLOO
    assert parse_config(RLHFConfig, BASE + ["--remove_critic_model", "--whiten_advantages"]).whiten_advantages
    assert parse_config(RLHFConfig, BASE).whiten_advantages is True                  # gae
    assert not parse_config(RLHFConfig, BASE + ["--whiten_critic_values", "false"]).whiten_advantages
    cfg = parse_config(RLHFConfig, BASE + ["--advantage_estimator", "reinforce_plus_plus", "--use_kl_in_reward",
                                           "false"])
    assert cfg.advantage_estimator == "reinforce_pp" and cfg.remove_kl_penalty    # no KL anywhere: no reference
    assert cfg.whiten_advantages is True
    cfg = parse_config(RLHFConfig, BASE + ["--dynamic_sampling", "--num_samples_per_prompt", "6"])
    assert cfg.num_samples_per_prompt == 6 and cfg.esrl_max_samples == 12     # ESRL's budget, twice for one prompt
    assert parse_config(RLHFConfig, BASE + ["--dynamic_sampling"]).esrl_max_samples == 8


def test_dr_grpo_with_another_aggregation_is_refused_in_one_line(capsys):
    from utils.cli import parse_config
    from utils.config import RLHFConfig

    assert parse_config(RLHFConfig, BASE + ["--advantage_estimator", "dr_grpo", "--loss_agg_mode",
                                            "seq-mean-token-sum-norm"]).loss_agg_mode == "seq-mean-token-sum-norm"
    with pytest.raises(SystemExit) as e:
        parse_config(RLHFConfig, BASE + ["--advantage_estimator", "dr_grpo", "--loss_agg_mode", "token-mean"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: --advantage_estimator dr_grpo aggregates with seq-mean-token-sum-norm")
    # nor does it rewrite an explicit --norm_adv_by_std_in_grpo true: it refuses
    with pytest.raises(SystemExit) as e:
        parse_config(RLHFConfig, BASE + ["--advantage_estimator", "dr_grpo", "--norm_adv_by_std_in_grpo", "true"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err == ("error: --advantage_estimator dr_grpo does not divide by the group's std; "
                                         "drop --norm_adv_by_std_in_grpo, or use grpo\n")


# -- end to end -----------------------------------------------------------------------------------
def grpo_args(sft_dir, prompts, out, *extra):
    return step3_args(sft_dir, sft_dir, prompts, out, "--use_reward_model", "false", "--reward_functions",
                      "examples.rlhf_with_comet_reward.chrf:reward", "--advantage_estimator", "grpo",
                      "--num_samples_per_prompt", 3, *extra, seed=4)


def grpo_round(argv):
    """One round of experience and updates; what the passes and the update saw."""
    from training.step3_rlhf.build import build
    from training.step3_rlhf.recipe import PPORecipe
    from utils.cli import parse_config
    from utils.config import RLHFConfig
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


def first_answer_succeeds(answers):
    """A rule reward: 10 for the first answer of each scoring call, 0 for the rest."""
    return [10.0] + [0.0] * (len(answers) - 1)


def shaping_rounds(argv):
    """Three generation batches of two prompts x 64 samples, all scored by `first_answer_succeeds`
    (prompt 0's first sample succeeds, prompt 1's group is uniform), shaped three ways."""
    from training.step3_rlhf.advantages import make_estimator
    from training.step3_rlhf.build import build
    from training.step3_rlhf.recipe import PPORecipe
    from utils.cli import parse_config
    from utils.config import RLHFConfig
    from utils.run import start

    cfg = parse_config(RLHFConfig, argv)
    start(cfg)
    parts = build(cfg)
    maker = PPORecipe(cfg, parts).maker
    out = {}
    for name, flags in (("grpo", {}), ("dr_grpo", {"norm_adv_by_std_in_grpo": False, "clip_reward_value": 8.0}),
                        ("rloo", {"advantage_estimator": "rloo", "whiten_advantages": True,
                                  "drop_uniform_groups": True})):
        for k, v in flags.items():
            setattr(cfg, k, v)
        maker.estimator = make_estimator(cfg)
        exp, _ = maker.make_experience(parts.prompts[:2], [0, 1])
        out[name] = {k: getattr(exp, k).tolist() for k in ("advantages", "action_mask", "loss_mask", "end_rewards")}
    return out


def test_rewards_clipped_before_shaping_and_whitened_over_the_rows_that_train(sft_dir, prompts, tmp_path):
    argv = step3_args(sft_dir, sft_dir, prompts, tmp_path / "o", "--use_reward_model", "false", "--reward_functions",
                      "tests.test_estimators:first_answer_succeeds", "--advantage_estimator", "grpo",
                      "--num_samples_per_prompt", 64, "--use_kl_in_reward", "false", seed=4)
    r = in_fresh_process(shaping_rounds, argv)
    for name, success, other in (
            # 10 clipped to 5; mean 5/64, sum of squared deviations 25 * 63/64, unbiased variance that / 63 =
            # 25/64, std 5/8: (5 - 5/64) / (5/8) = 7.875 and (0 - 5/64) / (5/8) = -0.125 (today: clipped to 5)
            ("grpo", 7.875, -0.125),
            # clip 8 first: 8 - 8/64 = 7.875, 0 - 8/64 (today's order, shaping then clipping, gives 8 and -10/64)
            ("dr_grpo", 7.875, -0.125)):
        adv, mask = torch.tensor(r[name]["advantages"]), torch.tensor(r[name]["action_mask"])
        assert r[name]["end_rewards"][:1] == [10.0]          # logged as scored, unclipped
        per_row = (adv * mask).sum(1) / mask.sum(1)
        for i in range(128):                                   # constant over each answer: no KL in the reward
            assert adv[i][mask[i].bool()].tolist() == pytest.approx([float(per_row[i])] * int(mask[i].sum()), abs=1e-5)
        assert float(per_row[0]) == pytest.approx(success, abs=1e-4), name     # above the clip of 5: unclipped
        assert per_row[1:64].tolist() == pytest.approx([other] * 63, abs=1e-5)
        assert float(per_row[:64].sum()) == pytest.approx(0.0, abs=1e-4)      # the group still sums to 0
        assert per_row[64:].abs().max() == 0                                  # prompt 1: uniform group
    # rloo whitened over the rows that train: prompt 1's uniform group is dropped and moves nothing.
    # Shaped: 5 - 0 for the success, 0 - 5/63 for the others; whitened token-weighted over prompt 0's rows.
    adv, mask, loss_mask = (torch.tensor(r["rloo"][k]) for k in ("advantages", "action_mask", "loss_mask"))
    assert loss_mask[:64].sum(1).tolist() == mask[:64].sum(1).tolist() and loss_mask[64:].sum() == 0
    lengths = mask[:64].sum(1).tolist()
    shaped = [5.0] + [-5.0 / 63] * 63
    n = sum(lengths)
    mean = sum(s * n_i for s, n_i in zip(shaped, lengths)) / n
    std = (sum((s - mean) ** 2 * n_i for s, n_i in zip(shaped, lengths)) / n) ** 0.5
    for i in range(64):
        assert adv[i][mask[i].bool()].tolist() == pytest.approx([(shaped[i] - mean) / std] * int(lengths[i]), abs=1e-4)
    assert adv[64:].abs().max() == 0


# -- exact accumulation (harness: tests/step3_accumulation.py) -----------------------------------------------
def accumulation_args(sft_dir, prompts, out):
    # gae with a critic; the KL, SFT and dataset-free pretraining losses on too, so each is normalised over the
    # window; gas 2; no gradient clipping (it would hide a wrongly scaled step)
    return step3_args(sft_dir, sft_dir, prompts, out, "--use_reward_model", "false", "--reward_functions",
                      "examples.demo.task:reward", "--gradient_accumulation_steps", 2, "--use_kl_loss",
                      "--add_sft_loss", "--add_pretrained_loss", "--gradient_clipping", 0, "--lr_scheduler_type",
                      "constant")


def assert_same_update(a, b, what):
    err = float((torch.as_tensor(a) - torch.as_tensor(b)).abs().max())
    assert err <= 1e-6, (what, err)


@pytest.fixture(scope="module")
def one_rank(sft_dir, prompts, tmp_path_factory):
    from tests.step3_accumulation import layouts

    return in_fresh_process(layouts, accumulation_args(sft_dir, prompts, tmp_path_factory.mktemp("acc") / "o"))


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
                                  "seq-mean-token-sum-norm"])
def test_two_micro_batches_step_as_one_double_micro_batch(one_rank, mode):
    """"one" is also a short last window (one micro-batch where gas is 2): it must weigh as a full one."""
    r = one_rank[mode]
    assert abs(r["one"] - r["all"]).max() > 1e-3          # other rows, other weights: the comparison can fail
    assert_same_update(r["two"], r["one"], mode)
    for k in ("pg_loss", "loss", "kl_loss", "sft_loss", "ptx_loss", "vf_loss", "clipfrac", "ratio", "entropy"):
        assert r["two_stats"][k] == pytest.approx(r["one_stats"][k], abs=1e-6), k


def test_mini_epochs_are_separate_optimizer_steps(one_rank):
    # 12 rows in micro-batches of 4: 3 per pass, windows [2, 1] at gas 2, each stepped --ppo_mini_epochs times
    assert one_rank["steps"][1] == ([2, 2], 2)
    assert one_rank["steps"][2] == ([4, 4], 4)     # actor and critic steps, and optimizer_steps_per_round


def test_update_scores_at_the_rows_temperature_but_prompts_at_one(one_rank):
    (ptx_warm, ptx_cold), (ent_warm, ent_cold) = one_rank["tempered"]["ptx_loss"], one_rank["tempered"]["entropy"]
    assert ptx_cold == pytest.approx(ptx_warm, abs=1e-6) and ptx_warm > 0
    assert ent_cold < ent_warm - 1e-3          # logits / 0.5: a sharper distribution


def test_two_ranks_accumulate_exactly(sft_dir, prompts, one_rank, tmp_path):
    from tests.conftest import run_module

    out = tmp_path / "two.pt"
    run_module("tests.step3_accumulation", [str(out), *accumulation_args(sft_dir, prompts, tmp_path / "o")], nproc=2)
    two = torch.load(out)
    for mode, r in two.items():
        assert_same_update(r["two"], r["one"], mode)
        # two ranks of 8 rows step as one rank with all 16
        assert_same_update(r["one"], one_rank[mode]["all"], mode)
        assert r["two_stats"]["pg_loss"] == pytest.approx(r["one_stats"]["pg_loss"], abs=1e-6)


def odd_prompts_vary(prompts, answers):
    """A rule reward: 0 for every answer to a prompt of even length (its group is uniform), else the
    answer's parity of position in the scoring call (groups of 2 get 0 and 1)."""
    return [float(i % 2) if len(p) % 2 else 0.0 for i, p in enumerate(prompts)]


def refill_round(argv):
    from training.step3_rlhf.build import build
    from training.step3_rlhf.recipe import PPORecipe
    from utils.cli import parse_config
    from utils.config import RLHFConfig
    from utils.run import start

    cfg = parse_config(RLHFConfig, argv)
    start(cfg)
    parts = build(cfg)
    maker = PPORecipe(cfg, parts).maker
    batch = list(range(8))
    exp, stats = maker.make_experience([parts.prompts[i] for i in batch], batch)
    return {"prompt_index": exp.prompt_index, "end": exp.end_rewards.tolist(), "stats": stats,
            "loss_rows": exp.loss_mask.sum(1).gt(0).tolist(), "sampled": maker.counters["sampled_sequences"],
            "even": [len(parts.prompts[i].prompt) % 2 == 0 for i in range(len(parts.prompts))]}


@pytest.mark.parametrize("passes", [3, 1])
def test_refill_replaces_uniform_groups_with_new_prompts(sft_dir, prompts, tmp_path, passes):
    """DAPO's dynamic sampling: the batch's uniform groups are replaced by groups of prompts not in it
    until 8 groups teach (3 more passes allowed), or what is still short after one more pass stays,
    uniform and out of the loss."""
    r = in_fresh_process(refill_round, step3_args(
        sft_dir, sft_dir, prompts, tmp_path / "o", "--use_reward_model", "false", "--reward_functions",
        "tests.test_estimators:odd_prompts_vary", "--advantage_estimator", "grpo", "--num_samples_per_prompt", 2,
        "--refill_uniform_groups", passes, seed=4))
    groups = r["prompt_index"][::2]
    assert len(groups) == 8 and r["prompt_index"] == [g for g in groups for _ in range(2)]
    odd = [i for i in range(8) if not r["even"][i]]
    assert 0 < len(odd) < 8
    # the batch's own groups first, in order (its teaching ones all kept), then new prompts: never one
    # already in the batch (it would join that group)
    assert [g for g in groups if g < 8 and not r["even"][g]] == odd and groups == sorted(groups, key=lambda g: g >= 8)
    new = [g for g in groups if g >= 8]
    assert new
    end = r["end"]
    for j, g in enumerate(groups):                     # a group teaches iff its rewards differ, and only it trains
        teaches = not r["even"][g]
        assert (end[2 * j] != end[2 * j + 1]) == teaches and r["loss_rows"][2 * j] == r["loss_rows"][2 * j + 1] == teaches
    teaching = sum(not r["even"][g] for g in groups)
    if passes == 3:   # enough new prompts of odd length are drawn: every group teaches
        assert teaching == 8 and r["stats"]["refill/short"] == 0 and r["stats"]["refill/passes"] >= 2
    else:             # one more pass: the groups still short are uniform ones, out of the loss
        assert r["stats"]["refill/passes"] == 2 and 0 < r["stats"]["refill/short"] == (8 - teaching) / 8
    assert r["sampled"] >= 2 * (8 + len(new))          # every new group in the batch was sampled in a further pass
