"""ESRL: the dynamic-sampling formulas by hand, the capability estimate moving the knobs in the
documented direction, fewer sequences through reward/reference/critic, two-stage log-probs
equal to a separate forward, and the critic-free REINFORCE mode end to end."""
from __future__ import annotations

import glob
import json
import math
import os

import pytest
import torch

from tests.conftest import (DEMO_DATA, in_fresh_process, load_weights, read_metrics, run_module, step3_args,
                            write_jsonl)

MODULE = "training.step3_rlhf.main"


def test_temperatures_confidence_and_elimination_by_hand():
    from training.step3_rlhf.esrl import answer_confidence, eliminate, temperatures
    from utils.losses import log_collision

    c = torch.tensor([0.0, 0.25, 0.5, 1.0])
    assert temperatures(c, 0.5, 1.5).tolist() == pytest.approx([0.5, 0.75, 1.0, 1.5])
    conf = torch.tensor([0.9, 0.2, 0.95, 0.5, 0.9, 0.1, 0.3])
    assert eliminate(conf, 0.3).tolist() == [1, 3, 4, 5, 6]      # floor(2.1) = 2 dropped: 0.95, then first 0.9
    assert eliminate(conf, 0.0).tolist() == list(range(7))
    # rows out of the loss go first (1: 0.2, 5: 0.1), then the most confident of the rest (2: 0.95)
    idle = torch.tensor([False, True, False, False, False, True, False])
    assert eliminate(conf, 0.3, idle).tolist() == [0, 2, 3, 4, 6]
    assert eliminate(conf, 0.5, idle).tolist() == [0, 3, 4, 6]
    # more rows out of the loss than the ratio drops: all of them go, and none of the rest
    idle = torch.tensor([True, True, False, True, False, True, False])
    assert eliminate(conf, 0.3, idle).tolist() == [2, 4, 6]
    # all out of the loss: the least confident one (5: 0.1) stays for the update
    assert eliminate(conf, 0.0, torch.ones(7, dtype=torch.bool)).tolist() == [5]
    # answer_confidence: exp(mean over answer positions of log sum_v p^2), p = softmax(logits)
    logits = torch.log(torch.tensor([[[0.5, 0.5, 0.0], [0.25, 0.25, 0.5], [0.9, 0.05, 0.05]]]).clamp_min(1e-30))
    mask = torch.tensor([[0, 1, 1]])
    expected = ((0.0625 + 0.0625 + 0.25) * (0.81 + 0.0025 + 0.0025)) ** 0.5
    assert answer_confidence(log_collision(logits), mask).tolist() == pytest.approx([expected], rel=1e-5)


def test_a_prompt_sampled_cooler_does_not_look_surer():
    """A hard prompt (flat next-token distribution) sampled at 0.8 and an easy one (peaked) at 1.2,
    as ESRL's temperatures from capability do. The sampled tokens' own probabilities, at temperature
    1 (ESRL before) or at the row's (the sampling distribution), rank the hard prompt's samples surer
    (cold draws keep to its modes), so they would be eliminated first; `answer_confidence` ranks them
    as the model is, and elimination drops the easy prompt's samples."""
    from training.step3_rlhf.esrl import answer_confidence, eliminate
    from utils.losses import log_collision

    k, T = 4, 32
    hard, easy = torch.tensor([1.5, 1.2, 0, 0, 0, 0]), torch.tensor([2.0, 1.0, 0, 0, 0, 0])
    logits = torch.stack([hard] * k + [easy] * k)[:, None, :].expand(2 * k, T, 6)
    temps = torch.tensor([0.8] * k + [1.2] * k)[:, None, None]
    g = torch.Generator().manual_seed(0)
    tokens = torch.multinomial(torch.softmax(logits / temps, -1).reshape(-1, 6), 1, generator=g).reshape(2 * k, T)
    mask = torch.ones(2 * k, T)
    for scored in (logits, logits / temps):
        drawn = torch.log_softmax(scored, -1).gather(-1, tokens[..., None]).squeeze(-1).mean(1).exp()
        assert drawn[:k].mean() > drawn[k:].mean()
        assert eliminate(drawn, 0.5).tolist() != list(range(k))       # some hard samples go first
    conf = answer_confidence(log_collision(logits), mask)
    p_hard, p_easy = torch.softmax(hard, -1), torch.softmax(easy, -1)
    assert conf.tolist() == pytest.approx([float(p_hard @ p_hard)] * k + [float(p_easy @ p_easy)] * k, rel=1e-5)
    assert eliminate(conf, 0.5).tolist() == list(range(k))            # the easy prompt's samples go first


