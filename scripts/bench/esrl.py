"""Plain PPO vs ESRL on the demo task, same seed, prompts and epochs, side by side in one run.

Both runs start from the demo's SFT model and reward model (run `bash scripts/demo.sh` once
first) and log held-out accuracy (greedy, the 200 unseen demo prompts, scored by the demo's
rule with weight 0, so it never enters training) every --eval_every rounds. The target is
plain PPO's final held-out accuracy; for each run the bench finds the first evaluation at or
above it and reports, side by side and as ESRL / PPO ratios:

- training wall time to the target (generation + experience + updates; start-up, evaluation
  and saving excluded, the same for both),
- tokens sampled, and sequences through the reward model, the reference and the critic, up
  to that point,
- peak resident memory of the whole process (os.wait4's ru_maxrss).

    .venv/bin/python -m scripts.bench.esrl [--demo_dir output/demo] [--epochs 2] [--seed 1234]
        [--reward model|rule] [--esrl "--esrl_max_samples 3 --esrl_eliminate_ratio 0.3"]
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(args: list[str], out: Path) -> dict:
    """Train in a child process; return its metrics and peak RSS (MiB)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "training.step3_rlhf.main", *args, "--output_dir", str(out)]
    t = time.perf_counter()
    with open(out.with_suffix(".log"), "w") as log:
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"error: run failed, see {out.with_suffix('.log')}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"rows": rows, "rss_mib": usage.ru_maxrss / 1024, "wall": wall}


def progress(rows: list[dict], target: float) -> dict:
    """Cumulative cost at the first evaluation reaching `target` (None if never)."""
    elapsed = 0.0
    for r in rows:
        elapsed += r["time/generation"] + r["time/experience"] + r["time/training"]
        acc = r.get("eval/reward/reward")
        if acc is not None and acc >= target - 1e-9:
            return {"step": r["step"], "time": elapsed, "accuracy": acc, "tokens": r["count/sampled_tokens"],
                    "scored": r["count/scored_sequences"]}
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo_dir", default="output/demo")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--eval_every", type=int, default=4)
    p.add_argument("--esrl", default="--esrl_min_samples 2 --esrl_max_samples 4 --esrl_eliminate_ratio 0.5 "
                                     "--per_device_generation_batch_size 16",
                   help="ESRL flags added to the shared ones (besides --dynamic_sampling --remove_critic_model)")
    p.add_argument("--ppo", default="", help="extra flags for the plain PPO run")
    p.add_argument("--reward", choices=["model", "rule"], default="model",
                   help="train against the demo reward model, or against the demo's exact-match rule")
    a = p.parse_args()
    demo = ROOT / a.demo_dir
    for sub in ("sft", "reward"):
        if not (demo / sub / "config.json").is_file():
            raise SystemExit(f"error: {demo / sub} not found: run `bash scripts/demo.sh` first")
    shared = [
        "--actor_model_name_or_path", str(demo / "sft"), "--reward_model_name_or_path", str(demo / "reward"),
        "--data_path", "examples/demo/data/rlhf", "--max_prompt_seq_len", "32", "--max_answer_seq_len", "8",
        "--per_device_generation_batch_size", "32", "--per_device_training_batch_size", "16",
        "--actor_learning_rate", "2e-4", "--critic_learning_rate", "1e-3", "--kl_ctl", "0.3",
        "--num_train_epochs", str(a.epochs), "--seed", str(a.seed), "--disable_tqdm",
        "--eval_steps", str(a.eval_every), "--eval_data_path", "examples/demo/data/heldout.txt",
        "--reward_functions", "examples.demo.task:reward",
    ]
    shared += ["--reward_function_weights", "0"] if a.reward == "model" else ["--use_reward_model", "false"]
    tmp = Path(tempfile.mkdtemp(prefix="bench_esrl_"))
    plain = run(shared + ["--critic_model_name_or_path", str(demo / "reward")] + shlex.split(a.ppo), tmp / "ppo")
    esrl = run(shared + ["--dynamic_sampling", "--remove_critic_model"] + shlex.split(a.esrl), tmp / "esrl")

    target = plain["rows"][-1]["eval/reward/reward"]
    P, E = progress(plain["rows"], target), progress(esrl["rows"], target)
    print(f"demo task, {a.epochs} epochs of 1000 prompts, seed {a.seed}; ESRL flags: {a.esrl}")
    print(f"target = plain PPO's final held-out accuracy {target:.3f}; "
          f"ESRL's final {esrl['rows'][-1]['eval/reward/reward']:.3f}")
    if E is None:
        print("ESRL never reached the target")
        best = max(r.get("eval/reward/reward", 0) for r in esrl["rows"])
        print(f"ESRL best held-out accuracy {best:.3f}")
        return
    critic_p, critic_e = P["scored"], 0   # ESRL runs without a critic
    lines = [
        ("round reaching the target", P["step"], E["step"], None),
        ("training time to target (s)", P["time"], E["time"], E["time"] / P["time"]),
        ("tokens sampled", P["tokens"], E["tokens"], E["tokens"] / P["tokens"]),
        ("reward-model sequences", P["scored"], E["scored"], E["scored"] / P["scored"]),
        ("reference sequences", P["scored"], E["scored"], E["scored"] / P["scored"]),
        ("critic sequences", critic_p, critic_e, critic_e / critic_p),
        ("peak RSS (MiB)", plain["rss_mib"], esrl["rss_mib"], esrl["rss_mib"] / plain["rss_mib"]),
        ("process wall time, whole run (s)", plain["wall"], esrl["wall"], esrl["wall"] / plain["wall"]),
    ]
    print(f"{'':34} {'PPO':>10} {'ESRL':>10} {'ESRL/PPO':>9}")
    for name, x, y, ratio in lines:
        fmt = (lambda v: f"{v:10.0f}") if isinstance(x, int) or float(x).is_integer() else (lambda v: f"{v:10.1f}")
        print(f"{name:34} {fmt(x)} {fmt(y)} {'' if ratio is None else f'{ratio:9.2f}'}")
    print(f"(logs and metrics in {tmp})")


if __name__ == "__main__":
    main()
