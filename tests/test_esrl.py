"""ESRL: the dynamic-sampling formulas by hand, the capability estimate moving the knobs in the
documented direction, fewer sequences through reward/reference/critic, two-stage log-probs
equal to a separate forward, and the critic-free REINFORCE mode end to end."""
from __future__ import annotations

import glob
import json
import os

import pytest
import torch

from tests.conftest import (DEMO_DATA, in_fresh_process, load_weights, read_metrics, run_module, step3_args,
                            write_jsonl)

MODULE = "training.step3_rlhf.main"


def test_sample_counts_temperatures_and_elimination_by_hand():
    from training.step3_rlhf.esrl import eliminate, equalize_counts, sample_counts, sequence_confidence, temperatures

    c = torch.tensor([0.0, 0.25, 0.5, 1.0])
    assert sample_counts(c, 1, 5) == [5, 4, 3, 1]               # round(5 - c * 4)
    assert temperatures(c, 0.5, 1.5).tolist() == pytest.approx([0.5, 0.75, 1.0, 1.5])
    conf = torch.tensor([0.9, 0.2, 0.95, 0.5, 0.9, 0.1, 0.3])
    assert eliminate(conf, 0.3).tolist() == [1, 3, 4, 5, 6]      # floor(2.1) = 2 dropped: 0.95, then first 0.9
    assert eliminate(conf, 0.0).tolist() == list(range(7))
    lp = torch.log(torch.tensor([[0.5, 0.5, 0.25, 0.9], [0.1, 0.8, 0.2, 0.9]]))
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]])
    expected = [(0.5 * 0.25) ** 0.5, (0.1 * 0.8 * 0.2 * 0.9) ** 0.25]
    assert sequence_confidence(lp, mask).tolist() == pytest.approx(expected)
    # totals equalised over ranks: extra samples go to the least capable prompt with fewest samples
    assert equalize_counts([1, 2, 1], torch.tensor([0.9, 0.1, 0.2]), 7) == [2, 3, 2]


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


def test_capability_rises_so_samples_fall_and_temperature_rises():
    from training.step3_rlhf.esrl import CapabilityEstimator, sample_counts, temperatures

    est = CapabilityEstimator(confidence_weight=0.5, decay=0.5)
    assert est.capability([3]).tolist() == [0.25]                     # no history: conf 0, score 0.5
    est.update({1: 0.2, 2: 0.9}, {1: -1.0, 2: 3.0})                   # round mean 1, std 2
    c = est.capability([1, 2, 5])
    s1, s2 = 1 / (1 + torch.e ** 1.0), 1 / (1 + torch.e ** -1.0)      # sigmoid(-1), sigmoid(1)
    assert c.tolist() == pytest.approx([0.5 * 0.2 + 0.5 * s1, 0.5 * 0.9 + 0.5 * s2, 0.5 * 0.55 + 0.25], abs=1e-6)
    ks, ts = sample_counts(c, 1, 4), temperatures(c, 0.7, 1.3)
    assert ks[0] > ks[1] and ts[0] < ts[1]
    before = est.capability([1])
    est.update({1: 0.95}, {1: 3.0, 2: 3.0})                            # prompt 1 got better
    after = est.capability([1])
    assert after > before
    assert sample_counts(after, 1, 4)[0] <= sample_counts(before, 1, 4)[0]
    assert temperatures(after, 0.7, 1.3) > temperatures(before, 0.7, 1.3)
    copy = CapabilityEstimator(0.5, 0.5)
    copy.load_state_dict(est.state_dict())
    assert copy.capability([1, 2, 7]).tolist() == est.capability([1, 2, 7]).tolist()


def esrl_args(sft_dir, prompts, out, *extra):
    # chrF to `output` is a graded reward, so even the weak test model gets a learning signal
    return step3_args(sft_dir, sft_dir, prompts, out, "--use_reward_model", "false", "--reward_functions",
                      "examples.rlhf_with_comet_reward.chrf:reward", *extra, seed=4)