def test_first_pass_statistics_skip_and_need_by_hand():
    from training.step3_rlhf.esrl import prompt_stats, sampling_need, skipped

    r = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5, 0.0, 0.0])
    mean, spread, agree = prompt_stats(r, [0, 0, 1, 1, 2, 2, 3, 3], 4)
    assert mean.tolist() == [1.0, 0.5, 0.5, 0.0] and spread.tolist() == [0.0, 0.5, 0.0, 0.0]
    assert agree.tolist() == [True, False, True, True]
    cap = torch.tensor([0.3, 0.9, 0.85, 0.2])
    # 0: alike at the best reward; 1: disagrees, so never skipped; 2: alike and capable (0.85 > 0.8); 3: alike, low
    skip = skipped(mean, agree, cap, best=1.0, worst=0.0, threshold=0.8)
    assert skip.tolist() == [True, False, True, False]
    # rewards that never varied (best = worst): the best reward says nothing, capability still does
    assert skipped(mean, agree, cap, best=1.0, worst=1.0, threshold=0.8).tolist() == [False, False, True, False]
    # w = (1 - c) + s / (sigma_R + 1e-8), 0 when skipped: prompt 1 (1 - 0.9) + 0.5 / 0.25, prompt 3 1 - 0.2
    assert sampling_need(cap, spread, 0.25, skip).tolist() == pytest.approx([0.0, 2.1, 0.0, 0.8])


def greedy_allocation(weights: list[float], cap: int, total: int) -> list[int]:
    """D'Hondt as a loop: each extra sample to the prompt with the highest w / (its extras + 1)."""
    extra = [0] * len(weights)
    for _ in range(total):
        open_ = [i for i in range(len(weights)) if extra[i] < cap]
        i = min(open_, key=lambda i: (-weights[i] / (extra[i] + 1), extra[i] + 1, i))
        extra[i] += 1
    return extra


def test_allocation_matches_a_greedy_loop_and_hand_values():
    from training.step3_rlhf.esrl import allocate, second_pass_size

    w = torch.tensor([2.1, 0.0, 0.0, 0.8], dtype=torch.float64)
    # quotients 2.1, 1.05, 0.8, 0.7 (prompt 0: 2.1 / 1..3; prompt 3: 0.8 / 1)
    assert allocate(w, 3, 4) == [3, 0, 0, 1]
    # then 0.4, 0.27 of prompt 3; the seventh and eighth go to the zero-weight prompts in turn
    assert allocate(w, 3, 6) == [3, 0, 0, 3] and allocate(w, 3, 7) == [3, 1, 0, 3] and allocate(w, 3, 8) == [3, 1, 1, 3]
    assert second_pass_size(w, 3, 8) == 6 and second_pass_size(w, 3, 4) == 4 and second_pass_size(w, 3, -2) == 0
    with pytest.raises(ValueError):
        allocate(w, 3, 13)
    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        n, cap = int(torch.randint(1, 7, (1,), generator=g)), int(torch.randint(1, 5, (1,), generator=g))
        # few distinct values, so ties (equal weights, zero weights, equal quotients) are common
        w = torch.randint(0, 4, (n,), generator=g).double() / 2
        for total in range(n * cap + 1):
            got = allocate(w, cap, total)
            assert got == greedy_allocation(w.tolist(), cap, total), (w.tolist(), cap, total)
            assert sum(got) == total and max(got) <= cap


def test_group_baseline_and_reward_to_go_by_hand():
    from utils.losses import group_baseline, reward_to_go

    r = torch.tensor([1.0, 3.0, 5.0, 10.0, 4.0])
    b = group_baseline(r, [7, 7, 7, 2, 9], fallback=0.5)
    assert b.tolist() == pytest.approx([4.0, 3.0, 2.0, 0.5, 0.5])   # leave-one-out means; lone samples: fallback
    rewards = torch.tensor([[0.0, 1.0, -0.5, 2.0], [3.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0]])
    g = reward_to_go(rewards, mask, gamma=0.5)
    expected = [[0.0, 1.0 + 0.5 * (-0.5 + 0.5 * 2.0), -0.5 + 0.5 * 2.0, 2.0], [3.0, 0.0, 0.0, 0.0]]
    torch.testing.assert_close(g, torch.tensor(expected))


