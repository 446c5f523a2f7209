"""SIGTERM (pre-emption): the run finishes its optimizer step, writes a checkpoint, exits 0, and
--resume from it ends exactly where an uninterrupted run ends."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import torch

from tests.conftest import DEMO_DATA, ROOT, child_env, load_weights, step3_args, write_jsonl


def run_until_sigterm(module: str, args: list[str], out, after_step: int) -> subprocess.CompletedProcess:
    """Start `python -m module`, send SIGTERM once metrics.jsonl shows `after_step`, wait for it."""
    env = child_env(1)
    p = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        if metrics.is_file() and any(json.loads(x).get("step", 0) >= after_step and "eval/loss" not in x
                                     for x in metrics.read_text().splitlines() if x.strip()):
            p.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    stdout, stderr = p.communicate(timeout=300)
    return subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)


def test_sft_sigterm_checkpoints_and_resumes_exactly(tiny_dir, tmp_path):
    from tests.conftest import run_module

    lines = (DEMO_DATA / "sft" / "train.txt").read_text().splitlines()
    data = write_jsonl(tmp_path / "d" / "train.txt", lines[:400])
    args = ["--model_name_or_path", str(tiny_dir), "--data_path", str(data), "--max_seq_len", "48",
            "--per_device_train_batch_size", "4", "--learning_rate", "1e-3", "--logging_steps", "1",
            "--disable_tqdm", "--max_steps", "60"]
    full, part = tmp_path / "full", tmp_path / "part"
    run_module("training.step1_sft.main", [*args, "--output_dir", str(full)])
    p = run_until_sigterm("training.step1_sft.main", [*args, "--output_dir", str(part)], part, after_step=3)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "[preempted] SIGTERM: checkpoint at step" in p.stdout
    assert list((part / "checkpoints").iterdir()) and not (part / "model.safetensors").exists()
    run_module("training.step1_sft.main", [*args, "--output_dir", str(part), "--resume"])
    a, b = load_weights(full), load_weights(part)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_rlhf_sigterm_checkpoints_and_resumes_exactly(sft_dir, rm_dir, prompts, tmp_path):
    from tests.conftest import run_module

    extra = ["--max_steps", 6, "--reward_functions", "examples.demo.task:reward"]
    full, part = tmp_path / "full", tmp_path / "part"
    run_module("training.step3_rlhf.main", step3_args(sft_dir, rm_dir, prompts, full, *extra))
    p = run_until_sigterm("training.step3_rlhf.main", step3_args(sft_dir, rm_dir, prompts, part, *extra), part,
                          after_step=1)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "[preempted] SIGTERM: checkpoint at step" in p.stdout and not (part / "actor").exists()
    run_module("training.step3_rlhf.main", step3_args(sft_dir, rm_dir, prompts, part, "--resume", *extra))
    for sub in ("actor", "critic"):
        a, b = load_weights(full / sub), load_weights(part / sub)
        assert all(torch.equal(a[k], b[k]) for k in a), sub
