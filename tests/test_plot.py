"""utils/plot.py: panels chosen from the keys of each step's metrics.jsonl, the PNG, overlays, the CLI."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from PIL import Image

from tests.conftest import ROOT, child_env
from utils.plot import PICTURE, panels, picture_of_run, read_run
from utils.run import draw_picture

# One logging step and one evaluation of each step's metrics.jsonl, keys as the steps write them.
SFT = [{"step": 0, "time": 1.0, "eval/loss": 6.0, "eval/perplexity": 403.4},
       {"step": 50, "time": 2.0, "train/loss": 2.1, "train/lr": 3e-3, "train/epoch": 0.0, "train/tokens_per_s": 1e4},
       {"step": 100, "time": 3.0, "train/loss": 1.4, "train/lr": 2e-3, "train/epoch": 0.0, "train/tokens_per_s": 1e4},
       {"step": 100, "time": 4.0, "eval/loss": 0.2, "eval/perplexity": 1.2}]
REWARD = [{"step": 0, "time": 1.0, "eval/loss": 0.69, "eval/accuracy": 0.45, "eval/chosen_score": -0.4,
           "eval/rejected_score": -0.5, "eval/score_mean": -0.45, "eval/score_std": 0.2},
          {"step": 20, "time": 2.0, "train/loss": 0.4, "train/accuracy": 0.75, "train/chosen_score": 1.9,
           "train/rejected_score": -0.6, "train/score_mean": 0.7, "train/score_sq": 5.6, "train/lr": 1e-3,
           "train/epoch": 0.0, "train/tokens_per_s": 1e4},
          {"step": 40, "time": 3.0, "eval/loss": 0.07, "eval/accuracy": 0.97, "eval/chosen_score": 4.1,
           "eval/rejected_score": -4.3, "eval/score_mean": 0.1, "eval/score_std": 5.2}]
DPO = [{"step": 0, "time": 1.0, "eval/loss": 0.693, "eval/rewards/chosen": 0.0, "eval/rewards/rejected": 0.0,
        "eval/rewards/accuracy": 0.0, "eval/rewards/margin": 0.0, "eval/logps/chosen": -9.0,
        "eval/logps/rejected": -9.5},
       {"step": 20, "time": 2.0, "train/loss": 0.5, "train/rewards/chosen": 0.1, "train/rewards/rejected": -0.2,
        "train/rewards/accuracy": 0.8, "train/rewards/margin": 0.3, "train/logps/chosen": -8.0,
        "train/logps/rejected": -11.0, "train/lr": 5e-4, "train/epoch": 0.0, "train/tokens_per_s": 1e4}]
RLHF = [{"step": 1, "time": 1.0, "approx_kl": 0.01, "clipfrac": 0.05, "count/sampled_tokens": 114.0, "kl": 0.0,
         "kl_ctl": 0.3, "loss": -0.05, "pg_loss": -0.05, "vf_loss": 0.4, "response_length": 4.75,
         "reward/reward_model": -0.67, "reward/total": -0.67, "time/generation": 0.04, "actor/lr": 2e-4,
         "critic/lr": 1e-3},
        {"step": 2, "time": 2.0, "approx_kl": 0.002, "clipfrac": 0.02, "count/sampled_tokens": 249.0, "kl": 0.04,
         "kl_ctl": 0.3, "loss": -0.2, "pg_loss": -0.2, "vf_loss": 0.3, "response_length": 4.8,
         "reward/reward_model": -0.72, "reward/total": -0.72, "time/generation": 0.04, "actor/lr": 1e-4,
         "critic/lr": 5e-4, "eval/reward/total": 0.5, "time/eval": 0.1}]

EXPECTED = {
    "sft": (SFT, ["loss", "lr", "perplexity"]),
    "reward": (REWARD, ["loss", "lr", "accuracy", "chosen_score", "rejected_score", "score_mean", "score_std",
                        "score_sq"]),
    "dpo": (DPO, ["loss", "lr", "rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin",
                  "logps/chosen", "logps/rejected"]),
    # the file's order after loss and the learning rates; timings and counters are left out
    "rlhf": (RLHF, ["loss", "actor/lr", "critic/lr", "approx_kl", "clipfrac", "kl", "kl_ctl", "pg_loss", "vf_loss",
                    "response_length", "reward/reward_model", "reward/total"]),
}
C0, C1 = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)   # matplotlib's first two cycle colours: runs 1 and 2


def write_run(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def colours(png) -> set:
    return set(Image.open(png).convert("RGB").getdata())


@pytest.mark.parametrize("step", EXPECTED)
def test_panels_from_each_steps_keys(step):
    rows, titles = EXPECTED[step]
    assert panels(k for r in rows for k in r) == titles


def test_train_and_eval_of_a_metric_share_a_panel():
    assert panels(["step", "time", "eval/accuracy", "train/accuracy", "train/loss", "eval/loss"]) == ["loss",
                                                                                                      "accuracy"]
    assert panels(["step", "time", "train/epoch", "time/eval", "memory/max_allocated_gib"]) == []


@pytest.mark.parametrize("step", EXPECTED)
def test_each_steps_picture_reads_back(step, tmp_path):
    rows, titles = EXPECTED[step]
    run = write_run(tmp_path / step, rows)
    assert picture_of_run(run) == f"[plot] {run / PICTURE}: {len(titles)} panels"
    image = Image.open(run / PICTURE)
    image.load()
    cols = min(4, len(titles))
    rows_of_panels = math.ceil(len(titles) / cols)
    # 4.0 x 2.8 inches a panel plus a 0.5 inch legend strip, at 100 dpi
    assert image.format == "PNG" and image.size == (400 * cols, round(280 * rows_of_panels + 50))
    assert C0 in colours(run / PICTURE) and C1 not in colours(run / PICTURE)


def test_resumed_steps_keep_the_last_value_and_non_finite_values_are_left_out(tmp_path):
    losses = [(1, 3.0), (2, 2.0), (2, 1.5), (3, math.inf)]  # step 2 again after a resume; then an overflow
    run = write_run(tmp_path / "r", [{"step": s, "time": 0.0, "train/loss": v} for s, v in losses])
    assert read_run(run).series["train/loss"] == {1: 3.0, 2: 1.5}


def test_two_runs_overlay_in_one_picture(tmp_path):
    a = write_run(tmp_path / "dpo", DPO)
    b = write_run(tmp_path / "ipo", [{**r, "step": r["step"] + 5} for r in DPO])
    out = tmp_path / "both.png"
    p = subprocess.run([sys.executable, "-m", "utils.plot", str(a), str(b), "--output", str(out)], cwd=ROOT,
                       env=child_env(1), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout == f"[plot] {out}: 2 runs, 8 panels\n"
    assert {C0, C1} <= colours(out)  # each run in its own colour


def test_cli_without_metrics_is_one_line_and_exit_2(tmp_path):
    def plot(*runs):
        return subprocess.run([sys.executable, "-m", "utils.plot", *map(str, runs)], cwd=ROOT, env=child_env(1),
                              capture_output=True, text=True, timeout=120)

    p = plot(tmp_path)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr == f"error: {tmp_path}: no metrics.jsonl (is it a step's --output_dir?)\n"
    empty = write_run(tmp_path / "empty", [])
    p = plot(write_run(tmp_path / "sft", SFT), empty)
    assert p.returncode == 2 and p.stderr == f"error: {empty / 'metrics.jsonl'} holds no metrics to draw\n"
    assert not (tmp_path / "sft" / PICTURE).exists()


def test_a_run_without_rows_gets_no_picture_and_one_line(tmp_path, capsys):
    run = write_run(tmp_path / "empty", [])
    draw_picture(str(run))
    assert capsys.readouterr().out == f"[plot] {run / 'metrics.jsonl'} holds no metrics to draw: no {PICTURE}\n"
    assert not (run / PICTURE).exists()


def test_a_picture_that_fails_is_one_line_and_the_run_goes_on(tmp_path, capsys):
    run = write_run(tmp_path / "torn", SFT)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 150, "tra')  # a row cut off by a kill
    draw_picture(str(run))  # returns: the saved model is not lost over a picture
    out = capsys.readouterr()
    assert out.out == "" and out.err == (
        f"[plot] no picture for {run}: MetricsError: {run / 'metrics.jsonl'}:5: not a JSON line (Unterminated string "
        f"starting at) (`python -m utils.plot {run}` tries again)\n")
    assert not (run / PICTURE).exists()
