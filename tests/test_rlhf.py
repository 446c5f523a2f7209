"""Step 3 end to end on tiny models: parameters, extra losses, 2 processes (resume: test_exact_resume.py,
test_rlhf_peer.py)."""
from __future__ import annotations

import pytest
import torch

from tests.conftest import in_fresh_process, load_weights, read_metrics, recording, run_module, step3_args

MODULE = "training.step3_rlhf.main"


def rlhf_args(sft_dir, rm_dir, prompts, out, *extra):
    return step3_args(sft_dir, rm_dir, prompts, out, "--reward_functions", "examples.demo.task:reward", *extra)


def changed_frozen_parameters(argv, sft_dir, rm_dir) -> list[str]:
    """Run PPO (in a fresh process); list reference / reward parameters that moved."""
    import training.step3_rlhf.build as build
    from training.step3_rlhf.main import main

    built = recording(build, "DeepSpeedRLHFEngine")
    main(argv)
    engine = built[0]
    sft, rm = load_weights(sft_dir), load_weights(rm_dir)
    return ([f"ref {n}" for n, p in engine.ref.module.named_parameters() if not torch.equal(p, sft[n])]
            + [f"reward {n}" for n, p in engine.reward.module.named_parameters() if not torch.equal(p, rm[n])])


def test_short_run_trains_actor_and_critic_only(sft_dir, rm_dir, prompts, tmp_path):
    out = tmp_path / "ppo"
    # one minibatch per round: the logged ratio is the first minibatch's
    argv = rlhf_args(sft_dir, rm_dir, prompts, out, "--max_steps", 3, "--per_device_training_batch_size", 8)
    assert in_fresh_process(changed_frozen_parameters, argv, sft_dir, rm_dir) == []
    sft, rm = load_weights(sft_dir), load_weights(rm_dir)
    actor, critic = load_weights(out / "actor"), load_weights(out / "critic")
    assert all(not torch.equal(sft[k], actor[k]) for k in sft)
    assert all(not torch.equal(rm[k], critic[k]) for k in rm if k != "lm_head.weight")
    rows = read_metrics(out)
    assert len(rows) == 3
    first = rows[0]
    assert first["ratio"] == pytest.approx(1.0, abs=1e-6) and first["approx_kl"] == pytest.approx(0.0, abs=1e-6)
    for key in ("reward/reward_model", "reward/reward", "reward/total", "kl", "pg_loss", "vf_loss", "clipfrac",
                "entropy", "response_length", "phase/generation_s", "phase/actor_logprobs_s", "phase/scoring_s",
                "phase/reference_critic_s", "phase/update_s", "rollout/logprob_diff_max"):
        assert key in first, key
    # per round: every phase took time, and the generated tokens per second are this round's answer tokens
    # over its generation seconds
    tokens = [r["count/sampled_tokens"] for r in rows]
    for r, new in zip(rows, [tokens[0]] + [b - a for a, b in zip(tokens, tokens[1:])]):
        assert all(r[k] > 0 for k in r if k.startswith("phase/"))
        assert r["phase/generated_tokens_per_s"] == pytest.approx(new / r["phase/generation_s"], rel=1e-6)
        assert r["rollout/logprob_diff_max"] < 1e-4
    assert first["reward/total"] == pytest.approx(first["reward/reward_model"] + first["reward/reward"], abs=1e-5)
    lrs = [r["actor/lr"] for r in rows]
    assert 1e-3 > lrs[0] > lrs[1] > lrs[2] >= 0 and rows[0]["critic/lr"] == lrs[0]  # cosine from 1e-3, both
    assert (out / "training_curves.png").stat().st_size > 0


