"""DeepSpeed-Chat's canonical workflow and the fork's step-3 script, run here with their flags.

One preference dataset in Dahoas/rm-static's schema and hub layout feeds all steps with
`--data_split 2,4,4` (SFT -> reward model -> DPO -> PPO); the fork's scripts/rlhf.sh flag set runs
as written (paths substituted, plus a step limit and short answers), also with ESRL and COMET.
"""
from __future__ import annotations

import re

import pyarrow.parquet as pq
import pytest

from tests.conftest import DEMO_DATA, read_metrics, run_module
from tests.peer_scripts import COMMANDS, substitute

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rm_static(tmp_path_factory):
    """A stand-in for Dahoas/rm-static as `huggingface-cli download` lays it out."""
    root = tmp_path_factory.mktemp("hub") / "Dahoas" / "rm-static"
    (root / "data").mkdir(parents=True)
    train = pq.read_table(DEMO_DATA / "preference" / "train.parquet").slice(0, 240)
    test = pq.read_table(DEMO_DATA / "preference" / "test.parquet").slice(0, 40)
    pq.write_table(train, root / "data" / "train-00000-of-00001.parquet")
    pq.write_table(test, root / "data" / "test-00000-of-00001.parquet")
    return root


def data_line(stdout: str) -> tuple[int, int]:
    m = re.search(r"\[data\] (\d+) training and (\d+) held-out", stdout)
    assert m, stdout[-2000:]
    return int(m.group(1)), int(m.group(2))


def test_one_dataset_feeds_sft_reward_dpo_and_ppo(tiny_dir, rm_static, tmp_path):
    data = ["--data_path", str(rm_static), "--data_split", "2,4,4", "--deepspeed", "--seed", "1234"]
    sft = tmp_path / "sft"
    p = run_module("training.step1_sft.main", [
        *data, "--model_name_or_path", str(tiny_dir), "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "8", "--max_seq_len", "512", "--learning_rate", "2e-3", "--weight_decay",
        "0.", "--num_train_epochs", "3", "--gradient_accumulation_steps", "1", "--lr_scheduler_type", "cosine",
        "--num_warmup_steps", "0", "--gradient_checkpointing", "--zero_stage", "0", "--output_dir", str(sft),
        "--disable_tqdm"])
    assert data_line(p.stdout) == (48, 40)   # 2/10 of 240 rows: prompt -> chosen
    evals = [r["eval/loss"] for r in read_metrics(sft) if "eval/loss" in r]
    assert evals[-1] < evals[0] - 1.0

    rm = tmp_path / "rm"
    p = run_module("training.step2_reward.main", [
        *data, "--model_name_or_path", str(sft), "--num_padding_at_beginning", "1", "--per_device_train_batch_size",
        "8", "--per_device_eval_batch_size", "8", "--max_seq_len", "512", "--learning_rate", "1e-3",
        "--weight_decay", "0.1", "--dropout", "0.0", "--num_train_epochs", "2", "--zero_stage", "0",
        "--output_dir", str(rm), "--disable_tqdm"])
    assert data_line(p.stdout) == (96, 40)   # 4/10: pairs
    assert "[flags] --num_padding_at_beginning: not needed" in p.stdout
    accs = [r["eval/accuracy"] for r in read_metrics(rm) if "eval/accuracy" in r]
    # 40 held-out pairs, a reward model on 96 pairs over an SFT model of 48 rows
    assert accs[-1] >= accs[0] + 0.1 and accs[-1] >= 0.6

    dpo = tmp_path / "dpo"
    p = run_module("training.step2_dpo.main", [
        *data, "--model_name_or_path", str(sft), "--per_device_train_batch_size", "8", "--per_device_eval_batch_size",
        "8", "--max_seq_len", "512", "--learning_rate", "1e-3", "--weight_decay", "0.1", "--num_train_epochs", "1",
        "--dropout", "0.0", "--zero_stage", "0", "--offload", "--output_dir", str(dpo), "--disable_tqdm"])
    assert data_line(p.stdout) == (96, 40)
    assert "[flags] --offload: ZeRO stage 0 keeps everything on the device" in p.stdout
    acc = [r["eval/rewards/accuracy"] for r in read_metrics(dpo) if "eval/rewards/accuracy" in r]
    assert acc[-1] > 0.5

    ppo = tmp_path / "ppo"
    p = run_module("training.step3_rlhf.main", [
        *data, "--actor_model_name_or_path", str(sft), "--critic_model_name_or_path", str(rm),
        "--num_padding_at_beginning", "1", "--per_device_generation_batch_size", "8",
        "--per_device_training_batch_size", "8", "--generation_batches", "1", "--ppo_epochs", "1",
        "--max_answer_seq_len", "8", "--max_prompt_seq_len", "256", "--actor_learning_rate", "1e-4",
        "--critic_learning_rate", "1e-4", "--actor_weight_decay", "0.1", "--critic_weight_decay", "0.1",
        "--num_train_epochs", "1", "--lr_scheduler_type", "cosine", "--gradient_accumulation_steps", "1",
        "--actor_gradient_checkpointing", "--critic_gradient_checkpointing", "--offload_reference_model",
        "--actor_dropout", "0.0", "--num_warmup_steps", "100", "--actor_zero_stage", "2", "--critic_zero_stage",
        "2", "--enable_hybrid_engine", "--output_dir", str(ppo), "--max_steps", "3", "--disable_tqdm"])
    assert "[data] 96 prompts" in p.stdout   # 4/10: prompts, chosen as the reference answer
    assert "[flags] --enable_hybrid_engine: needs a GPU" in p.stdout
    assert "[flags] --offload_reference_model: weights are offloaded at --actor_zero_stage 3 only" in p.stdout
    assert len(read_metrics(ppo)) == 3 and (ppo / "actor" / "config.json").is_file()


