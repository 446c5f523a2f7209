"""Every stage on every model family: SFT -> reward model -> DPO -> PPO on tiny models of twelve
families (devtools/tiny_families.py), and the reward model's held-out accuracy as our training logged
it and as stock transformers scores the saved folder (`AutoTokenizer(rm)(prompt + answer)`).

    .venv/bin/python -m scripts.bench.families [--families gpt2 opt ...] [--out output/families]
        [--sft_steps 150 | --sft_epochs 2] [--rm_epochs 2] [--rm_batch 8] [--dpo_steps 50] [--ppo_steps 4]

`--sft_epochs 2 --rm_batch 16` is the demo's budget (scripts/sft.sh, scripts/reward.sh).

Families alternate ZeRO stage 0 and 3. Prints one row per family: each stage's result (its last
held-out metric, or FAIL with the log's path) and the reward model's own vs stock accuracy.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "examples" / "demo" / "data"


def run(module: str, args: list, out: Path) -> tuple[bool, list[dict], float]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    t = time.perf_counter()
    with open(out.with_suffix(".log"), "w") as log:
        p = subprocess.run([sys.executable, "-m", module, *map(str, args), "--output_dir", str(out), "--disable_tqdm"],
                           cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    metrics = out / "metrics.jsonl"
    rows = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.is_file() else []
    return p.returncode == 0, rows, time.perf_counter() - t


def last(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if key in r]
    return vals[-1] if vals else None


def stock_accuracy(rm_dir: Path, pairs: list[dict]) -> float:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(rm_dir)
    model = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    right = 0
    with torch.no_grad():
        for r in pairs:
            c, j = (model(**tok(r["prompt"] + r[k], return_tensors="pt")).logits[0, 0] for k in ("chosen", "rejected"))
            right += int(c > j)
    return right / len(pairs)


def family_row(family: str, a, out: Path, zero: int) -> dict:
    from examples.demo.build_model import corpus
    from devtools.tiny_families import build_family

    base = build_family(family, corpus()[:1500], out / "base", hidden_size=a.hidden_size, layers=a.layers)
    common = ["--zero_stage", zero, "--seed", 1]
    row = {"family": family, "zero": zero}
    ok, rows, t = run("training.step1_sft.main", ["--model_name_or_path", base, "--data_path", DATA / "sft",
                                                  "--max_seq_len", 64, "--per_device_train_batch_size", 16,
                                                  "--learning_rate", 3e-3, "--num_warmup_steps", 10,
                                                  *(["--num_train_epochs", a.sft_epochs] if a.sft_epochs else
                                                    ["--max_steps", a.sft_steps]), *common], out / "sft")
    row["sft"] = f"loss {last(rows, 'eval/loss'):.2f}" if ok else f"FAIL {out / 'sft.log'}"
    if not ok:
        return row
    ok, rows, t = run("training.step2_reward.main", ["--model_name_or_path", out / "sft", "--data_path",
                                                     DATA / "preference", "--max_seq_len", 64,
                                                     "--per_device_train_batch_size", a.rm_batch, "--learning_rate",
                                                     1e-3, "--num_warmup_steps", 10, "--num_train_epochs", a.rm_epochs,
                                                     *common], out / "rm")
    if ok:
        import pyarrow.parquet as pq

        pairs = pq.read_table(DATA / "preference" / "test.parquet").to_pylist()
        row["rm_own"], row["rm_stock"] = last(rows, "eval/accuracy"), stock_accuracy(out / "rm", pairs)
        row["rm"] = f"acc {row['rm_own']:.3f}"
    else:
        row["rm"] = f"FAIL {out / 'rm.log'}"
    ok_dpo, rows, t = run("training.step2_dpo.main", ["--model_name_or_path", out / "sft", "--data_path",
                                                      DATA / "preference", "--max_seq_len", 64,
                                                      "--per_device_train_batch_size", 8, "--learning_rate", 5e-4,
                                                      "--max_steps", a.dpo_steps, "--reference_zero_stage", zero,
                                                      *common], out / "dpo")
    row["dpo"] = f"acc {last(rows, 'eval/rewards/accuracy'):.3f}" if ok_dpo else f"FAIL {out / 'dpo.log'}"
    if ok:
        ok, rows, t = run("training.step3_rlhf.main", [
            "--actor_model_name_or_path", out / "sft", "--critic_model_name_or_path", out / "rm", "--data_path",
            DATA / "rlhf", "--max_prompt_seq_len", 48, "--max_answer_seq_len", 8, "--per_device_generation_batch_size",
            8, "--per_device_training_batch_size", 8, "--max_steps", a.ppo_steps, "--actor_zero_stage", zero,
            "--critic_zero_stage", zero, "--seed", 1], out / "ppo")
        first = rows[0] if rows else {}
        row["ppo"] = (f"ratio {first.get('ratio', float('nan')):.4f} kl {first.get('approx_kl', float('nan')):.1e}"
                      if ok else f"FAIL {out / 'ppo.log'}")
    return row


def main() -> None:
    from devtools.tiny_families import FAMILIES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    ap.add_argument("--out", default="output/families")
    ap.add_argument("--hidden_size", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--sft_steps", type=int, default=150)
    ap.add_argument("--sft_epochs", type=int, default=None, help="whole epochs instead of --sft_steps")
    ap.add_argument("--rm_batch", type=int, default=8)
    ap.add_argument("--rm_epochs", type=int, default=2)
    ap.add_argument("--dpo_steps", type=int, default=50)
    ap.add_argument("--ppo_steps", type=int, default=4)
    a = ap.parse_args()
    print(f"{'family':9s} {'zero':>4s}  {'sft':14s} {'reward model':14s} {'stock':>6s} {'dpo':10s} ppo (first round)",
          flush=True)
    for i, family in enumerate(a.families):
        out = Path(a.out) / family
        out.mkdir(parents=True, exist_ok=True)
        row = family_row(family, a, out, zero=3 if i % 2 else 0)
        stock = f"{row['rm_stock']:.3f}" if "rm_stock" in row else "-"
        print(f"{family:9s} {row['zero']:>4d}  {row['sft']:14s} {row.get('rm', '-'):14s} {stock:>6s} "
              f"{row.get('dpo', '-'):10s} {row.get('ppo', '-')}", flush=True)


if __name__ == "__main__":
    main()
