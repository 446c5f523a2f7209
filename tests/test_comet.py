"""COMET models as step-3 rewards: the offline builder, loading, src/mt/ref mapping, weights,
running normalisation, bad input, and PPO runs with one and two processes."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, in_fresh_process, load_weights, read_metrics, run_module, step3_args, write_jsonl

MODULE = "training.step3_rlhf.main"
EXAMPLE = ROOT / "examples" / "rlhf_with_comet_reward" / "data"


def _texts():
    return [line for line in (EXAMPLE / "comet_train.csv").read_text().splitlines()[1:200]]


@pytest.fixture(scope="module")
def comet_dirs(tmp_path_factory):
    """Untrained tiny COMET models, built in one place and then moved (they must be self-contained)."""
    from devtools.tiny_comet import build_tiny_comet

    built, moved = tmp_path_factory.mktemp("comet_built"), tmp_path_factory.mktemp("comet")
    out = {}
    for kind in ("regression", "referenceless"):
        build_tiny_comet(built / kind, _texts(), kind=kind, vocab_size=120, hidden_size=32, layers=1, seed=3)
        out[kind] = Path(shutil.move(str(built / kind), str(moved / kind)))
    shutil.rmtree(built)
    return out


@pytest.fixture(scope="module")
def mt_prompts(tmp_path_factory):
    lines = (EXAMPLE / "rlhf" / "train.txt").read_text().splitlines()
    return write_jsonl(tmp_path_factory.mktemp("mt") / "prompts.txt", lines[:32])


def comet_args(sft_dir, prompts, out, *extra):
    return step3_args(sft_dir, sft_dir, prompts, out, "--use_comet_model", *extra, prompt_len=64, seed=5)


class StandIn:
    """COMET's inference interface; the score tells the fields apart: len(src) + 100 len(mt) + 10^4 len(ref)."""

    def __init__(self, needs_ref: bool):
        self.needs_ref = needs_ref

    def requires_references(self):
        return self.needs_ref

    def prepare_for_inference(self, samples):
        return {"lengths": torch.tensor([[len(s["src"]), len(s["mt"]), len(s.get("ref", ""))] for s in samples])}

    def predict_step(self, batch):
        n = batch["lengths"].float()
        return {"scores": n[:, 0] + 100 * n[:, 1] + 1e4 * n[:, 2]}


def test_comet_source_maps_src_mt_ref():
    from utils.rewards import RewardInputs
    from utils.rewards.comet import CometSource

    batch = RewardInputs(prompts=["User: Translate to English: ka miro nok\nAssistant: "] * 2,
                         answers=["the cat", "a cat sees"], references=["the cat sees", "the cat sees"],
                         sources=["ka miro nok", "ka miro nok"], prompt_ids=[[1], [1]], answer_ids=[[2], [2]])
    with_ref = CometSource(StandIn(True), "comet0", batch_size=1, device="cpu", use_reference=True, normalize=False)
    assert with_ref(batch).tolist() == [11 + 700 + 120000, 11 + 1000 + 120000]
    assert with_ref.samples(batch)[1] == {"src": "ka miro nok", "mt": "a cat sees", "ref": "the cat sees"}
    free = CometSource(StandIn(False), "comet1", batch_size=8, device="cpu", use_reference=False, normalize=False)
    assert free(batch).tolist() == [11 + 700, 11 + 1000]
    assert free.samples(batch)[0] == {"src": "ka miro nok", "mt": "the cat"}


def test_running_mean_std_by_hand():
    from utils.rewards.comet import RunningMeanStd

    norm = RunningMeanStd()
    first = norm(torch.tensor([1.0, 2.0, 3.0]))          # mean 2, population std sqrt(2/3)
    assert first.tolist() == pytest.approx([-(1.5 ** 0.5), 0.0, 1.5 ** 0.5], abs=1e-6)
    second = norm(torch.tensor([4.0, 5.0]))              # all of 1..5: mean 3, std sqrt(2)
    assert second.tolist() == pytest.approx([1 / 2 ** 0.5, 2 / 2 ** 0.5], abs=1e-6)
    copy = RunningMeanStd()
    copy.load_state_dict(norm.state_dict())
    assert (copy.mean, copy.std) == pytest.approx((3.0, 2 ** 0.5))


