"""SFT -> reward model -> DPO -> PPO on a tiny model of each of twelve families (their tokenizers'
special-token habits and default dropout, devtools/tiny_families.py), on ZeRO 0 and 3 in turn, and
one family through the launcher at two processes. Every saved model reloads in stock
transformers; the reward model scores there exactly as ours does; DPO starts with policy ==
reference and PPO's first minibatch with ratio 1 and approx_kl 0.

Each family runs all four steps in one fresh interpreter (the mains called as functions): a
launch per step would cost more than the training."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.conftest import DEMO_DATA, in_fresh_process, load_weights, read_metrics, run_module, write_jsonl
from devtools.tiny_families import FAMILIES

STEPS = ("training.step1_sft.main", "training.step2_reward.main", "training.step2_dpo.main",
         "training.step3_rlhf.main")
TWO_PROCESS_FAMILY = "opt"   # BOS is its EOS (`</s>` prepended), the case where "last attended" matters


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """Slices of the demo data: 64 + 16 SFT rows, 64 + 16 preference pairs, 16 prompts."""
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("family_data")
    sft = (DEMO_DATA / "sft" / "train.txt").read_text().splitlines()
    write_jsonl(root / "sft" / "train.txt", sft[:64])
    write_jsonl(root / "sft" / "test.txt", sft[64:80])
    (root / "preference").mkdir()
    for split, n in (("train", 64), ("test", 16)):
        pq.write_table(pq.read_table(DEMO_DATA / "preference" / f"{split}.parquet").slice(0, n),
                       root / "preference" / f"{split}.parquet")
    write_jsonl(root / "prompts.txt", (DEMO_DATA / "rlhf" / "train.txt").read_text().splitlines()[:16])
    return root


def step_argv(base: Path, data: Path, out: Path, zero: int) -> list[list[str]]:
    """Each step's flags: three optimizer steps of the steps 1-2, one PPO round (one minibatch)."""
    common = ["--seed", "1", "--disable_tqdm", "--max_seq_len", "48", "--per_device_train_batch_size", "8",
              "--max_steps", "3", "--learning_rate", "1e-3", "--zero_stage", str(zero)]
    return [
        ["--model_name_or_path", str(base), "--data_path", str(data / "sft"), "--output_dir", str(out / "sft"),
         *common],
        ["--model_name_or_path", str(out / "sft"), "--data_path", str(data / "preference"), "--output_dir",
         str(out / "rm"), *common],
        ["--model_name_or_path", str(out / "sft"), "--data_path", str(data / "preference"), "--output_dir",
         str(out / "dpo"), "--reference_zero_stage", str(zero), *common],
        ["--actor_model_name_or_path", str(out / "sft"), "--critic_model_name_or_path", str(out / "rm"),
         "--data_path", str(data / "prompts.txt"), "--output_dir", str(out / "ppo"), "--max_prompt_seq_len", "40",
         "--max_answer_seq_len", "6", "--per_device_generation_batch_size", "8",
         "--per_device_training_batch_size", "8", "--max_steps", "1", "--actor_zero_stage", str(zero),
         "--critic_zero_stage", str(zero), "--seed", "1", "--disable_tqdm"],
    ]


def run_steps_in_process(argvs: list[list[str]]) -> None:
    import importlib

    for module, argv in zip(STEPS, argvs):
        importlib.import_module(module).main(argv)


def check_outputs(base: Path, data: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    for folder, cls, before in ((out / "sft", AutoModelForCausalLM, base), (out / "dpo", AutoModelForCausalLM,
                                out / "sft"), (out / "ppo" / "actor", AutoModelForCausalLM, out / "sft"),
                                (out / "rm", AutoModelForSequenceClassification, None),
                                (out / "ppo" / "critic", AutoModelForSequenceClassification, out / "rm")):
        model, info = cls.from_pretrained(folder, output_loading_info=True)
        assert not any(info.values()), f"{folder}: {info}"
        AutoTokenizer.from_pretrained(folder)
        if before is not None:   # trained and saved whole (ZeRO-3 shards gathered)
            old, new = load_weights(before), load_weights(folder)
            moved = [k for k in new if k in old and new[k].shape == old[k].shape and not torch.equal(new[k], old[k])]
            assert len(moved) >= len(new) // 2, f"{folder}: only {moved} changed"

    dpo0 = read_metrics(out / "dpo")[0]   # before any step the policy is the reference
    assert dpo0["step"] == 0 and dpo0["eval/rewards/margin"] == 0.0
    assert dpo0["eval/loss"] == pytest.approx(math.log(2), abs=1e-7)

    first = read_metrics(out / "ppo")[0]
    assert (first["ratio"], first["approx_kl"], first["kl"]) == (1.0, 0.0, 0.0), first
    check_reward_model(out / "rm", data)


def check_reward_model(rm: Path, data: Path) -> None:
    """Held-out pairs scored by step 3's reward path (our loader, `reward_model_ids`) and by stock
    `AutoTokenizer(rm)(prompt + answer)` -> `AutoModelForSequenceClassification`: the same ids,
    the same scores, and the accuracy training logged."""
    import pyarrow.parquet as pq
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from utils.data.preference import reward_model_ids
    from utils.models import load_reward_model, load_tokenizer
    from utils.rewards import reward_model_scores

    pairs = pq.read_table(data / "preference" / "test.parquet").to_pylist()
    texts = [r["prompt"] + r[k] for k in ("chosen", "rejected") for r in pairs]
    tok = load_tokenizer(str(rm))
    ours = reward_model_scores(load_reward_model(str(rm), tok).eval(), tok, texts, len(texts), "cpu")
    stock_tok = AutoTokenizer.from_pretrained(rm)
    assert stock_tok.pad_token_id is not None and stock_tok.pad_token_id != stock_tok.eos_token_id
    encoded = stock_tok(texts, padding=True, return_tensors="pt")
    assert reward_model_ids(tok, texts) == stock_tok(texts)["input_ids"]
    with torch.no_grad():
        stock = AutoModelForSequenceClassification.from_pretrained(rm).eval()(**encoded).logits[:, 0]
    assert torch.equal(ours, stock)
    n = len(pairs)
    logged = [r for r in read_metrics(rm) if "eval/accuracy" in r][-1]
    assert float((stock[:n] > stock[n:]).float().mean()) == logged["eval/accuracy"]
    assert float(stock[:n].mean()) == pytest.approx(logged["eval/chosen_score"], abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_every_step_on_every_family(family, family_dirs, small_data, tmp_path):
    zero = 3 if FAMILIES.index(family) % 2 else 0
    in_fresh_process(run_steps_in_process, step_argv(family_dirs[family], small_data, tmp_path, zero))
    check_outputs(family_dirs[family], small_data, tmp_path)


@pytest.mark.slow
def test_every_step_at_two_processes(family_dirs, small_data, tmp_path):
    for module, argv in zip(STEPS, step_argv(family_dirs[TWO_PROCESS_FAMILY], small_data, tmp_path, zero=3)):
        run_module(module, argv, nproc=2)
    check_outputs(family_dirs[TWO_PROCESS_FAMILY], small_data, tmp_path)