def test_capability_rises_and_temperature_with_it():
    from training.step3_rlhf.esrl import CapabilityEstimator, temperatures

    est = CapabilityEstimator(confidence_weight=0.5, decay=0.5)
    assert est.capability([3]).tolist() == [0.25]                     # no history: conf 0, score 0.5
    est.update({1: 0.2, 2: 0.9}, {1: -1.0, 2: 3.0})                   # batch mean 1, std 2
    c = est.capability([1, 2, 5])
    s1, s2 = 1 / (1 + torch.e ** 1.0), 1 / (1 + torch.e ** -1.0)      # sigmoid(-1), sigmoid(1)
    assert c.tolist() == pytest.approx([0.5 * 0.2 + 0.5 * s1, 0.5 * 0.9 + 0.5 * s2, 0.5 * 0.55 + 0.25], abs=1e-6)
    assert (est.reward_best, est.reward_worst) == (3.0, -1.0)
    before = est.capability([1])
    est.update({1: 0.95}, {1: 3.0, 2: 3.0})                            # prompt 1 got better
    after = est.capability([1])
    assert after > before
    assert temperatures(after, 0.7, 1.3) > temperatures(before, 0.7, 1.3)
    assert (est.reward_best, est.reward_worst) == (3.0, -1.0)
    est.update({4: 0.5}, {4: 7.5})
    assert (est.reward_best, est.reward_worst) == (7.5, -1.0)
    copy = CapabilityEstimator(0.5, 0.5)
    copy.load_state_dict(est.state_dict())
    assert copy.capability([1, 2, 7]).tolist() == est.capability([1, 2, 7]).tolist()
    assert copy.state_dict() == est.state_dict()


def test_sample_counts_resolve_to_a_budget():
    from utils.cli import parse_config
    from utils.config import RLHFConfig

    base = ["--actor_model_name_or_path", "a", "--critic_model_name_or_path", "c", "--data_path", "d",
            "--output_dir", "o", "--dynamic_sampling"]

    def counts(*argv):
        cfg = parse_config(RLHFConfig, base + list(argv))
        return (cfg.num_samples_per_prompt, cfg.esrl_min_samples, cfg.esrl_max_samples), cfg.__dict__.get("notes", [])

    # (budget K per prompt, first pass m, most per prompt k_max)
    assert counts()[0] == (4, 2, 8)                                   # the fork's scripts: --dynamic_sampling alone
    assert counts("--num_samples_per_prompt", "6")[0] == (6, 2, 12)
    assert counts("--esrl_min_samples", "2", "--esrl_max_samples", "4")[0] == (4, 2, 4)
    assert counts("--num_samples_per_prompt", "4", "--esrl_max_samples", "8")[0] == (4, 2, 8)
    assert counts("--esrl_max_samples", "1")[0] == (1, 1, 1)
    assert counts("--esrl_min_samples", "1", "--esrl_max_samples", "3")[0] == (3, 1, 3)
    got, notes = counts("--num_samples_per_prompt", "8", "--esrl_max_samples", "4")
    assert got == (4, 2, 4) and any(n.startswith("--num_samples_per_prompt: ESRL gives one prompt") for n in notes)
    plain = parse_config(RLHFConfig, base[:-1] + ["--num_samples_per_prompt", "3"])
    assert plain.num_samples_per_prompt == 3                          # no ESRL: k as given


def esrl_args(sft_dir, prompts, out, *extra):
    # chrF to `output` is a graded reward, so even the weak test model gets a learning signal
    return step3_args(sft_dir, sft_dir, prompts, out, "--use_reward_model", "false", "--reward_functions",
                      "examples.rlhf_with_comet_reward.chrf:reward", *extra, seed=4)