def test_weighted_combination_and_default_weights_by_hand():
    from utils.config import RLHFConfig
    from utils.rewards import combine

    total = combine({"reward_model": torch.tensor([2.0, -1.0]), "comet0": torch.tensor([0.2, 0.8]),
                     "comet1": torch.tensor([1.0, 0.0])}, {"reward_model": 0.5, "comet0": 0.25, "comet1": 0.75})
    assert total.tolist() == pytest.approx([1.0 + 0.05 + 0.75, -0.5 + 0.2 + 0.0])
    cfg = RLHFConfig(actor_model_name_or_path="a", critic_model_name_or_path="c", data_path="d", output_dir="o",
                     use_comet_model=True, comet_model_path=["m1", "m2", "m3", "m4"])
    assert cfg.weights_comet_model == [0.25] * 4 and cfg.use_reward_model is False
    assert RLHFConfig(actor_model_name_or_path="a", critic_model_name_or_path="c", data_path="d",
                      output_dir="o").use_reward_model is True


def test_built_model_moves_loads_and_matches_comet_predict(comet_dirs):
    from utils.rewards.comet import comet_scores, load_comet

    samples = [{"src": "ka miro zali nok", "mt": "the red cat sees", "ref": "the red cat sees"},
               {"src": "u tavu beko", "mt": "a dog", "ref": "a dog watches"},
               {"src": "ka nalu ruma", "mt": "the river likes", "ref": "the river likes"}]
    for kind, needs_ref in (("regression", True), ("referenceless", False)):
        model = load_comet(str(comet_dirs[kind]))
        assert model.requires_references() is needs_ref
        rows = samples if needs_ref else [{"src": s["src"], "mt": s["mt"]} for s in samples]
        ours = comet_scores(model, rows, batch_size=2, device="cpu")
        stock = model.predict(rows, batch_size=8, gpus=0, progress_bar=False, num_workers=0).scores
        torch.testing.assert_close(ours, torch.tensor(stock), atol=1e-5, rtol=0)
    assert load_comet(str(comet_dirs["regression"] / "checkpoints" / "model.ckpt")).requires_references()


def test_builder_training_lowers_comet_loss(tmp_path):
    from devtools.tiny_comet import build_encoder, new_metric, read_scores_csv, train_metric

    rows = read_scores_csv(EXAMPLE / "comet_train.csv", need_ref=True)[:64]
    enc = build_encoder(_texts(), tmp_path / "encoder", vocab_size=120, hidden_size=32, layers=1)
    losses = train_metric(new_metric(enc), rows, epochs=6, batch_size=16, lr=3e-3, seed=0)
    assert losses[-1] < 0.6 * losses[0]


def comet_flow(argv):
    """PPO for one round with a stand-in for COMET's forward; returns what COMET saw and the log."""
    import utils.rewards.comet as comet
    from training.step3_rlhf.main import main

    seen = []
    real = comet.comet_scores

    def recording(model, samples, batch_size, device):
        scores = real(model, samples, batch_size, device)  # the real model runs; its input is recorded
        seen.append((samples, scores.tolist()))
        stand_in = StandIn(needs_ref=True)
        return stand_in.predict_step(stand_in.prepare_for_inference(samples))["scores"]

    comet.comet_scores = recording
    return seen, main(argv)["history"]


def test_scores_flow_into_ppo_rewards_with_weights(sft_dir, mt_prompts, comet_dirs, tmp_path):
    import json

    rows = [json.loads(line) for line in mt_prompts.read_text().splitlines()]
    reference = {r["input"]: r["output"] for r in rows}
    argv = comet_args(sft_dir, mt_prompts, tmp_path / "flow", "--max_steps", 1, "--comet_model_path",
                      comet_dirs["regression"], comet_dirs["referenceless"], "--weights_comet_model", 0.3, 0.7)
    seen, history = in_fresh_process(comet_flow, argv)
    (ref_based, _), (ref_free, _) = seen
    assert len(ref_based) == len(ref_free) == 8
    for a, b in zip(ref_based, ref_free):
        assert set(a) == {"src", "mt", "ref"} and set(b) == {"src", "mt"}
        assert a["ref"] == reference[a["src"]] and b["src"] == a["src"] and b["mt"] == a["mt"]
    assert any(a["mt"] != a["ref"] for a in ref_based)
    s0 = [len(a["src"]) + 100 * len(a["mt"]) + 1e4 * len(a["ref"]) for a in ref_based]
    s1 = [len(b["src"]) + 100 * len(b["mt"]) for b in ref_free]
    log = history[0]
    assert log["reward/comet0"] == pytest.approx(sum(s0) / 8) and log["reward/comet1"] == pytest.approx(sum(s1) / 8)
    assert log["reward/total"] == pytest.approx(0.3 * sum(s0) / 8 + 0.7 * sum(s1) / 8)
    assert "reward/reward_model" not in log


