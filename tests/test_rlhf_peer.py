"""Step-3 behaviour of DeepSpeed-Chat's and the fork's flags, on the tiny models."""
from __future__ import annotations

import pytest
import torch

from tests.conftest import in_fresh_process, load_weights, read_metrics, recording, run_module, step3_args

MODULE = "training.step3_rlhf.main"


def step_counts(argv):
    """Run step 3 in this (fresh) process; the optimizer steps each engine took, and whether a
    reference model was built."""
    import training.step3_rlhf.build as build
    from training.step3_rlhf.main import main

    built = recording(build, "DeepSpeedRLHFEngine")
    main(argv)
    engine = built[0]
    return engine.actor.global_steps, engine.critic.global_steps, engine.ref is None


def test_critic_first_mini_epochs_accumulation_and_no_kl(sft_dir, rm_dir, prompts, tmp_path):
    out = tmp_path / "ppo"
    # 8 prompts a round in minibatches of 4: 2 minibatches x 2 mini-epochs = 4 updates a pass, 2 steps
    # with accumulation 2. Round 1 trains the critic alone (one pass), round 2 both.
    argv = step3_args(sft_dir, rm_dir, prompts, out, "--max_steps", 2, "--critic_go_first_steps", 1,
                      "--ppo_mini_epochs", 2, "--gradient_accumulation_steps", 2, "--remove_kl_penalty",
                      "--add_pretrained_loss", "--reward_functions", "examples.demo.task:reward")
    actor_steps, critic_steps, no_ref = in_fresh_process(step_counts, argv)
    assert (actor_steps, critic_steps, no_ref) == (2, 4, True)
    rows = read_metrics(out)
    assert "pg_loss" not in rows[0] and "vf_loss" in rows[0]
    assert rows[1]["ptx_loss"] > 0 and rows[0]["kl"] == 0.0 and rows[1]["kl"] == 0.0


def test_critic_first_round_leaves_the_actor_untouched(sft_dir, rm_dir, prompts, tmp_path):
    out = tmp_path / "first"
    p = run_module(MODULE, step3_args(sft_dir, rm_dir, prompts, out, "--max_steps", 1, "--critic_go_first_steps",
                                      1, "--print_answers", "--use_reward_model", "false", "--reward_functions",
                                      "examples.demo.task:reward", "--reward_bias", "0.25"))
    sft, actor = load_weights(sft_dir), load_weights(out / "actor")
    assert all(torch.equal(sft[k], actor[k]) for k in sft)
    assert "[answer] step 1\n--- prompt ---\n" in p.stdout
    row = read_metrics(out)[0]
    assert row["reward/total"] == pytest.approx(row["reward/reward"] + 0.25, abs=1e-6)


def test_reward_type_seq_trains_without_a_critic(sft_dir, prompts, tmp_path):
    out = tmp_path / "seq"
    p = run_module(MODULE, ["--actor_model_name_or_path", str(sft_dir), "--data_path", str(prompts),
                            "--output_dir", str(out), "--reward_functions", "examples.demo.task:reward",
                            "--use_reward_model", "false", "--reward_type", "seq", "--max_steps", "2",
                            "--max_prompt_seq_len", "32", "--max_answer_seq_len", "6",
                            "--per_device_generation_batch_size", "8", "--actor_learning_rate", "1e-3",
                            "--disable_tqdm", "--deepspeed"])
    assert "[flags] --reward_type seq: sequence-level credit needs no value function" in p.stdout
    assert "[flags] --deepspeed: DeepSpeed is always the engine here" in p.stdout
    assert (out / "actor").is_dir() and not (out / "critic").exists()
    assert "vf_loss" not in read_metrics(out)[0]


class _Rule:
    """A reward source that scores an answer by its length in characters."""
    raw = None

    def raw_scores(self, inputs):
        return torch.tensor([float(len(a)) for a in inputs.answers])


def test_update_reference_with_sampling_keeps_the_better_target(tokenizer):
    from types import SimpleNamespace

    from training.step3_rlhf.rollout import sft_targets
    from utils.data.rlhf import PromptExample
    from utils.data.encoding import IGNORE_INDEX, Example
    from utils.rewards import RewardInputs

    def prompt(text, ref):
        p_ids, r_ids = tokenizer(text)["input_ids"], tokenizer(ref, add_special_tokens=False)["input_ids"] + [2]
        return PromptExample(p_ids, text, ref, text, Example(p_ids + r_ids, [IGNORE_INDEX] * len(p_ids) + r_ids))

    prompts = [prompt("User: a\nAssistant: ", "short"), prompt("User: b\nAssistant: ", "a much longer answer")]
    answers = [[5, 6, 7], [8]]
    inputs = RewardInputs(prompts=[p.prompt for p in prompts], answers=["a longer sample", "x"],
                          references=[p.reference for p in prompts], sources=[p.source for p in prompts],
                          prompt_ids=[p.prompt_ids for p in prompts], answer_ids=answers)
    maker = SimpleNamespace(cfg=SimpleNamespace(update_reference_with_sampling=True), sources={"len": _Rule()},
                            weights={"len": 1.0})
    targets = sft_targets(maker, prompts, answers, inputs)
    # row 0: the sample (15 chars) beats "short" (5); row 1: "x" loses to the reference
    assert targets[0] == Example(prompts[0].prompt_ids + [5, 6, 7], [IGNORE_INDEX] * len(prompts[0].prompt_ids)
                                 + [5, 6, 7])
    assert targets[1] is prompts[1].sft