def one_round(argv, rounds: int = 1):
    """Build the engine and trainer, run `rounds` rounds of experience on the same 8 prompts; count
    what each pass of the last one saw (and hand back ESRL's estimates from before it)."""
    from training.step3_rlhf import sampler as sampler_module
    from training.step3_rlhf.build import build_sources
    from training.step3_rlhf.rollout import ExperienceMaker
    from training.step3_rlhf.update import PPOUpdater
    from training.step3_rlhf.rlhf_engine import DeepSpeedRLHFEngine
    from utils.cli import parse_config
    from utils.config import RLHFConfig
    from utils.data import DataPart, Phase, load_step_records
    from utils.data.rlhf import tokenize_prompts
    from utils.losses import token_logprobs
    from utils.models import load_tokenizer_for
    from utils.run import start

    cfg = parse_config(RLHFConfig, argv)
    start(cfg)
    tok = load_tokenizer_for(cfg, cfg.actor_model_name_or_path, padding_side="left")
    records = load_step_records(DataPart(tuple(cfg.data_path), cfg.data_split, seed=1), Phase.RLHF).train
    data = tokenize_prompts(records, tok, cfg.max_prompt_seq_len, cfg.max_seq_len, False)
    rlhf = DeepSpeedRLHFEngine(cfg, tok, 10)
    sources, weights = build_sources(cfg, rlhf, [])
    seen = {"ref": [], "critic": [], "reward": [], "grad_in_generate": []}
    rlhf.ref.module.register_forward_hook(lambda m, a, kw, o: seen["ref"].append(kw["input_ids"].shape[0]),
                                          with_kwargs=True)
    if rlhf.critic is not None:
        rlhf.critic.module.register_forward_hook(
            lambda m, a, kw, o: seen["critic"].append(kw["input_ids"].shape[0]), with_kwargs=True)
    rule = sources["reward"].fn
    sources["reward"].fn = lambda **kw: (seen["reward"].append(len(kw["answers"])), rule(**kw))[1]
    trainer = ExperienceMaker(cfg, rlhf, tok, sources, weights)
    updater = PPOUpdater(cfg, rlhf, tok)
    sampler = trainer.sampler
    generate = sampler.generate

    def spy(*a, **kw):
        h = rlhf.actor.module.register_forward_hook(lambda *x: seen["grad_in_generate"].append(torch.is_grad_enabled()))
        try:
            return generate(*a, **kw)
        finally:
            h.remove()
    sampler.generate = spy
    # each pass's samples as sampled, and the rows elimination keeps
    draw, samples, kept = sampler.draw, [], []
    sampler.draw = lambda *a, **kw: (lambda s: (samples.append(s), s)[1])(draw(*a, **kw))
    eliminate = sampler_module.eliminate
    sampler_module.eliminate = lambda *a: (lambda k: (kept.append(k.tolist()), k)[1])(eliminate(*a))
    for _ in range(rounds - 1):
        trainer.make_experience(data[:8], list(range(8)))
    before = sampler.state_dict()
    for v in (*seen.values(), samples, kept):
        v.clear()
    exp, stats = trainer.make_experience(data[:8], list(range(8)))
    # a separate forward per row, without padding, must give the same log-probs
    diffs = []
    with torch.no_grad():
        for i in range(exp.sequences.shape[0]):
            keep = exp.attention_mask[i].bool()
            ids = exp.sequences[i][keep][None]
            lp = token_logprobs(rlhf.actor.module(input_ids=ids).logits / exp.temperatures[i], ids)[0]
            m = exp.action_mask[i].bool()
            diffs.append(float((exp.logprobs[i][m] - lp[-int(m.sum()):]).abs().max()))
            # and the log-probs recorded while sampling, at the row's temperature too
            diffs.append(float((exp.rollout_logprobs[i][m] - lp[-int(m.sum()):]).abs().max()))
    passes = {k: list(v) for k, v in seen.items()}     # the experience passes only, not training's
    step, minibatches = updater.step, []
    updater.step = lambda mb, *a: (minibatches.append(mb.sequences.shape[0]), step(mb, *a))[1]
    updater.train_on([exp], 0)
    sampled = [{"prompt_index": x.prompt_index, "reward": x.base.tolist(),
                "confidence": x.confidence.tolist() if x.confidence is not None else None} for x in samples]
    return {"seen": passes, "stats": stats, "rows": exp.sequences.shape[0], "diff": max(diffs),
            "counters": dict(trainer.counters), "minibatches": minibatches, "passes": sampled, "kept": kept,
            "prompt_index": exp.prompt_index, "advantages": exp.advantages.tolist(),
            "action_mask": exp.action_mask.tolist(), "loss_mask": exp.loss_mask.tolist(), "estimates": before}


