"""Kill-and-resume at 2 processes: a run stopped by SIGKILL (or SIGTERM) at a random point after a
checkpoint and continued with --resume ends bit-identical to an uninterrupted run, in every step."""
from __future__ import annotations

import random
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from tests.conftest import (DEMO_DATA, checkpoint_step, interrupt, load_weights, read_metrics, run_module, step3_args,
                            write_jsonl)
from tests.test_step2 import dpo_args, rm_args, write_parquet
from utils.losses import adaptive_kl_coef

pytestmark = pytest.mark.slow


def assert_same_weights(full: Path, resumed: Path, subfolders=("",)) -> None:
    for sub in subfolders:
        a, b = load_weights(full / sub), load_weights(resumed / sub)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{sub or 'model'} differs after resume"


def kill_and_resume(module: str, args, full: Path, part: Path, nproc: int, after: int, sig=signal.SIGKILL,
                    final: str = "model.safetensors") -> subprocess.CompletedProcess:
    """Interrupt a run into `part`, check it stopped before the end, resume it to the end."""
    p = interrupt(module, args(part), part, nproc, after=after, sig=sig)
    assert not (part / final).exists(), "the run finished before it was interrupted"
    assert checkpoint_step(part) >= (after if sig == signal.SIGKILL else 1), p.stdout[-3000:] + p.stderr[-3000:]
    run_module(module, [*map(str, args(part)), "--resume"], nproc=nproc)
    return p


# -- step 3 -----------------------------------------------------------------------------------------
STEADY = ["--adaptive_kl", "--target_kl", 0.01, "--reward_normalization", "queue", "--reward_queue_size", 20,
          "--add_pretrained_loss", "--enable_ema", "--max_seq_len", 32, "--save_steps", 1, "--max_steps", 6,
          "--reward_functions", "examples.demo.task:reward", "--per_device_generation_batch_size", 4,
          "--per_device_training_batch_size", 2,
          # long enough for answers to end at their EOS at different steps on the two ranks, whose
          # samplers then draw different amounts of randomness: each rank must resume its own RNG
          "--max_answer_seq_len", 24]


@pytest.fixture(scope="module")
def pretrain_text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ptx") / "pretrain.txt"
    path.write_text("".join(f"the {c} owl number {i} is {c}\n" for i in range(120) for c in ("red", "blue")))
    return path


def rank_states(out: Path) -> list[dict]:
    """Every rank's step-3 recipe state from the latest checkpoint."""
    ckpt = out / "checkpoints" / (out / "checkpoints" / "latest").read_text() / "actor"
    client = torch.load(next(ckpt.glob("mp_rank_00_model_states.pt")), weights_only=False)
    return client["ranks"]


