"""Nothing lost, nothing silently wrong (issue 34's table): resume falls back past a broken checkpoint
to the newest one that verifies and ends bit-identical to an uninterrupted run; a planted pickle never
runs; an output folder belongs to one run (refusal, --overwrite_output_dir, the lock); metrics.jsonl
has no repeated rows after a resume; a finished run resumed trains nothing; Ctrl-C checkpoints; a
full disk is one line with the previous checkpoint and export intact; the export is whole or absent
and follows the umask; lengths past the model's positions and custom code are one-line refusals."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import DEMO_DATA, interrupt, load_weights, read_metrics, run_module, write_jsonl

SFT = "training.step1_sft.main"
STEPS = 6   # checkpoints at 2, 4, 6 (all three kept)


def sft_args(model: Path, data: Path, out: Path, *extra) -> list[str]:
    return ["--model_name_or_path", str(model), "--data_path", str(data), "--output_dir", str(out),
            "--max_seq_len", "48", "--per_device_train_batch_size", "8", "--learning_rate", "3e-3",
            "--num_warmup_steps", "2", "--max_steps", str(STEPS), "--save_steps", "2", "--save_total_limit", "3",
            "--logging_steps", "1", "--disable_tqdm", *map(str, extra)]


def last_line(p: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    return p.stderr.strip().splitlines()[-1]


def steps_logged(out: Path) -> list[tuple[int, tuple[str, ...]]]:
    return [(r["step"], tuple(sorted(k for k in r if k not in ("step", "time")))) for r in read_metrics(out)]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("safety-data")
    lines = (DEMO_DATA / "sft" / "train.txt").read_text().splitlines()
    write_jsonl(root / "train.txt", lines[:96])
    write_jsonl(root / "test.txt", lines[96:112])
    return root


@pytest.fixture(scope="module")
def full(tiny_dir, data, tmp_path_factory) -> Path:
    """An uninterrupted run: the reference every resumed run must equal."""
    out = tmp_path_factory.mktemp("safety") / "full"
    run_module(SFT, sft_args(tiny_dir, data, out))
    return out


def copy_run(full: Path, dst: Path) -> Path:
    """The run's folder as a killed run would leave it: its checkpoints and metrics, no model."""
    shutil.copytree(full, dst)
    for name in json.loads((dst / ".exported").read_text()) + [".exported"]:
        (dst / name).unlink()
    return dst


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


