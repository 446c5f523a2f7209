"""Step 3's advantage estimators on the demo task with its rule reward, side by side: PPO with the
critic (GAE), GRPO, RLOO and REINFORCE++, same SFT model, prompts, epochs and seeds.

Every run trains against the demo's exact-match rule and is scored greedily on the 200 held-out
demo prompts every --eval_prompts training prompts, so the curves line up by prompts seen. The
group estimators sample --samples answers per prompt from --group_prompts prompts per round,
the others one answer from --samples x --group_prompts prompts: every round samples as many
sequences. Per seed the bench prints each method's learning curve, its final accuracy, and its
training wall time (generation + experience + updates) to plain PPO's final accuracy, as a ratio
to PPO's own. Run `bash scripts/demo.sh` once first.

    .venv/bin/python -m scripts.bench.estimators [--seeds 1 2 3] [--epochs 2]
        [--methods ppo grpo rloo reinforce_pp] [--extra "--use_kl_loss"]
"""
from __future__ import annotations

import argparse
import shlex
import statistics
import tempfile
from pathlib import Path

from scripts.bench.common import round_phases
from scripts.bench.esrl import ROOT, progress, run, warm_up

METHODS = {
    "ppo": lambda demo: ["--critic_model_name_or_path", str(demo / "reward")],
    "grpo": lambda demo: ["--advantage_estimator", "grpo"],
    "dr_grpo": lambda demo: ["--advantage_estimator", "dr_grpo", "--loss_agg_mode", "seq-mean-token-sum-norm"],
    "rloo": lambda demo: ["--advantage_estimator", "rloo"],
    "reinforce_pp": lambda demo: ["--advantage_estimator", "reinforce_pp"],
}
GROUPED = {"grpo", "dr_grpo", "rloo"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo_dir", default="output/demo")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--methods", nargs="+", default=["ppo", "grpo", "rloo", "reinforce_pp"], choices=list(METHODS))
    p.add_argument("--samples", type=int, default=4, help="answers per prompt of the group estimators")
    p.add_argument("--group_prompts", type=int, default=8, help="prompts per round of the group estimators")
    p.add_argument("--eval_prompts", type=int, default=128, help="training prompts between evaluations")
    p.add_argument("--extra", default="", help="flags added to every critic-free run")
    a = p.parse_args()
    demo = ROOT / a.demo_dir
    if not (demo / "sft" / "config.json").is_file():
        raise SystemExit(f"error: {demo / 'sft'} not found: run `bash scripts/demo.sh` first")
    shared = [
        "--actor_model_name_or_path", str(demo / "sft"), "--data_path", "examples/demo/data/rlhf",
        "--max_prompt_seq_len", "32", "--max_answer_seq_len", "8", "--per_device_training_batch_size", "16",
        "--actor_learning_rate", "2e-4", "--critic_learning_rate", "1e-3", "--kl_ctl", "0.3",
        "--num_train_epochs", str(a.epochs), "--disable_tqdm", "--eval_data_path", "examples/demo/data/heldout.txt",
        "--use_reward_model", "false", "--reward_functions", "examples.demo.task:reward",
    ]
    warm_up()
    tmp = Path(tempfile.mkdtemp(prefix="bench_estimators_"))
    print(f"demo task, rule reward, {a.epochs} epochs of 1000 prompts, {a.samples * a.group_prompts} sequences per "
          f"round; group estimators: {a.samples} samples x {a.group_prompts} prompts; extra flags: {a.extra!r}")
    ratios: dict[str, list[float]] = {m: [] for m in a.methods}
    finals: dict[str, list[float]] = {m: [] for m in a.methods}
    for seed in a.seeds:
        runs = {}
        for m in a.methods:
            k = a.samples if m in GROUPED else 1
            prompts = a.group_prompts if m in GROUPED else a.group_prompts * a.samples
            flags = ["--seed", str(seed), "--num_samples_per_prompt", str(k),
                     "--per_device_generation_batch_size", str(prompts),
                     "--eval_steps", str(max(1, a.eval_prompts // prompts))]
            flags += METHODS[m](demo) + (shlex.split(a.extra) if m != "ppo" else [])
            runs[m] = run(shared + flags, tmp / f"{m}{seed}")["rows"]
        target = runs["ppo"][-1]["eval/reward/reward"] if "ppo" in runs else None
        print(f"\nseed {seed}: held-out accuracy by training prompts seen" +
              (f"; target = PPO's final {target:.3f}" if target is not None else ""))
        for m, rows in runs.items():
            prompts = a.group_prompts if m in GROUPED else a.group_prompts * a.samples
            curve = [(r["step"] * prompts, r["eval/reward/reward"]) for r in rows if "eval/reward/reward" in r]
            train = sum(sum(round_phases(r)) for r in rows)
            finals[m].append(curve[-1][1])
            line = " ".join(f"{n}:{acc:.2f}" for n, acc in curve)
            reach = ""
            if target is not None:
                got, base = progress(rows, target), progress(runs["ppo"], target)
                if got is None:
                    reach = "target never reached"
                else:
                    ratios[m].append(got["time"] / base["time"])
                    reach = f"target at {got['step'] * prompts} prompts, {got['time']:.1f} s ({ratios[m][-1]:.2f}x PPO)"
            print(f"  {m:>12}  final {curve[-1][1]:.3f}  train {train:6.1f} s  {reach}\n{'':16}{line}")
    print("\nsummary over seeds " + " ".join(map(str, a.seeds)) + ":")
    for m in a.methods:
        hit = ratios[m]
        med = f", median time to PPO's final {statistics.median(hit):.2f}x PPO's" if hit else ""
        print(f"  {m:>12}  final accuracy {' '.join(f'{x:.3f}' for x in finals[m])}; reached PPO's final in "
              f"{len(hit)} of {len(a.seeds)} seeds{med}")
    print(f"(training time excludes start-up and evaluation; logs and metrics in {tmp})")


if __name__ == "__main__":
    main()