def test_second_pass_goes_where_the_first_says_and_joins_the_groups(sft_dir, prompts, tmp_path):
    from training.step3_rlhf.esrl import (CapabilityEstimator, allocate, kept_count, prompt_stats, sampling_need,
                                          second_pass_size, skipped)
    from utils.losses import grpo_advantages, uniform_groups

    # budget 4 per prompt, first pass 2, at most 6 per prompt; every prompt answered alike is skipped (cold
    # temperatures, so some are)
    argv = esrl_args(sft_dir, prompts, tmp_path / "o", "--dynamic_sampling", "--advantage_estimator", "grpo",
                     "--use_kl_loss", "--num_samples_per_prompt", 4, "--esrl_max_samples", 6,
                     "--esrl_skip_capability", 0, "--esrl_eliminate_ratio", 0.25, "--esrl_temperature_min", 0.05,
                     "--esrl_temperature_max", 0.1)
    r = in_fresh_process(one_round, argv)
    first, second = r["passes"]
    assert first["prompt_index"] == [i for i in range(8) for _ in range(2)]
    # the allocation, from the first pass alone (a fresh estimator: this is the run's first batch)
    reward = torch.tensor(first["reward"])
    mean, spread, agree = prompt_stats(reward, first["prompt_index"], 8)
    conf = prompt_stats(torch.tensor(first["confidence"]), first["prompt_index"], 8)[0]
    est = CapabilityEstimator(0.5, 0.5)
    est.update(dict(enumerate(conf.tolist())), dict(enumerate(mean.tolist())))
    cap = est.capability(list(range(8)))
    skip = skipped(mean, agree, cap, est.reward_best, est.reward_worst, 0.0)
    need = sampling_need(cap, spread, math.sqrt(est.reward_var), skip)
    total = second_pass_size(need, 4, 8 * (4 - 2))
    assert skip.any() and not skip.all() and 0 < total    # both kinds of prompt in this batch
    extra = allocate(need, 4, total)
    assert second["prompt_index"] == [i for i, e in enumerate(extra) for _ in range(e)]
    assert r["stats"]["esrl/skipped"] == pytest.approx(float(skip.float().mean()))
    n = 16 + total
    assert r["counters"]["sampled_sequences"] == n <= 8 * 4 and r["seen"]["reward"] == [16, total]
    # group baselines over every sample of the prompt, both passes; skipped prompts' uniform groups leave the loss
    groups = first["prompt_index"] + second["prompt_index"]
    end = torch.tensor(first["reward"] + second["reward"])
    enter_all = ~(uniform_groups(end, groups) & skip[groups])
    # elimination drops every row out of the loss (this batch: more than the ratio's floor(0.25 * n)), and no
    # other; only the kept rows reach the reference and the update
    keep = r["kept"][0]
    idle = [i for i in range(n) if not enter_all[i]]
    assert len(idle) > n - kept_count(n, 0.25)
    assert len(keep) == r["rows"] == n - len(idle) == r["counters"]["trained_sequences"] == sum(r["seen"]["ref"])
    assert sorted(set(range(n)) - set(keep)) == idle
    assert r["prompt_index"] == [groups[i] for i in keep]
    want = grpo_advantages(end, groups)[keep]
    enter = enter_all[keep]
    adv, mask, loss_mask = (torch.tensor(r[k]) for k in ("advantages", "action_mask", "loss_mask"))
    for i in range(len(keep)):
        m = mask[i].bool()
        assert adv[i][m].tolist() == pytest.approx([float(want[i])] * int(m.sum()), abs=1e-5)
    assert enter.all() and loss_mask.sum(1).tolist() == mask.sum(1).tolist()
    assert r["seen"]["grad_in_generate"] and not any(r["seen"]["grad_in_generate"])
    assert r["diff"] < 1e-5       # the recorded log-probs survive joining the second pass's layout
    # a fixed ceil(kept_count(8 x 4) / 4) = 6 minibatches of at most --per_device_training_batch_size (4)
    assert len(r["minibatches"]) == 6 and max(r["minibatches"]) <= 4 and sum(r["minibatches"]) == len(keep)


def test_a_revisited_prompt_is_planned_in_one_pass(sft_dir, prompts, tmp_path):
    """The second visit of a batch's prompts: each prompt's samples planned from its estimates (the
    previous visit's spread and skip, capability as now), all drawn in one pass, no second pass."""
    from training.step3_rlhf.esrl import CapabilityEstimator, allocate, sampling_need, second_pass_size

    argv = esrl_args(sft_dir, prompts, tmp_path / "o", "--dynamic_sampling", "--advantage_estimator", "grpo",
                     "--num_samples_per_prompt", 4, "--esrl_max_samples", 6, "--esrl_skip_capability", 0,
                     "--esrl_temperature_min", 0.05, "--esrl_temperature_max", 0.1)
    r = in_fresh_process(one_round, argv, 2)
    assert len(r["passes"]) == 1 and r["stats"]["esrl/planned"] == 1.0 and r["stats"]["esrl/second_pass"] == 0
    est = CapabilityEstimator(0.5, 0.5)
    est.load_state_dict(r["estimates"])
    ids = list(range(8))
    spread = torch.tensor([est.spread[i] for i in ids], dtype=torch.float64)
    skip = torch.tensor([est.skip[i] for i in ids])
    need = sampling_need(est.capability(ids), spread, math.sqrt(est.reward_var), skip)
    assert est.planned_need(ids).tolist() == need.tolist()
    assert skip.any() and not skip.all()        # both kinds of prompt: alike and well answered, and not
    ahead = allocate(need, 4, second_pass_size(need, 4, 8 * (4 - 2)))
    assert r["passes"][0]["prompt_index"] == [i for i in ids for _ in range(2 + ahead[i])]
    assert all(ahead[i] == 0 for i in ids if skip[i]) and len(r["passes"][0]["prompt_index"]) <= 8 * 4


