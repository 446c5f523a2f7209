"""Step 1 end to end on the tiny model: ZeRO stages, LoRA, accumulation, 2 processes, resume."""
from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from tests.conftest import checkpoint_step, interrupt, load_weights, read_metrics, run_module, write_jsonl

MODULE = "training.step1_sft.main"


def sft_args(tiny_dir, data, out, *extra) -> list[str]:
    return ["--model_name_or_path", str(tiny_dir), "--data_path", str(data), "--output_dir", str(out),
            "--max_seq_len", "48", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
            "--learning_rate", "3e-3", "--lr_scheduler_type", "constant", "--logging_steps", "1",
            "--disable_tqdm", "--seed", "7", *map(str, extra)]


def eval_losses(out) -> list[float]:
    return [m["eval/loss"] for m in read_metrics(out) if "eval/loss" in m]


def assert_all_changed(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    same = [k for k in before if torch.equal(before[k], after[k])]
    assert not same, f"parameters left unchanged: {same}"


def assert_reloads_and_generates(out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    ids = tok("User: Repeat after me: fox red owl\nAssistant: ", return_tensors="pt")
    gen = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    assert gen.shape[1] > ids["input_ids"].shape[1]
    assert model.config.pad_token_id == tok.pad_token_id != tok.eos_token_id


@pytest.mark.parametrize("stage,extra", [(0, ["--enable_tensorboard"]), (2, ["--offload"]), (3, [])])
def test_sft_zero_stage_trains_and_saves(tiny_dir, sft_data, tmp_path, stage, extra):
    out = tmp_path / f"z{stage}"
    run_module(MODULE, sft_args(tiny_dir, sft_data, out, "--zero_stage", stage, *extra))
    losses = eval_losses(out)
    assert len(losses) == 2 and losses[-1] < losses[0] - 1.0, losses
    assert_all_changed(load_weights(tiny_dir), load_weights(out))
    assert_reloads_and_generates(out)
    if "--enable_tensorboard" in extra:
        assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert not (out / ".tmp-export").exists()
    assert (out / "training_curves.png").stat().st_size > 0


def test_blends_sft_chat_and_text(tiny_dir, sft_data, tmp_path):
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [
        {"role": "user", "content": "Repeat after me: cat gold"}, {"role": "assistant", "content": "cat gold"}]}] * 16)
    text = tmp_path / "notes.txt"
    text.write_text("the fox is red\nthe owl is gray\n" * 20)
    out = tmp_path / "blend"
    p = run_module(MODULE, sft_args(tiny_dir, sft_data, out, "--data_path", sft_data, chat, text))
    assert "[data] " in p.stdout
    n_train = int(p.stdout.split("[data] ")[1].split()[0])
    assert n_train > 160 + 16  # every source contributed
    assert eval_losses(out)[-1] < eval_losses(out)[0]


def test_lora_trains_only_adapters(tiny_dir, sft_data, tmp_path):
    out = tmp_path / "lora"
    run_module(MODULE, sft_args(tiny_dir, sft_data, out, "--lora_dim", 4, "--only_optimize_lora",
                                "--lora_module_name", "self_attn"))
    before, after = load_weights(tiny_dir), load_weights(out)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    targets = {k for k in before if ".self_attn." in k and k.endswith("proj.weight")}
    assert changed == targets, changed ^ targets
    assert eval_losses(out)[-1] < eval_losses(out)[0]
    assert_reloads_and_generates(out)


def test_batch_8_equals_batch_4_times_2(tiny_dir, sft_data, tmp_path):
    a, b = tmp_path / "b8", tmp_path / "b4x2"
    run_module(MODULE, sft_args(tiny_dir, sft_data, a, "--max_steps", 4))
    run_module(MODULE, sft_args(tiny_dir, sft_data, b, "--max_steps", 4, "--per_device_train_batch_size", 4,
                                "--gradient_accumulation_steps", 2))
    wa, wb = load_weights(a), load_weights(b)
    assert_all_changed(load_weights(tiny_dir), wa)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=2e-5, rtol=1e-4, msg=k)
    la = [m["train/loss"] for m in read_metrics(a) if "train/loss" in m]
    lb = [m["train/loss"] for m in read_metrics(b) if "train/loss" in m]
    assert la == pytest.approx(lb, abs=1e-5)


