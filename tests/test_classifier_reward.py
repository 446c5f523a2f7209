"""A Hugging Face sequence classifier as a step-3 reward source: labels, scores by hand and against
stock transformers on a tiny classifier with another tokenizer than the actor's, flags, a PPO run."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import read_metrics, run_module, step3_args
from utils.config import ConfigError
from utils.rewards import RewardInputs
from utils.rewards.classifier import build_classifier_sources, label_scores, resolve_label


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    from examples.demo.build_model import corpus
    from devtools.tiny_classifier import build_tiny_classifier

    return build_tiny_classifier(corpus()[:300], tmp_path_factory.mktemp("cls") / "tiny-sentiment")


def test_labels_by_name_index_and_case():
    id2label = {0: "NEGATIVE", 1: "POSITIVE"}
    assert resolve_label("POSITIVE", id2label, "m") == 1
    assert resolve_label("negative", id2label, "m") == 0
    assert resolve_label("1", id2label, "m") == 1
    with pytest.raises(ConfigError, match=r"--reward_classifier_label POS: not a label of m \(labels: 0=NEGATIVE, "
                                          r"1=POSITIVE\)"):
        resolve_label("POS", id2label, "m")
    with pytest.raises(ConfigError, match=r"--reward_classifier_label 2: m has 2 label\(s\) \(0..1\)"):
        resolve_label("2", id2label, "m")


def test_label_scores_by_hand():
    logits = torch.tensor([[1.0, 3.0], [0.0, 0.0]])
    assert label_scores(logits, 1, "logit").tolist() == [3.0, 0.0]
    # log-softmax: 3 - ln(e + e^3); ln(1/2)
    assert label_scores(logits, 1, "logprob").tolist() == pytest.approx(
        [3 - math.log(math.e + math.e ** 3), math.log(0.5)], abs=1e-6)


def cfg(path, **kw):
    base = dict(reward_classifier=[str(path)], reward_classifier_label=["POSITIVE"], reward_classifier_score="logit",
                reward_classifier_input="prompt_answer", reward_classifier_batch_size=3, devices_reward_classifier=[],
                trust_remote_code=False)
    return SimpleNamespace(**{**base, **kw})


def inputs(prompts, answers):
    return RewardInputs(prompts, answers, [""] * len(answers), prompts, [[]] * len(answers), [[]] * len(answers))


def test_scores_equal_stock_transformers_one_text_at_a_time(classifier_dir):
    """Batched and right-padded with the classifier's own tokenizer (gpt2-style: no pad token),
    the scores are what stock transformers gives each text alone."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    prompts = ["User: Repeat after me: fox red owl\nAssistant: "] * 3 + ["User: hi\nAssistant: "] * 2
    answers = ["fox red owl", "fox", "owl owl red fox", "hello", "a much longer answer than the others"]
    (logit,) = build_classifier_sources(cfg(classifier_dir))
    (logprob,) = build_classifier_sources(cfg(classifier_dir, reward_classifier_score="logprob",
                                              reward_classifier_input="answer", reward_classifier_label=["0"]))
    got_logit, got_logprob = logit(inputs(prompts, answers)), logprob(inputs(prompts, answers))
    model = AutoModelForSequenceClassification.from_pretrained(classifier_dir).eval()
    tok = AutoTokenizer.from_pretrained(classifier_dir)
    assert tok.pad_token is None   # the source pads with EOS and tells the model so
    for i, (p, a) in enumerate(zip(prompts, answers)):
        with torch.no_grad():
            whole = model(**tok(p + a, return_tensors="pt")).logits[0]
            alone = model(**tok(a, return_tensors="pt")).logits[0]
        assert float(got_logit[i]) == pytest.approx(float(whole[1]), abs=1e-5)
        assert float(got_logprob[i]) == pytest.approx(float(torch.log_softmax(alone, -1)[0]), abs=1e-5)


def test_a_classifier_with_several_labels_needs_one_named(classifier_dir):
    with pytest.raises(ConfigError, match=r"has 2 labels: name the one to reward with --reward_classifier_label "
                                          r"\(NEGATIVE, POSITIVE\)"):
        build_classifier_sources(cfg(classifier_dir, reward_classifier_label=[]))
    with pytest.raises(ConfigError, match="cannot load a sequence classifier"):
        build_classifier_sources(cfg(classifier_dir.parent / "missing"))


def test_ppo_with_a_classifier_and_a_rule_sums_the_weighted_sources(sft_dir, prompts, classifier_dir, tmp_path):
    out = tmp_path / "cls"
    run_module("training.step3_rlhf.main", step3_args(
        sft_dir, sft_dir, prompts, out, "--reward_classifier", classifier_dir, "--reward_classifier_label", "POSITIVE",
        "--reward_classifier_weights", 0.5, "--reward_functions", "examples.demo.task:reward",
        "--advantage_estimator", "rloo", "--num_samples_per_prompt", 2, "--max_steps", 2))
    rows = read_metrics(out)
    assert len(rows) == 2 and "reward/reward_model" not in rows[0]   # the classifier turns the RM default off
    for r in rows:
        assert r["reward/total"] == pytest.approx(0.5 * r["reward/classifier0"] + r["reward/reward"], abs=1e-5)
    assert rows[0]["reward/classifier0"] != rows[1]["reward/classifier0"]


def test_classifier_flag_checks(tmp_path, capsys):
    from utils.cli import parse_config
    from utils.config import RLHFConfig

    base = ["--actor_model_name_or_path", "a", "--output_dir", str(tmp_path), "--data_path", "d",
            "--advantage_estimator", "grpo", "--num_samples_per_prompt", "2"]
    ok = parse_config(RLHFConfig, [*base, "--reward_classifier", "c1", "c2"])
    assert ok.reward_classifier_weights == [1.0, 1.0] and ok.use_reward_model is False
    for extra, message in [
        (["--reward_classifier", "c1", "--reward_classifier_weights", "1", "2"],
         "--reward_classifier_weights has 2 values for 1 --reward_classifier"),
        (["--reward_classifier", "c1", "c2", "c3", "--reward_classifier_label", "a", "b"],
         "--reward_classifier_label has 2 values for 3 --reward_classifier (give one for all, or one each)"),
        (["--reward_classifier_label", "POSITIVE", "--use_reward_model", "--critic_model_name_or_path", "c"],
         "--reward_classifier_label is given but --reward_classifier is not"),
    ]:
        with pytest.raises(SystemExit) as e:
            parse_config(RLHFConfig, [*base, *extra])
        assert e.value.code == 2 and capsys.readouterr().err.strip() == f"error: {message}"