STATES = "checkpoints/step6/model/mp_rank_00_model_states.pt"
DAMAGE = {
    "truncated": lambda d: os.truncate(d / STATES, 1000),
    "emptied": lambda d: os.truncate(d / STATES, 0),
    "bytes flipped": lambda d: flip_byte(d / STATES),
    "file deleted, latest emptied": lambda d: ((d / STATES).unlink(), (d / "checkpoints/latest").write_text("")),
    "folder deleted": lambda d: shutil.rmtree(d / "checkpoints/step6"),
}
SAYS = {
    "truncated": "model/mp_rank_00_model_states.pt is 1000 bytes, its manifest says",
    "emptied": "model/mp_rank_00_model_states.pt is 0 bytes, its manifest says",
    "bytes flipped": "model/mp_rank_00_model_states.pt differs from its manifest's sha256",
    "file deleted, latest emptied": "model/mp_rank_00_model_states.pt is missing",
    "folder deleted": None,
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_resume_falls_back_to_the_newest_checkpoint_that_verifies(full, tiny_dir, data, tmp_path, damage):
    part = copy_run(full, tmp_path / "part")
    DAMAGE[damage](part)
    p = run_module(SFT, [*sft_args(tiny_dir, data, part), "--resume"])
    ckpts = part / "checkpoints"
    if SAYS[damage]:
        assert f"[resume] skipped {ckpts}/step6: {SAYS[damage]}" in p.stdout
        assert f"moved to {ckpts}/.skipped-step6" in p.stdout
    assert f"[resume] {ckpts}/step4: epoch 0, step 4" in p.stdout
    a, b = load_weights(full), load_weights(part)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the intact older checkpoints survive the rotation; the step-6 checkpoint is written anew
    assert sorted(x.name for x in ckpts.iterdir() if x.name.startswith("step")) == ["step2", "step4", "step6"]
    # the resumed run's rows follow the checkpoint's: the same steps and keys as the uninterrupted run
    assert steps_logged(part) == steps_logged(full)


def test_resume_with_no_checkpoint_that_verifies_is_refused(full, tiny_dir, data, tmp_path):
    part = copy_run(full, tmp_path / "part")
    for step in (2, 4, 6):
        flip_byte(part / f"checkpoints/step{step}/model/mp_rank_00_model_states.pt")
    before = (part / "metrics.jsonl").read_text()
    p = run_module(SFT, [*sft_args(tiny_dir, data, part), "--resume"], check=False)
    assert p.returncode == 2
    ckpts = part / "checkpoints"
    assert last_line(p) == (
        f"error: --resume: no checkpoint in {ckpts} verifies (" + "; ".join(
            f"step{s}: model/mp_rank_00_model_states.pt differs from its manifest's sha256" for s in (6, 4, 2)) +
        "); nothing was loaded. Start afresh with --overwrite_output_dir, or restore a checkpoint")
    assert (part / "metrics.jsonl").read_text() == before and not (part / "model.safetensors").exists()
    assert sorted(x.name for x in ckpts.iterdir() if x.name.startswith("step")) == ["step2", "step4", "step6"]


PAYLOAD = '''
import os, sys, torch
from pathlib import Path
from utils.checkpoint import seal

class Payload:
    def __reduce__(self):
        return (os.system, ("touch " + sys.argv[2],))

folder = Path(sys.argv[1])
(folder / "model").mkdir(parents=True)
torch.save({"module": Payload()}, folder / "model" / "mp_rank_00_model_states.pt")
seal(folder)
'''


def test_a_checkpoint_that_would_run_code_is_refused_and_never_runs(full, tiny_dir, data, tmp_path):
    part = copy_run(full, tmp_path / "part")
    marker = tmp_path / "ran"
    # the attacker can write a matching manifest too: the manifest guards against damage, plain-data
    # loading against code
    subprocess.run([sys.executable, "-c", PAYLOAD, str(part / "checkpoints" / "step8"), str(marker)], check=True,
                   cwd=Path(__file__).resolve().parent.parent)
    p = run_module(SFT, [*sft_args(tiny_dir, data, part), "--resume"], check=False)
    assert p.returncode == 2 and not marker.exists()
    assert last_line(p) == (f"error: {part}/checkpoints/step8/model/mp_rank_00_model_states.pt holds `posix.system`, "
                            f"which loading would run; refused, nothing of it was run (a checkpoint holds plain "
                            f"data only)")
    assert not (part / "model.safetensors").exists()


def test_an_output_folder_belongs_to_one_run(full, tiny_dir, data, tmp_path):
    used = tmp_path / "used"
    shutil.copytree(full, used)
    before = {p: p.read_bytes() for p in used.rglob("*") if p.is_file()}
    p = run_module(SFT, sft_args(tiny_dir, data, used), check=False)
    assert p.returncode == 2
    assert last_line(p) == (f"error: --output_dir {used} holds another run (checkpoints, metrics.jsonl, "
                            f"training_curves.png, a model); continue it with --resume, or replace it with "
                            f"--overwrite_output_dir")
    assert {p: p.read_bytes() for p in used.rglob("*") if p.is_file()} == before
    # replaced: the old checkpoints go, the new run's are its own; its metrics start afresh
    (used / "checkpoints" / "step8").mkdir()
    p = run_module(SFT, [*sft_args(tiny_dir, data, used, "--seed", 5), "--overwrite_output_dir"])
    assert "[output] --overwrite_output_dir: removed the previous run's checkpoints" in p.stdout
    assert sorted(x.name for x in (used / "checkpoints").iterdir() if x.name.startswith("step")) == [
        "step2", "step4", "step6"]
    assert steps_logged(used) == steps_logged(full)
    assert not torch.equal(load_weights(used)["model.norm.weight"], load_weights(full)["model.norm.weight"])


def test_the_lock_refuses_a_second_live_run_and_takes_over_a_dead_ones_lock(tmp_path, capsys):
    from utils.errors import ConfigError
    from utils.outdir import LOCK, claim

    out = tmp_path / "out"
    out.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK).write_text(json.dumps({"host": os.uname().nodename, "pid": live.pid}))
        with pytest.raises(ConfigError) as e:
            claim(str(out), resume=True, overwrite=False)
        assert str(e.value) == (f"--output_dir {out} is in use by another run (pid {live.pid} on "
                                f"{os.uname().nodename}, see {out / LOCK}); wait for it, or delete the lock if that "
                                f"run is dead")
    finally:
        live.kill()
        live.wait()
    claim(str(out), resume=True, overwrite=False)
    assert f"{out / LOCK} was left by pid {live.pid} on {os.uname().nodename}, which is gone; taking it over" in (
        capsys.readouterr().out)
    assert json.loads((out / LOCK).read_text()) == {"host": os.uname().nodename, "pid": os.getpid()}