@pytest.fixture(scope="module")
def three_steps(tiny_dir, sft_data, tmp_path_factory) -> Path:
    """Three SFT steps with the default flags: the run the flags below must reproduce."""
    out = tmp_path_factory.mktemp("three") / "default"
    run_module(MODULE, sft_args(tiny_dir, sft_data, out, "--max_steps", 3))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["--torch_compile", "--padding_free"])
def test_speed_flags_train_as_the_default(tiny_dir, sft_data, three_steps, tmp_path, flag):
    """Fused kernels (torch.compile) and packed rows (padding-free) change the arithmetic's order
    only: train and eval losses match the default run to 1e-5, and the loss falls."""
    out = tmp_path / "flagged"
    run_module(MODULE, sft_args(tiny_dir, sft_data, out, "--max_steps", 3, flag))
    train = [[m["train/loss"] for m in read_metrics(d) if "train/loss" in m] for d in (three_steps, out)]
    assert len(train[0]) == 3 and train[0][-1] < train[0][0]
    assert train[1] == pytest.approx(train[0], abs=1e-5)
    assert eval_losses(out) == pytest.approx(eval_losses(three_steps), abs=1e-5)


def test_two_process_zero3_equals_one_process(tiny_dir, sft_data, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    run_module(MODULE, sft_args(tiny_dir, sft_data, one, "--max_steps", 6))
    run_module(MODULE, sft_args(tiny_dir, sft_data, two, "--max_steps", 6, "--zero_stage", 3,
                                "--per_device_train_batch_size", 4), nproc=2)
    w1, w2 = load_weights(one), load_weights(two)
    assert_all_changed(load_weights(tiny_dir), w2)
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], atol=2e-5, rtol=1e-4, msg=k)
    assert eval_losses(two)[-1] == pytest.approx(eval_losses(one)[-1], abs=1e-4)
    assert eval_losses(two)[-1] < eval_losses(two)[0]
    assert_reloads_and_generates(two)


def test_kill_then_sigterm_resume_equals_uninterrupted(tiny_dir, sft_data, tmp_path):
    """One process: SIGKILL after a periodic checkpoint, resume; that run pre-empted by SIGTERM
    (it saves between optimizer steps and exits 0), resume again: the weights and the schedule end
    where an uninterrupted run's end (two processes: tests/test_exact_resume.py)."""
    common = ["--num_train_epochs", 3, "--per_device_train_batch_size", 2, "--save_steps", 10,
              "--lr_scheduler_type", "cosine", "--num_warmup_steps", 5]
    full, part = tmp_path / "full", tmp_path / "part"
    run_module(MODULE, sft_args(tiny_dir, sft_data, full, *common))

    interrupt(MODULE, sft_args(tiny_dir, sft_data, part, *common), part, 1, after=20, sig=signal.SIGKILL)
    resumed_from = checkpoint_step(part)
    assert resumed_from >= 20 and not (part / "model.safetensors").exists(), "the run finished before the kill"
    p = interrupt(MODULE, sft_args(tiny_dir, sft_data, part, *common, "--resume"), part, 1, after=resumed_from + 3,
                  sig=signal.SIGTERM)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.count("[preempted] SIGTERM: checkpoint at step") == 1, p.stdout[-3000:]
    assert checkpoint_step(part) > resumed_from and not (part / "model.safetensors").exists()
    assert not (part / "training_curves.png").exists(), "a pre-empted run has not finished: no picture"

    run_module(MODULE, sft_args(tiny_dir, sft_data, part, *common, "--resume"))
    wf, wk = load_weights(full), load_weights(part)
    assert all(torch.equal(wf[k], wk[k]) for k in wf)
    assert [m for m in read_metrics(part) if "train/loss" in m][-1]["step"] == 240


def test_bad_data_one_line_error_and_no_output(tiny_dir, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text(json.dumps({"instruction": "User: hi\nAssistant: ", "output": "x"}) + "\n"
                   + '{"instruction": "User: hi\\nAssistant: ", "output": 3}\n')
    out = tmp_path / "never"
    p = run_module(MODULE, sft_args(tiny_dir, bad, out), check=False)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1] == f'error: {bad}:2: field "output" must be a string, got int'
    assert "Traceback" not in p.stderr
    assert not out.exists()


def test_missing_model_one_line_error(sft_data, tmp_path):
    p = run_module(MODULE, sft_args(tmp_path / "no-model", sft_data, tmp_path / "o"), check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("error: cannot load tokenizer")