@pytest.mark.parametrize("extra, message", [
    (["--comet_model_path", "/nonexistent/comet"], "error: --comet_model_path /nonexistent/comet: no such checkpoint "
                                                   "file or folder"),
    (["--comet_model_path", "{reg}", "--weights_comet_model", "0.5", "0.5"],
     "error: --weights_comet_model has 2 values for 1 --comet_model_path"),
    (["--comet_model_path", "{reg}", "--data_path", "{noref}"],
     "error: --comet_model_path {reg}: this COMET model needs references, but some prompts in --data_path have no "
     "`output`"),
])
def test_bad_comet_input_is_one_line(sft_dir, mt_prompts, comet_dirs, tmp_path, extra, message):
    noref = write_jsonl(tmp_path / "noref.txt", [{"instruction": "Translate: {input}\n", "input": "ka miro nok"}])
    fill = {"reg": comet_dirs["regression"], "noref": noref}
    out = tmp_path / "out"
    p = run_module(MODULE, comet_args(sft_dir, mt_prompts, out, *[e.format(**fill) for e in extra]), check=False)
    assert p.returncode in (1, 2) and "Traceback" not in p.stderr and not out.exists()
    assert p.stderr.strip().splitlines()[-1] == message.format(**fill)


def test_two_process_grpo_run_with_two_normalised_comet_models(sft_dir, mt_prompts, comet_dirs, tmp_path):
    """COMET rewards under a critic-free estimator, with the extra SFT loss on the references."""
    out = tmp_path / "two"
    run_module(MODULE, comet_args(sft_dir, mt_prompts, out, "--max_steps", 2, "--comet_model_path",
                                  comet_dirs["regression"], comet_dirs["referenceless"], "--weights_comet_model",
                                  0.25, 0.75, "--comet_reward_normalization", "--comet_model_batch_size", 3,
                                  "--advantage_estimator", "grpo", "--num_samples_per_prompt", 2, "--add_sft_loss"),
               nproc=2)
    rows = read_metrics(out)
    assert len(rows) == 2 and not (out / "critic").exists()
    assert [r["count/trained_sequences"] for r in rows] == [8 * 2, 2 * 8 * 2]    # per rank, cumulative
    assert all(r["sft_loss"] > 0 and "vf_loss" not in r for r in rows)
    for k in ("reward/comet0", "reward/comet1", "reward/comet0_raw", "reward/comet1_raw"):
        assert all(torch.isfinite(torch.tensor(r[k])) for r in rows)
    # the first round is normalised by its own mean, gathered over both ranks
    assert rows[0]["reward/comet0"] == pytest.approx(0.0, abs=1e-5)
    assert rows[0]["reward/comet1"] == pytest.approx(0.0, abs=1e-5)
    sft, actor = load_weights(sft_dir), load_weights(out / "actor")
    assert all(not torch.equal(sft[k], actor[k]) for k in sft)


def test_resume_restores_comet_normalisation(sft_dir, mt_prompts, comet_dirs, tmp_path):
    base = ["--comet_model_path", comet_dirs["regression"], "--comet_reward_normalization", "--save_steps", 1]
    full, part = tmp_path / "full", tmp_path / "part"
    run_module(MODULE, comet_args(sft_dir, mt_prompts, full, *base, "--max_steps", 3))
    run_module(MODULE, comet_args(sft_dir, mt_prompts, part, *base, "--max_steps", 2))
    run_module(MODULE, comet_args(sft_dir, mt_prompts, part, *base, "--max_steps", 3, "--resume"))
    a, b = read_metrics(full), read_metrics(part)
    assert [r["reward/comet0"] for r in b] == pytest.approx([r["reward/comet0"] for r in a], abs=1e-6)
    assert b[-1]["reward/comet0_raw"] == pytest.approx(a[-1]["reward/comet0_raw"], abs=1e-6)