def test_resuming_a_finished_run_trains_nothing_more(full, tiny_dir, data, tmp_path):
    done = tmp_path / "done"
    shutil.copytree(full, done)
    p = run_module(SFT, [*sft_args(tiny_dir, data, done), "--resume"])
    assert f"[resume] {done}/checkpoints/step6: epoch 0, step 6" in p.stdout
    assert "[checkpoint]" not in p.stdout and "[eval] step 7" not in p.stdout
    a, b = load_weights(full), load_weights(done)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert steps_logged(done) == steps_logged(full)


def test_ctrl_c_finishes_the_step_checkpoints_and_resumes_exactly(full, tiny_dir, data, tmp_path):
    part = tmp_path / "part"
    p = interrupt(SFT, sft_args(tiny_dir, data, part), part, 1, after=1, sig=signal.SIGINT)
    assert p.returncode == 130, p.stderr[-3000:]
    assert "[interrupt] Ctrl-C: finishing this step, then a checkpoint" in p.stderr
    assert "[preempted] Ctrl-C: checkpoint at step" in p.stdout and "Traceback" not in p.stderr
    assert not (part / "model.safetensors").exists() and not (part / ".lock").exists()
    run_module(SFT, [*sft_args(tiny_dir, data, part), "--resume"])
    a, b = load_weights(full), load_weights(part)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert steps_logged(part) == steps_logged(full)


# -- full disks ------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """mount(size) -> a folder on a tmpfs of that many bytes (skipped where mounting is not allowed)."""
    mounted = []

    def mount(size: int) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                           text=True)
        if p.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here: {p.stderr.strip() or p.returncode}")
        mounted.append(where)
        return where
    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], check=False)


def tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_last_checkpoint(full, tiny_dir, data,
                                                                                   small_disk):
    one = tree_bytes(full / "checkpoints" / "step2")
    out = small_disk(int(one * 1.6)) / "run"       # room for one checkpoint, not two
    p = run_module(SFT, sft_args(tiny_dir, data, out), check=False)
    assert p.returncode == 4
    assert last_line(p) == f"error: checkpoint {out}/checkpoints/step4: No space left on device; its partial files " \
                           f"were removed"
    from utils.checkpoint import verify

    assert sorted(x.name for x in (out / "checkpoints").iterdir()) == [".sealed", "latest", "step2"]
    assert verify(out / "checkpoints" / "step2") is None and not (out / "model.safetensors").exists()