def test_two_rule_functions_of_one_name_both_count():
    from types import SimpleNamespace

    from training.step3_rlhf.build import build_sources
    from utils.config import ConfigError

    cfg = SimpleNamespace(use_reward_model=False, weights_comet_model=[], reward_classifier_weights=[],
                          reward_function_weights=[1.0, 0.5],
                          reward_functions=["examples.demo.task:reward", "examples.rlhf_with_comet_reward.chrf:reward"])
    sources, weights = build_sources(cfg, None, [])
    assert weights == {"reward": 1.0, "examples.rlhf_with_comet_reward.chrf:reward": 0.5}
    assert sources["examples.rlhf_with_comet_reward.chrf:reward"].name == "examples.rlhf_with_comet_reward.chrf:reward"
    cfg.reward_functions = ["examples.demo.task:reward", "examples.demo.task:reward"]
    with pytest.raises(ConfigError, match="names a function twice"):
        build_sources(cfg, None, [])


def test_minibatch_order_changes_from_round_to_round():
    from dataclasses import fields
    from types import SimpleNamespace

    from training.step3_rlhf.experience import Experience
    from training.step3_rlhf.update import PPOUpdater

    n = 8
    t = torch.arange(n, dtype=torch.float32)[:, None]
    exp = Experience(*([t] * (len(fields(Experience)) - 2)), list(range(n)), [None] * n)
    updater = PPOUpdater.__new__(PPOUpdater)
    # what a window needs before its micro-batches: the loss counts (no SFT or pretraining loss here)
    updater.cfg = SimpleNamespace(seed=1, ppo_epochs=1, ppo_mini_epochs=1, gradient_accumulation_steps=1,
                                  per_device_generation_batch_size=n, per_device_training_batch_size=4,
                                  dynamic_sampling=False, num_samples_per_prompt=1, loss_agg_mode="token-mean",
                                  add_sft_loss=False, add_pretrained_loss=False)
    updater.ptx = None
    seen = []
    updater.step = lambda mb, *a: seen.append(mb.sequences[:, 0].tolist()) or {}
    orders = []
    for round_index in (3, 4, 3):
        seen.clear()
        updater.train_on([exp], round_index)
        orders.append([x for mb in seen for x in mb])
    assert orders[0] != orders[1] and orders[0] == orders[2]
    assert sorted(orders[0]) == list(range(n))


def test_reward_normalizer_uses_every_ranks_rewards():
    from training.step3_rlhf.rollout import RewardNormalizer

    other_rank = [3.0, 5.0]

    def two_ranks(mine):        # rank 0 of two: its values, then rank 1's
        return mine + other_rank

    # mean 2.75, population std sqrt(8.75 / 4) = 1.4790 over [1, 2, 3, 5]
    batch = RewardNormalizer("batch", 8, gather=two_ranks)(torch.tensor([1.0, 2.0]))
    assert torch.allclose(batch, torch.tensor([-1.75, -0.75]) / (8.75 / 4) ** 0.5, atol=1e-6)
    queue = RewardNormalizer("queue", 3, gather=two_ranks)
    queue(torch.tensor([1.0, 2.0]))
    assert list(queue.queue) == [2.0, 3.0, 5.0]   # the last 3 of all ranks' rewards, the same on every rank


def test_resume_is_bit_exact_with_ptx_stream_adaptive_kl_queue_and_ema(sft_dir, rm_dir, prompts, tmp_path):
    text = tmp_path / "pretrain.txt"
    text.write_text("".join(f"the {c} owl number {i} is {c}\n" for i in range(200) for c in ("red",)))
    extra = ["--add_pretrained_loss", "--unsupervised_dataset_name", text, "--max_seq_len", 32, "--adaptive_kl",
             "--target_kl", 0.01, "--reward_normalization", "queue", "--reward_queue_size", 20, "--enable_ema",
             "--save_steps", 2, "--reward_functions", "examples.demo.task:reward"]
    full, part = tmp_path / "full", tmp_path / "part"
    run_module(MODULE, step3_args(sft_dir, rm_dir, prompts, full, "--max_steps", 4, *extra))
    run_module(MODULE, step3_args(sft_dir, rm_dir, prompts, part, "--max_steps", 2, *extra))
    run_module(MODULE, step3_args(sft_dir, rm_dir, prompts, part, "--max_steps", 4, "--resume", *extra))
    for sub in ("actor", "critic", "actor_ema"):
        a, b = load_weights(full / sub), load_weights(part / sub)
        assert all(torch.equal(a[k], b[k]) for k in a), sub
    rows_full, rows_part = read_metrics(full), read_metrics(part)
    assert [r["kl_ctl"] for r in rows_part][-2:] == [r["kl_ctl"] for r in rows_full][-2:]
    assert rows_full[-1]["kl_ctl"] != rows_full[0]["kl_ctl"]