def one_round(argv):
    """Build the engine and trainer, run one round of experience; count what each pass saw."""
    from training.step3_rlhf.build import build_sources
    from training.step3_rlhf.rollout import ExperienceMaker
    from training.step3_rlhf.update import PPOUpdater
    from training.step3_rlhf.rlhf_engine import DeepSpeedRLHFEngine
    from utils.config import RLHFConfig, parse_config
    from utils.data import load_step_records
    from utils.data.rlhf import tokenize_prompts
    from utils.losses import token_logprobs
    from utils.models import load_tokenizer_for
    from utils.run import start

    cfg = parse_config(RLHFConfig, argv)
    start(cfg)
    tok = load_tokenizer_for(cfg, cfg.actor_model_name_or_path, padding_side="left")
    data = tokenize_prompts(load_step_records(cfg.data_path, cfg.data_split, step=2, seed=1).train, tok,
                            cfg.max_prompt_seq_len, cfg.max_seq_len, False)
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
    generate = trainer.generate

    def spy(*a, **kw):
        h = rlhf.actor.module.register_forward_hook(lambda *x: seen["grad_in_generate"].append(torch.is_grad_enabled()))
        try:
            return generate(*a, **kw)
        finally:
            h.remove()
    trainer.generate = spy
    exp, stats = trainer.make_experience(data[:8], list(range(8)))
    # a separate forward per row, without padding, must give the same log-probs
    diffs = []
    with torch.no_grad():
        for i in range(exp.sequences.shape[0]):
            keep = exp.attention_mask[i].bool()
            ids = exp.sequences[i][keep][None]
            lp = token_logprobs(rlhf.actor.module(input_ids=ids).logits, ids)[0]
            m = exp.action_mask[i].bool()
            diffs.append(float((exp.logprobs[i][m] - lp[-int(m.sum()):]).abs().max()))
    passes = {k: list(v) for k, v in seen.items()}     # the experience passes only, not training's
    step, minibatches = updater.step, []
    updater.step = lambda mb, *a: (minibatches.append(mb.sequences.shape[0]), step(mb, *a))[1]
    updater.train_on([exp], 0)
    return {"seen": passes, "stats": stats, "rows": exp.sequences.shape[0], "diff": max(diffs),
            "counters": dict(trainer.counters), "minibatches": minibatches}


def test_dynamic_sampling_scores_fewer_sequences_and_two_stage_logprobs_match(sft_dir, prompts, tmp_path):
    argv = esrl_args(sft_dir, prompts, tmp_path / "o", "--dynamic_sampling", "--esrl_min_samples", 2,
                     "--esrl_max_samples", 3, "--esrl_eliminate_ratio", 0.25)
    r = in_fresh_process(one_round, argv)
    sampled = r["counters"]["sampled_sequences"]
    # no history: capability 0.25 -> round(3 - 0.25) = 3 samples for each of the 8 prompts
    assert sampled == 24 and r["stats"]["esrl/samples_per_prompt"] == 3
    kept = sampled - int(0.25 * sampled)
    assert r["rows"] == kept == 18 and r["counters"]["scored_sequences"] == 18
    assert sum(r["seen"]["ref"]) == sum(r["seen"]["critic"]) == sum(r["seen"]["reward"]) == kept
    assert r["seen"]["grad_in_generate"] and not any(r["seen"]["grad_in_generate"])
    assert r["diff"] < 1e-5
    # minibatches hold at most --per_device_training_batch_size (4) sequences: the fixed count per
    # round is ceil(18 / 4) = 5, for the most a round can keep (8 prompts x 3 samples, less 25%)
    assert r["minibatches"] == [4, 4, 4, 3, 3]


def test_plain_ppo_scores_every_sample(sft_dir, prompts, tmp_path):
    r = in_fresh_process(one_round, esrl_args(sft_dir, prompts, tmp_path / "o"))
    assert r["counters"]["sampled_sequences"] == r["counters"]["scored_sequences"] == 8
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