def test_extra_losses_enter_the_total(sft_dir, rm_dir, prompts, tmp_path):
    text = tmp_path / "pretrain.txt"
    text.write_text("the fox is red and the owl is gray\n" * 40)
    out = tmp_path / "extra"
    run_module(MODULE, rlhf_args(sft_dir, rm_dir, prompts, out, "--max_steps", 2, "--add_sft_loss",
                                 "--add_pretrained_loss", "--unsupervised_dataset_name", text))
    for r in read_metrics(out):
        want = 0.7 * r["pg_loss"] + 0.15 * r["sft_loss"] + 0.15 * r["ptx_loss"]
        assert r["loss"] == pytest.approx(want, abs=1e-5)
        assert r["sft_loss"] > 0 and r["ptx_loss"] > 0


def test_two_process_zero3(sft_dir, rm_dir, prompts, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "z3"
    # the actor's weights gathered once per generation (the default), decoding into a static KV cache
    run_module(MODULE, rlhf_args(sft_dir, rm_dir, prompts, out, "--max_steps", 2, "--actor_zero_stage", 3,
                                 "--critic_zero_stage", 3, "--cache_implementation", "static"), nproc=2)
    sft, actor = load_weights(sft_dir), load_weights(out / "actor")
    assert all(not torch.equal(sft[k], actor[k]) for k in sft)
    assert len(read_metrics(out)) == 2
    AutoModelForCausalLM.from_pretrained(out / "actor")


def test_hybrid_engine_switches_off_on_cpu(sft_dir, rm_dir, prompts, tmp_path):
    p = run_module(MODULE, rlhf_args(sft_dir, rm_dir, prompts, tmp_path / "he", "--max_steps", 1,
                                     "--enable_hybrid_engine"))
    assert "[flags] --enable_hybrid_engine: needs a GPU" in p.stdout


def test_adaptive_kl_and_reward_normalizer_by_hand():
    from training.step3_rlhf.rollout import AdaptiveKLController, RewardNormalizer

    kl = AdaptiveKLController(0.1, target=2.0, horizon=100)
    kl.update(4.0, n=10)   # error clipped to +0.2: 0.1 * (1 + 0.2 * 10/100)
    assert kl.value == pytest.approx(0.102)
    kl.update(1.9, n=50)   # error -0.05: 0.102 * (1 - 0.05 * 0.5)
    assert kl.value == pytest.approx(0.102 * 0.975)
    q = RewardNormalizer("queue", size=4)
    q(torch.tensor([0.0, 2.0]))
    out = q(torch.tensor([4.0, 6.0]))            # queue 0,2,4,6: mean 3, std sqrt(5)
    assert out.tolist() == pytest.approx([1 / 5 ** 0.5, 3 / 5 ** 0.5], abs=1e-5)
    assert RewardNormalizer("batch", 4)(torch.tensor([1.0, 3.0])).tolist() == pytest.approx([-1.0, 1.0], abs=1e-5)


def test_reward_model_source_scores_as_stock_transformers(rm_dir, tokenizer):
    from transformers import AutoModelForSequenceClassification

    from utils.data.encoding import encode_prompts, encode_responses
    from utils.models import reward_tokenizer_for_export
    from utils.rewards import RewardInputs, RewardModelSource

    rm = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    prompts = ["User: Repeat after me: fox red owl\nAssistant: ", "User: Repeat after me: cat\nAssistant: "]
    answers = ["fox red owl", ""]
    batch = RewardInputs(prompts, answers, ["", ""], prompts, encode_prompts(tokenizer, prompts),
                         encode_responses(tokenizer, answers))
    saved = reward_tokenizer_for_export(tokenizer)       # the tokenizer step 2 saves with a reward model
    with torch.no_grad():
        stock = torch.stack([rm(**saved(p + a, return_tensors="pt")).logits[0, 0] for p, a in zip(prompts, answers)])
    assert torch.equal(RewardModelSource(rm, tokenizer, 1, torch.device("cpu"))(batch), stock)
    torch.testing.assert_close(RewardModelSource(rm, tokenizer, 8, torch.device("cpu"))(batch), stock, atol=1e-6,
                               rtol=0)


def test_reward_model_reads_conversational_prompts_as_step2_chat_pairs(tokenizer):
    """A conversational prompt's answer reaches the reward model as step 2 encodes the chat pair of
    that conversation (its own chat template, the score read at EOS); text prompts in the same batch
    keep `prompt + answer`, in order."""
    from utils.data.preference import reward_model_ids, tokenize_preferences
    from utils.data.readers import Record
    from utils.rewards import RewardInputs, reward_inputs_ids

    head = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Repeat after me: fox red"}]
    text = "User: Repeat after me: cat\nAssistant: "
    batch = RewardInputs(["<rendered>", text, "<rendered>"], ["fox red", "cat", "owl"], [""] * 3, [""] * 3,
                         [[]] * 3, [[]] * 3, messages=[head, None, head])
    ids = reward_inputs_ids(tokenizer, batch)
    pair = Record("f", ":1", {"chosen": head + [{"role": "assistant", "content": "fox red"}],
                              "rejected": head + [{"role": "assistant", "content": "owl"}]})
    (trained,), _ = tokenize_preferences([pair], tokenizer, 128, joint=True)
    assert ids == [trained.chosen_ids, reward_model_ids(tokenizer, [text + "cat"])[0], trained.rejected_ids]
    assert tokenizer.decode(ids[0]) == "<s>System: be brief\nUser: Repeat after me: fox red\nAssistant: fox red</s>\n</s>"
    # the experience maker hands each prompt's turns on with its decoded answer
    import types

    from training.step3_rlhf.sampler import Sampler
    from utils.data.rlhf import prompt_examples

    (chat,), _ = prompt_examples([Record("f", ":1", {"prompt": head})], tokenizer, 64, 96, False)
    answer = tokenizer("fox red", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    inputs = Sampler.reward_inputs(types.SimpleNamespace(tok=tokenizer, stops=(tokenizer.eos_token_id,)), [chat], [answer])
    assert inputs.messages == [head] and inputs.answers == ["fox red"]
    assert reward_inputs_ids(tokenizer, inputs) == [trained.chosen_ids]


def trl_accuracy(completions, solution, **kwargs):
    """A reward function written for TRL's GRPOTrainer: completions in TRL's shape, a dataset column."""
    texts = [c if isinstance(c, str) else c[0]["content"] for c in completions]
    return [float(t == s) for t, s in zip(texts, solution)]


def our_reward(prompts, answers):
    return [float(len(a)) for a in answers]


def needs_trainer_state(completions, trainer_state):
    return [0.0] * len(completions)


def test_rule_rewards_get_the_arguments_they_name_and_the_rows_columns(tokenizer):
    import types

    from training.step3_rlhf.sampler import Sampler
    from utils.data.readers import Record
    from utils.data.rlhf import prompt_examples
    from utils.rewards import RuleSource, rule_arguments

    turns = [{"role": "user", "content": "Say fox"}]
    rows = [Record("f", ":1", {"prompt": turns, "solution": "fox", "level": 1}),
            Record("f", ":2", {"prompt": turns, "solution": "owl"})]
    chats, _ = prompt_examples(rows, tokenizer, 64, 96, False)
    assert [p.columns for p in chats] == [{"solution": "fox", "level": 1}, {"solution": "owl"}]
    answers = [tokenizer("fox", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]] * 2
    batch = Sampler.reward_inputs(types.SimpleNamespace(tok=tokenizer, stops=(tokenizer.eos_token_id,)), chats, answers)
    values = rule_arguments(batch)
    assert values["completions"] == [[{"role": "assistant", "content": "fox"}]] * 2
    assert values["solution"] == ["fox", "owl"] and values["level"] == [1, None]
    assert values["completion_ids"] == answers and values["answers"] == ["fox", "fox"]
    trl = RuleSource("tests.test_rlhf:trl_accuracy")
    trl.check({"solution", "level"})
    assert trl(batch).tolist() == [1.0, 0.0]
    assert RuleSource("tests.test_rlhf:our_reward")(batch).tolist() == [3.0, 3.0]   # no **kwargs: only its names
    text = [Record("g", ":1", {"prompt": "Say fox: ", "solution": "fox"})]
    batch = Sampler.reward_inputs(types.SimpleNamespace(tok=tokenizer, stops=(tokenizer.eos_token_id,)), prompt_examples(
        text, tokenizer, 64, 96, False)[0], answers[:1])
    assert rule_arguments(batch)["completions"] == ["fox"] and trl(batch).tolist() == [1.0]
    with pytest.raises(ValueError, match=r"^--reward_functions tests.test_rlhf:needs_trainer_state: "
                                         r"needs_trainer_state needs trainer_state; it can be given prompts, "
                                         r"answers, references, sources, completions, completion_ids, solution$"):
        RuleSource("tests.test_rlhf:needs_trainer_state").check({"solution"})


def test_missing_eos_penalty_and_ema(sft_dir, rm_dir, prompts, tmp_path):
    out = tmp_path / "noeos"
    run_module(MODULE, rlhf_args(sft_dir, rm_dir, prompts, out, "--max_steps", 2, "--max_answer_seq_len", 1,
                                 "--missing_eos_penalty", "-10", "--use_reward_model", "false", "--enable_ema"))
    rows = read_metrics(out)
    for r in rows:   # one new token: no answer can be right, and (almost) none ends in EOS
        assert r["reward/reward"] == 0.0
        assert r["reward/total"] == pytest.approx(-10 * (1 - r["eos_rate"]), abs=1e-5)
    sft, actor, ema = load_weights(sft_dir), load_weights(out / "actor"), load_weights(out / "actor_ema")
    k = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(ema[k], sft[k]) and not torch.equal(ema[k], actor[k])


def test_ema_of_a_bf16_actor_tracks_within_fp32_precision():
    from transformers import LlamaConfig, LlamaForCausalLM

    from training.step3_rlhf.rlhf_engine import ema_copy, ema_update

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    actor = LlamaForCausalLM(config).to(torch.bfloat16)
    ema, decay = ema_copy(actor), 0.992
    exact = [p.detach().double().clone() for p in actor.parameters()]
    naive = [p.detach().clone() for p in actor.parameters()]          # what a bf16 EMA would hold
    for _ in range(50):
        with torch.no_grad():
            for p in actor.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        ema_update(ema, actor, decay)
        for e, n, p in zip(exact, naive, actor.parameters()):
            e.mul_(decay).add_(p.detach().double(), alpha=1 - decay)
            n.mul_(decay).add_(p.detach(), alpha=1 - decay)
    assert all(e.dtype == torch.float32 for e in ema.parameters())
    err = max(float((e.double() - x).abs().max()) for e, x in zip(ema.parameters(), exact))
    naive_err = max(float((n.double() - x).abs().max()) for n, x in zip(naive, exact))
    assert err < 1e-5 and naive_err > 1000 * err, (err, naive_err)


@pytest.mark.parametrize("keep", [False, True], ids=["default", "dropout_kept"])
def test_first_minibatch_ratio_is_one_with_dropout_off_by_default(sft_dir, rm_dir, prompts, tmp_path, keep):
    """A model whose config has dropout 0.1: step 3 switches it off, so the update's first forward
    equals the sampling-time one (ratio 1, approx_kl 0); kept on, the two differ."""
    import json
    import shutil

    actor = tmp_path / "actor0"
    shutil.copytree(sft_dir, actor)
    config = json.loads((actor / "config.json").read_text())
    (actor / "config.json").write_text(json.dumps({**config, "attention_dropout": 0.1}))
    out = tmp_path / "out"
    run_module(MODULE, rlhf_args(actor, rm_dir, prompts, out, "--max_steps", 1, "--per_device_training_batch_size",
                                 8, "--ppo_epochs", 1, *(["--disable_actor_dropout", "false"] if keep else [])))
    row = read_metrics(out)[0]
    if keep:
        assert abs(row["ratio"] - 1) > 1e-4 and row["approx_kl"] > 1e-6
    else:
        assert row["ratio"] == 1.0 and row["approx_kl"] == 0.0