@pytest.mark.parametrize("nproc", [1, 2])
@pytest.mark.parametrize("mode", ["ppo", "dynamic_sampling", "grpo"])
def test_rlhf_kill_resume_is_bit_exact(sft_dir, leaky_sft_dir, rm_dir, prompts, pretrain_text, tmp_path, mode,
                                      nproc):
    extra = [*STEADY, "--unsupervised_dataset_name", pretrain_text]
    esrl = mode == "dynamic_sampling"
    if not esrl:   # (ESRL sets each prompt's temperature itself)
        extra += ["--temperature", 0.7]
    if esrl:   # ESRL's two passes on GRPO's budget of 3 per prompt; up to 5 for one prompt (D'Hondt's shares)
        extra += ["--dynamic_sampling", "--advantage_estimator", "grpo", "--num_samples_per_prompt", 3,
                  "--esrl_max_samples", 5]
    if mode == "grpo":   # critic-free, groups of 2 (the moving baseline's state too), uniform groups replaced by
        # new prompts' (DAPO's refill draws from the sample count, which must resume too)
        extra += ["--advantage_estimator", "grpo", "--num_samples_per_prompt", 2, "--refill_uniform_groups", 2,
                  "--rollout_is_cap", 2]
    # PPO at two processes is preempted instead: SIGTERM to every rank of a run without periodic
    # checkpoints, so the actor's and the critic's preemption checkpoints alone carry it (saving does not
    # change the arithmetic: the uninterrupted run keeps its checkpoints, read below)
    sig = signal.SIGTERM if (mode, nproc) == ("ppo", 2) else signal.SIGKILL
    i = extra.index("--save_steps")
    part_extra = extra[:i] + extra[i + 2:] if sig == signal.SIGTERM else extra
    full, part = tmp_path / "full", tmp_path / "part"

    def args(out):
        return step3_args(leaky_sft_dir, rm_dir, prompts, out, *(extra if out == full else part_extra))

    p = run_module("training.step3_rlhf.main", args(full), nproc=nproc)
    # the actor's generation_config is named once and ignored: every token is scored under the distribution
    # that drew it (temperature 0.7, or ESRL's per prompt), so recorded and recomputed log-probs agree
    assert p.stdout.count("[sampling] the actor's generation_config sets ") == 1
    assert "repetition_penalty=1.3, no_repeat_ngram_size=2, min_new_tokens=3: ignored" in p.stdout
    assert all(r["rollout/logprob_diff_max"] <= 1e-4 for r in read_metrics(full))
    assert all(0 <= r["rollout/logprob_diff_mean"] <= r["rollout/logprob_diff_max"] for r in read_metrics(full))
    # the statistics that steer training are the same on every rank after several rounds
    ranks = rank_states(full)
    assert len(ranks) == nproc
    for key in ("kl_ctl", "normalizer", "esrl", "baseline"):
        assert all(r[key] == ranks[0][key] for r in ranks), key
    assert len(ranks[0]["normalizer"]["queue"]) == 20
    if esrl:
        assert len(ranks[0]["esrl"]["conf"]) > 4 * nproc   # estimates of several rounds of every rank
    # kl_ctl follows the KL of every rank's sequences (the logged kl is the ranks' mean)
    rows = read_metrics(full)
    assert rows[0]["kl_ctl"] == 0.1 and ranks[0]["kl_ctl"] != 0.1
    if esrl:   # second passes ran (the same size on every rank, or ZeRO's collectives would not line up)
        assert any(r["esrl/second_pass"] > 0 for r in rows)
    if mode != "ppo":   # critic-free: no critic trained or saved; every actor weight moved
        assert not (full / "critic").exists() and all("vf_loss" not in r for r in rows)
        sft, actor = load_weights(sft_dir), load_weights(full / "actor")
        assert all(not torch.equal(sft[k], actor[k]) for k in sft)
    if mode == "grpo":   # 4 prompts x 2 samples per round on each rank
        assert [r["count/trained_sequences"] for r in rows] == [8 * (t + 1) for t in range(len(rows))]
    scored = [0] + [r["count/trained_sequences"] for r in rows]   # per rank, the same on every rank
    for t, (before, after) in enumerate(zip(rows, rows[1:])):
        n = nproc * (scored[t + 1] - scored[t])
        assert after["kl_ctl"] == pytest.approx(adaptive_kl_coef(before["kl_ctl"], before["kl"], 0.01, n, 10000),
                                                rel=1e-9, abs=0)
    p = kill_and_resume("training.step3_rlhf.main", args, full, part, nproc=nproc,
                        after=random.Random().randint(3, 4), sig=sig, final="actor/model.safetensors")
    if sig == signal.SIGTERM:
        assert p.stdout.count("[preempted] SIGTERM: checkpoint at step") == 1, p.stdout[-3000:]
    assert_same_weights(full, part, ("actor", "critic", "actor_ema") if mode == "ppo" else ("actor", "actor_ema"))


# -- steps 1 and 2 ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sft_data(tmp_path_factory) -> Path:
    lines = (DEMO_DATA / "sft" / "train.txt").read_text().splitlines()
    return write_jsonl(tmp_path_factory.mktemp("sft2") / "train.txt", lines[:300])


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    import pyarrow.parquet as pq

    rows = pq.read_table(DEMO_DATA / "preference" / "train.parquet").to_pylist()
    out = tmp_path_factory.mktemp("pairs2") / "pairs"
    write_parquet(out, rows[:200])
    return write_parquet(out, rows[200:232], "test")


def sft_run(tiny_dir, data):
    def args(out):
        return ["--model_name_or_path", tiny_dir, "--data_path", data, "--output_dir", out, "--max_seq_len", 48,
                "--per_device_train_batch_size", 4, "--learning_rate", 1e-3, "--num_train_epochs", 2,
                "--save_steps", 3, "--num_warmup_steps", 4, "--lr_scheduler_type", "cosine", "--disable_tqdm",
                "--gradient_accumulation_steps", 2, "--seed", 4]
    return args


STEPS = {
    "sft": ("training.step1_sft.main", lambda tiny, sft, pairs: sft_run(tiny, sft)),
    "reward": ("training.step2_reward.main",
               lambda tiny, sft, pairs: lambda out: rm_args(tiny, pairs, out, "--save_steps", 3,
                                                            "--per_device_train_batch_size", 4)),
    "dpo": ("training.step2_dpo.main",
            lambda tiny, sft, pairs: lambda out: dpo_args(tiny, pairs, out, "--save_steps", 3, "--num_train_epochs",
                                                          2, "--per_device_train_batch_size", 4)),
}