def fork_rlhf(actor, rm, prompts, out, *extra) -> list[str]:
    cmd = next(c for c in COMMANDS if c.source == "DeepSpeed-Chat-Extension/scripts/rlhf.sh")
    argv = substitute(cmd, {"ACTOR": str(actor), "REWARD": str(rm), "CRITIC": str(rm), "TOKENIZER": str(actor),
                            "REWARD_TOKENIZER": str(rm), "DATA": str(prompts), "OUTPUT": str(out),
                            "CACHE": str(out.parent / f"{out.name}-cache")})
    # the script as written, then what keeps it short on a CPU: later flags win
    return [*argv, "--max_answer_seq_len", "6", "--max_prompt_seq_len", "64", "--max_steps", "2", "--disable_tqdm",
            *map(str, extra)]


@pytest.fixture(scope="module")
def prompt_folder(tmp_path_factory):
    from tests.conftest import write_jsonl

    lines = (DEMO_DATA / "rlhf" / "train.txt").read_text().splitlines()
    root = tmp_path_factory.mktemp("rlhf_data")
    write_jsonl(root / "train.txt", lines[:32])
    write_jsonl(root / "test.txt", lines[32:40])
    return root


@pytest.mark.parametrize("extra", [[], ["--dynamic_sampling"]], ids=["ppo", "esrl"])
def test_fork_rlhf_script(sft_dir, rm_dir, prompt_folder, tmp_path, extra):
    out = tmp_path / "out"
    p = run_module("training.step3_rlhf.main", fork_rlhf(sft_dir, rm_dir, prompt_folder, out, *extra))
    rows = read_metrics(out)
    assert len(rows) == 2 and rows[-1]["pg_loss"] == rows[-1]["pg_loss"]
    assert "[flags] --offload" not in p.stdout          # ZeRO-3 on both models: offload is real here
    assert "[data] 32 prompts" in p.stdout
    if extra:
        assert "esrl/samples_per_prompt" in rows[0]
    assert (out / "actor").is_dir() and (out / "critic").is_dir()


def test_fork_rlhf_script_with_comet(sft_dir, rm_dir, prompt_folder, tmp_path):
    from devtools.tiny_comet import build_tiny_comet

    texts = (DEMO_DATA / "rlhf" / "train.txt").read_text().splitlines()[:200]
    comet = build_tiny_comet(tmp_path / "comet", texts, vocab_size=120, hidden_size=32, layers=1, seed=3)
    out = tmp_path / "out"
    run_module("training.step3_rlhf.main", fork_rlhf(sft_dir, rm_dir, prompt_folder, out, "--use_comet_model",
                                                     "--comet_model_path", comet, "--comet_model_batch_size", 4))
    rows = read_metrics(out)
    assert len(rows) == 2 and "reward/comet0" in rows[0] and "reward/reward_model" not in rows[0]