def test_a_full_disk_while_exporting_is_one_line_and_keeps_the_previous_export(full, tiny_dir, data, small_disk):
    model = tree_bytes(full) - tree_bytes(full / "checkpoints")
    out = small_disk(int(model * 1.5)) / "run"     # room for one export, not a second beside it
    run_module(SFT, [*sft_args(tiny_dir, data, out), "--save_steps", "0"])
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != "metrics.jsonl"}
    p = run_module(SFT, [*sft_args(tiny_dir, data, out), "--save_steps", "0", "--resume"], check=False)
    assert p.returncode == 4
    assert last_line(p) == f"error: export to {out}: No space left on device; its partial files were removed"
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != "metrics.jsonl"} == before
    assert not (out / ".tmp-export").exists()


# -- the export ------------------------------------------------------------------------------------
def test_an_export_is_whole_or_absent_and_follows_the_umask(tiny_dir, tokenizer, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    import utils.export as export

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    out = tmp_path / "out"
    old = os.umask(0o002)
    try:
        export.save_hf_model(model, tokenizer, out)
    finally:
        os.umask(old)
    assert {oct(p.stat().st_mode & 0o777) for p in out.iterdir()} == {oct(0o664)}
    first = sorted(json.loads((out / ".exported").read_text()))
    assert first == sorted(p.name for p in out.iterdir() if p.name != ".exported")

    # a death at the third rename of the next export: no config.json (transformers refuses the folder),
    # none of the old export's files beside the new ones (.exported still lists the old names, all
    # gone), the whole new export in .tmp-export
    real, calls = os.replace, []

    def dying_replace(a, b):
        calls.append(b)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(a, b)
    monkeypatch.setattr(export.os, "replace", dying_replace)
    with torch.no_grad():
        model.model.norm.weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        export.save_hf_model(model, tokenizer, out)
    monkeypatch.setattr(export.os, "replace", real)
    assert not (out / "config.json").exists()
    assert {p.name for p in out.iterdir()} == {Path(c).name for c in calls[:2]} | {".tmp-export", ".exported"}
    export.save_hf_model(model, tokenizer, out)
    assert torch.equal(load_weights(out)["model.norm.weight"], model.model.norm.weight)
    assert sorted(json.loads((out / ".exported").read_text())) == first


# -- limits checked before training ------------------------------------------------------------------
def test_sequences_longer_than_the_models_positions_are_refused(tiny_dir, data, tmp_path):
    limit = json.loads((tiny_dir / "config.json").read_text())["max_position_embeddings"]
    out = tmp_path / "long"
    p = run_module(SFT, sft_args(tiny_dir, data, out, "--max_seq_len", limit + 1), check=False)
    assert p.returncode == 2 and not out.exists()
    assert last_line(p) == (f"error: --max_seq_len {limit + 1} is longer than '{tiny_dir}' can place "
                            f"(max_position_embeddings {limit} in its config); lower it to at most {limit}")


def test_learned_position_tables_are_checked_too():
    from transformers import GPT2Config, GPT2LMHeadModel

    from utils.errors import ConfigError
    from utils.models import check_positions

    model = GPT2LMHeadModel(GPT2Config(n_positions=16, n_embd=8, n_layer=1, n_head=2, vocab_size=50))
    check_positions(model, 16, "--max_seq_len", "gpt2-16")
    with pytest.raises(ConfigError, match=r"^--max_seq_len 64 is longer than 'gpt2-16' can place \(n_positions 16"):
        check_positions(model, 64, "--max_seq_len", "gpt2-16")


def test_a_model_with_its_own_code_is_refused_in_one_line(tiny_dir, data, tmp_path):
    model = tmp_path / "custom"
    shutil.copytree(tiny_dir, model)
    marker = tmp_path / "ran"
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="owlmodel", auto_map={"AutoConfig": "owl.OwlConfig",
                                                   "AutoModelForCausalLM": "owl.OwlForCausalLM"})
    (model / "config.json").write_text(json.dumps(config))
    (model / "owl.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    out = tmp_path / "out"
    p = run_module(SFT, sft_args(model, data, out), check=False)
    assert p.returncode == 2 and not marker.exists() and not out.exists()
    assert last_line(p) == (f"error: cannot load model '{model}': it ships its own Python code (auto_map in its "
                            f"config), which was not run; pass --trust_remote_code only if you trust that code")