@pytest.mark.parametrize("step", sorted(STEPS))
def test_two_process_kill_and_sigterm_resume_are_bit_exact(step, sft_dir, sft_data, pairs, tmp_path):
    """Killed after a periodic checkpoint, resumed, that run preempted by SIGTERM a few steps on and
    resumed again: the end equals the uninterrupted run's."""
    module, make_args = STEPS[step]
    args = make_args(sft_dir, sft_data, pairs)
    full, part = tmp_path / "full", tmp_path / "part"
    run_module(module, [*map(str, args(full))], nproc=2)
    killed_at = random.Random().randint(3, 9)
    interrupt(module, args(part), part, 2, after=killed_at, sig=signal.SIGKILL)
    resumed_from = checkpoint_step(part)
    assert resumed_from >= killed_at and not (part / "model.safetensors").exists()
    p = interrupt(module, [*args(part), "--resume"], part, 2, after=resumed_from + random.Random().randint(2, 4),
                  sig=signal.SIGTERM)
    assert p.stdout.count("[preempted] SIGTERM: checkpoint at step") == 1, p.stdout[-3000:] + p.stderr[-3000:]
    assert checkpoint_step(part) > resumed_from and not (part / "model.safetensors").exists()
    run_module(module, [*map(str, args(part)), "--resume"], nproc=2)
    assert_same_weights(full, part)


def test_checkpoints_from_before_the_shared_run_loop_still_resume():
    """The loops' client states as they were written before utils/loop.py read as each rank's
    state and the shared one."""
    from utils.loop import client_states

    assert client_states({"recipe": [{"a": 1}, {"a": 2}], "ema": "E"}) == ([{"a": 1}, {"a": 2}], {"ema": "E"})
    assert client_states({"train_state": {"epoch": 1}, "rng": ["r0", "r1"]}) == (
        [{"train_state": {"epoch": 1}, "rng": "r0"}, {"train_state": {"epoch": 1}, "rng": "r1"}], {})
    assert client_states({"ranks": [{"x": 0}], "shared": {}}) == ([{"x": 0}], {})


def _rows(out: Path) -> dict[int, dict]:
    return {r["step"]: r for r in read_metrics(out) if "train/loss" in r}


@pytest.mark.parametrize("step, zero, wrote, resumes", [("sft", 2, 2, 1), ("dpo", 0, 1, 2)])
def test_steps_1_2_resume_on_another_process_count(step, zero, wrote, resumes, tiny_dir, sft_data, pairs, tmp_path):
    """A checkpoint written by `wrote` processes, resumed on `resumes` with the same examples per
    optimizer step (accumulation makes up the difference): the step, data position and learning rate
    continue, and the losses match the uninterrupted run's to float tolerance (the sums run in
    another order)."""
    module = STEPS[step][0]
    data = sft_data if step == "sft" else pairs
    maker = {"sft": lambda out, *x: ["--model_name_or_path", tiny_dir, "--data_path", data, "--output_dir", out,
                                     "--max_seq_len", 48, "--learning_rate", 1e-3, "--disable_tqdm", "--seed", 4, *x],
             "dpo": lambda out, *x: dpo_args(tiny_dir, data, out, *x)}[step]

    def args(out, nproc):
        return [*map(str, maker(out, "--per_device_train_batch_size", 4, "--gradient_accumulation_steps",
                                4 // nproc, "--max_steps", 6, "--save_steps", 3, "--logging_steps", 1,
                                "--zero_stage", zero, "--num_warmup_steps", 2))]
    full, part = tmp_path / "full", tmp_path / "part"
    run_module(module, args(full, wrote), nproc=wrote)
    shutil.copytree(full, part)
    shutil.rmtree(part / "checkpoints" / "step6")
    (part / "model.safetensors").unlink()
    p = run_module(module, [*args(part, resumes), "--resume"], nproc=resumes)
    noun = "processes" if wrote > 1 else "process"
    assert f"[resume] {part}/checkpoints/step3 was written by {wrote} {noun}; continuing on {resumes}" in p.stdout
    assert f"[resume] {part}/checkpoints/step3: epoch 0, step 3" in p.stdout
    a, b = _rows(full), _rows(part)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for s in (4, 5, 6):
        assert b[s]["train/lr"] == pytest.approx(a[s]["train/lr"], rel=1e-9)
        assert b[s]["train/loss"] == pytest.approx(a[s]["train/loss"], rel=1e-5, abs=1e-6)
    wa, wb = load_weights(full), load_weights(part)
    assert all(torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-6) for k in wa)
    assert not (part / "checkpoints" / ".universal-step3").exists()


def test_step3_refuses_another_process_count_in_one_line(sft_dir, rm_dir, prompts, tmp_path):
    out = tmp_path / "rl"
    args = step3_args(sft_dir, rm_dir, prompts, out, "--max_steps", 1, "--save_steps", 1)
    run_module("training.step3_rlhf.main", args)
    p = run_module("training.step3_rlhf.main", [*args, "--resume"], nproc=2, check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    # rank 0 prints the line; the launcher's and rank 1's teardown lines may come after it
    assert (f"error: --resume: {out}/checkpoints/step1 was written by 1 process; this step resumes with as many (this "
            f"run has 2): each process's state cannot be re-dealt") in p.stderr.splitlines()
