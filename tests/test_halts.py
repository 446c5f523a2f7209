"""Non-finite numbers stop a run in one line (exit 3) and are never saved: a diverging loss, a reward
function's NaN or non-number, non-finite weights at export."""
from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import DEMO_DATA, load_weights, run_module, write_jsonl

REWARDS = '''
import math


def nan_second(answers, **kw):
    return [math.nan if i == 1 else 1.0 for i in range(len(answers))]


def word_third(answers, **kw):
    return ["high" if i == 2 else 0.0 for i in range(len(answers))]


def inf_first(answers, **kw):
    return [math.inf if i == 0 else 0.0 for i in range(len(answers))]
'''


def test_a_diverging_loss_stops_before_anything_of_it_is_saved(tiny_dir, tmp_path):
    data = write_jsonl(tmp_path / "d" / "train.txt", (DEMO_DATA / "sft" / "train.txt").read_text().splitlines()[:200])
    out = tmp_path / "nan"
    p = run_module("training.step1_sft.main", [
        "--model_name_or_path", str(tiny_dir), "--data_path", str(data.parent), "--output_dir", str(out),
        "--max_seq_len", "48", "--per_device_train_batch_size", "16", "--learning_rate", "1e10",
        "--num_warmup_steps", "5", "--max_steps", "8", "--save_steps", "2", "--disable_tqdm"], check=False)
    assert p.returncode == 3 and "Traceback" not in p.stderr
    line = p.stderr.strip().splitlines()[-1]
    # the loss is finite for two steps at this rate, NaN from the third
    assert line == (f"error: step 3: the training loss is nan; stopped before saving anything of it (the last "
                    f"checkpoint, {out}/checkpoints/step2, is untouched)")
    assert not (out / "model.safetensors").exists() and (out / "checkpoints" / "latest").read_text() == "step2"


@pytest.mark.parametrize("fn, says", [
    ("nan_second", "reward function badreward:nan_second scored answer 1 ("),
    ("word_third", "reward function badreward:word_third returned 'high' for answer 2 ("),
    ("inf_first", "reward function badreward:inf_first scored answer 0 (")])
def test_a_reward_that_is_not_a_finite_number_stops_the_run_naming_it(sft_dir, prompts, tmp_path, fn, says):
    (tmp_path / "badreward.py").write_text(REWARDS)
    out = tmp_path / "rl"
    p = run_module("training.step3_rlhf.main", [
        "--actor_model_name_or_path", str(sft_dir), "--data_path", str(prompts), "--output_dir", str(out),
        "--use_reward_model", "false", "--reward_functions", f"badreward:{fn}", "--advantage_estimator", "grpo",
        "--num_samples_per_prompt", "2", "--max_steps", "2", "--per_device_generation_batch_size", "4",
        "--per_device_training_batch_size", "4", "--max_prompt_seq_len", "32", "--max_answer_seq_len", "8",
        "--disable_tqdm"], check=False, env={"PYTHONPATH": str(tmp_path)})
    assert p.returncode == 3 and "Traceback" not in p.stderr
    line = p.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {says}") and line.endswith(("not finite", "not a number"))
    assert not (out / "actor").exists()


def test_an_export_of_non_finite_weights_writes_nothing(tiny_dir, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    from utils.export import save_hf_model
    from utils.errors import TrainingHalted

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    save_hf_model(model, tokenizer, tmp_path / "ok")
    name = "model.norm.weight"
    assert torch.equal(load_weights(tmp_path / "ok")[name], model.get_parameter(name))
    with torch.no_grad():
        model.get_parameter(name)[0] = math.nan
    with pytest.raises(TrainingHalted, match=rf"1 weight tensor\(s\) not finite \(first: {name}\)"):
        save_hf_model(model, tokenizer, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


POISON = '''
import sys
import torch
import utils.trainer as trainer
from training.step1_sft.main import main

real = trainer.Trainer.train_window

def train_window(self, window):
    metrics = real(self, window)
    if self.state.global_step == 1:   # the second step's update: a weight goes NaN, the loss stays finite
        with torch.no_grad():
            next(self.engine.module.parameters()).view(-1)[0] = float("nan")
    return metrics

trainer.Trainer.train_window = train_window
main(sys.argv[1:])
'''


def test_non_finite_weights_are_never_checkpointed(tiny_dir, tmp_path):
    """A weight that went non-finite in an update whose loss was finite (no loss check can see it)
    stops the run at the next checkpoint, which is not written."""
    import subprocess
    import sys

    from tests.conftest import ROOT, child_env

    data = write_jsonl(tmp_path / "d" / "train.txt", (DEMO_DATA / "sft" / "train.txt").read_text().splitlines()[:200])
    out = tmp_path / "poisoned"
    p = subprocess.run([sys.executable, "-c", POISON, "--model_name_or_path", str(tiny_dir), "--data_path",
                        str(data.parent), "--output_dir", str(out), "--max_seq_len", "48",
                        "--per_device_train_batch_size", "16", "--max_steps", "4", "--save_steps", "2",
                        "--disable_tqdm"],
                       cwd=ROOT, env=child_env(1), capture_output=True, text=True, timeout=600)
    assert p.returncode == 3 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert p.stderr.strip().splitlines()[-1] == (
        "error: step 2: the model weights are not finite; stopped before saving anything of it (no checkpoint was "
        "written)")
    assert not (out / "checkpoints" / "step2").exists() and not (out / "model.safetensors").exists()