def test_plain_ppo_scores_every_sample(sft_dir, prompts, tmp_path):
    r = in_fresh_process(one_round, esrl_args(sft_dir, prompts, tmp_path / "o"))
    assert r["counters"]["sampled_sequences"] == r["counters"]["trained_sequences"] == 8
    assert r["minibatches"] == [4, 4]
    assert sum(r["seen"]["ref"]) == sum(r["seen"]["critic"]) == sum(r["seen"]["reward"]) == 8
    assert r["diff"] < 1e-5


def test_reinforce_without_critic_trains_and_resumes(sft_dir, prompts, tmp_path):
    base = ["--dynamic_sampling", "--remove_critic_model", "--save_steps", 1]
    full, part = tmp_path / "full", tmp_path / "part"
    run_module(MODULE, esrl_args(sft_dir, prompts, full, *base, "--max_steps", 3))
    run_module(MODULE, esrl_args(sft_dir, prompts, part, *base, "--max_steps", 2))
    run_module(MODULE, esrl_args(sft_dir, prompts, part, *base, "--max_steps", 3, "--resume"))
    assert not (full / "critic").exists()
    sft, a, b = load_weights(sft_dir), load_weights(full / "actor"), load_weights(part / "actor")
    assert all(not torch.equal(sft[k], a[k]) for k in sft)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    ra, rb = read_metrics(full), read_metrics(part)
    assert "vf_loss" not in ra[0]
    for key in ("esrl/capability", "esrl/samples_per_prompt", "count/sampled_tokens", "reward/total"):
        assert [x[key] for x in rb] == pytest.approx([x[key] for x in ra], abs=1e-6)


def test_two_process_dynamic_sampling(sft_dir, prompts, tmp_path):
    shm = f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_*"
    before = set(glob.glob(shm))
    out = tmp_path / "two"
    run_module(MODULE, esrl_args(sft_dir, prompts, out, "--dynamic_sampling", "--max_steps", 2,
                                 "--actor_zero_stage", 3), nproc=2)
    rows = read_metrics(out)
    assert len(rows) == 2 and all(r["esrl/kept"] == pytest.approx(0.7, abs=0.05) for r in rows)
    assert set(glob.glob(shm)) <= before   # DeepSpeed's shared-memory buffers do not outlive the run


def test_held_out_evaluation_equals_offline_scoring(sft_dir, prompts, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from examples.rlhf_with_comet_reward.chrf import reward
    from utils.generation import generate_answers

    held = tmp_path / "held.txt"
    write_jsonl(held, (DEMO_DATA / "heldout.txt").read_text().splitlines()[:20])
    out = tmp_path / "ev"
    run_module(MODULE, esrl_args(sft_dir, prompts, out, "--max_steps", 3, "--eval_steps", 2, "--eval_data_path",
                                 held, "--per_device_generation_batch_size", 6, "--remove_critic_model"))
    rows = read_metrics(out)
    assert [("eval/reward/reward" in r) for r in rows] == [False, True, True]   # every 2 rounds and at the end
    recs = [json.loads(line) for line in held.read_text().splitlines()]
    tok = AutoTokenizer.from_pretrained(out / "actor")
    model = AutoModelForCausalLM.from_pretrained(out / "actor")
    answers = generate_answers(model, tok, [r["instruction"] for r in recs], max_new_tokens=6, batch_size=7)
    scores = reward(prompts=None, answers=answers, references=[r["output"] for r in recs])
    assert rows[-1]["eval/reward/reward"] == pytest.approx(sum(scores) / len(scores), abs=1e-5)
    assert rows[-1]["eval/reward/total"] == pytest.approx(rows[-1]["eval/reward/reward"], abs=1e-5)
