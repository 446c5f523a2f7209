"""Plain PPO vs ESRL on the demo task, same seed, prompts and epochs, side by side in one run.

Both runs start from the demo's SFT model and reward model (run `bash scripts/demo.sh` once
first) and log held-out accuracy (greedy, the 200 unseen demo prompts, scored by the demo's
exact-match rule; with --reward model the rule has weight 0, so it never enters training)
every --eval_every rounds. The target is plain PPO's final held-out accuracy; for each run
the bench finds the first evaluation at or above it and reports, side by side and as
ESRL / PPO ratios:

- training wall time to the target (generation + experience + updates; start-up, evaluation
  and saving excluded, the same for both),
- tokens sampled, and sequences through the reward model, the reference and the critic, up
  to that point,
- peak resident memory of the whole process (os.wait4's ru_maxrss); on the demo model the
  libraries dominate it, so a memory phase also runs a few rounds of each on a larger,
  untrained Llama (--memory_hidden/--memory_layers) in each of --memory_dtypes.

    .venv/bin/python -m scripts.bench.esrl [--demo_dir output/demo] [--epochs 2] [--seeds 1234 1 2]
        [--reward model|rule] [--esrl "--esrl_max_samples 3 --esrl_eliminate_ratio 0.3"]
        [--memory_hidden 1024 --memory_layers 8 --memory_dtypes fp32 bf16]   (--seeds alone: memory only)
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(args: list[str], out: Path) -> dict:
    """Train in a child process; return its metrics and peak RSS (MiB)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "training.step3_rlhf.main", *args, "--output_dir", str(out)]
    with open(out.with_suffix(".log"), "w") as log:
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"error: run failed, see {out.with_suffix('.log')}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"rows": rows, "rss_mib": usage.ru_maxrss / 1024}


def warm_up() -> None:
    """Build DeepSpeed's CPU communication op now if it is not cached yet: built inside the first
    run, the compiler's memory would count in that run's peak RSS (ru_maxrss covers the
    descendants a process waited for)."""
    code = "from utils import distributed as d; d.set_env_defaults(); d.init_distributed(); d.teardown()"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: DeepSpeed start-up failed:\n{done.stderr}")


def progress(rows: list[dict], target: float) -> dict | None:
    """Cumulative cost at the first evaluation reaching `target` (None if never)."""
    elapsed = 0.0
    for r in rows:
        elapsed += r["time/generation"] + r["time/experience"] + r["time/training"]
        acc = r.get("eval/reward/reward")
        if acc is not None and acc >= target - 1e-9:
            return {"step": r["step"], "time": elapsed, "accuracy": acc, "tokens": r["count/sampled_tokens"],
                    "scored": r["count/scored_sequences"]}
    return None


def compare(plain: dict, esrl: dict) -> dict:
    """Progress of both runs at the first evaluation reaching PPO's final accuracy, and peak RSS."""
    target = plain["rows"][-1]["eval/reward/reward"]
    return {"target": target, "esrl_final": esrl["rows"][-1]["eval/reward/reward"],
            "P": progress(plain["rows"], target), "E": progress(esrl["rows"], target),
            "rss": (plain["rss_mib"], esrl["rss_mib"])}


def esrl_flags(a, critic: Path) -> list[str]:
    mode = ["--critic_model_name_or_path", str(critic)] if a.esrl_critic else ["--remove_critic_model"]
    return ["--dynamic_sampling", *mode, *shlex.split(a.esrl)]


def memory_phase(a, shared: list[str], tmp: Path) -> dict[str, tuple[float, float]]:
    """Peak RSS of a few rounds of each method on a larger (untrained) model with the demo
    tokenizer, where model states, not the libraries, dominate memory. Returns MiB (PPO, ESRL)
    per --memory_dtypes entry."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from utils.tiny import build_model

    tok = AutoTokenizer.from_pretrained(ROOT / a.demo_dir / "sft")
    big = tmp / "big"
    build_model(tok, big, hidden_size=a.memory_hidden, layers=a.memory_layers, heads=8, max_position=64)
    tok.save_pretrained(big)
    rm = AutoModelForSequenceClassification.from_pretrained(big, num_labels=1)
    rm.config.pad_token_id = tok.pad_token_id
    rm.save_pretrained(tmp / "big_rm")
    tok.save_pretrained(tmp / "big_rm")
    swap = {"--actor_model_name_or_path": str(big), "--reward_model_name_or_path": str(tmp / "big_rm")}
    args = [swap.get(prev, x) for prev, x in zip([None] + shared, shared)]
    out = {}
    for dtype in a.memory_dtypes:
        rounds = ["--max_steps", str(a.memory_rounds), "--eval_steps", "0", "--seed", "1", "--dtype", dtype]
        plain = run(args + rounds + ["--critic_model_name_or_path", str(tmp / "big_rm")] + shlex.split(a.ppo),
                    tmp / f"mem_ppo_{dtype}")
        esrl = run(args + rounds + esrl_flags(a, tmp / "big_rm"), tmp / f"mem_esrl_{dtype}")
        out[dtype] = plain["rss_mib"], esrl["rss_mib"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo_dir", default="output/demo")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="*", default=[1234, 1, 2], help="none: only the memory phase")
    p.add_argument("--eval_every", type=int, default=4)
    p.add_argument("--esrl", default="--esrl_min_samples 2 --esrl_max_samples 4 --esrl_eliminate_ratio 0.5 "
                                     "--per_device_generation_batch_size 16",
                   help="ESRL flags added to the shared ones (besides --dynamic_sampling and the critic mode)")
    p.add_argument("--ppo", default="", help="extra flags for the plain PPO run")
    p.add_argument("--esrl_critic", action="store_true", help="ESRL with PPO and its critic, not REINFORCE")
    p.add_argument("--reward", choices=["model", "rule"], default="model",
                   help="train against the demo reward model, or against the demo's exact-match rule")
    p.add_argument("--memory_hidden", type=int, default=1024,
                   help="hidden size of the larger model of the memory phase (0: skip it)")
    p.add_argument("--memory_layers", type=int, default=8)
    p.add_argument("--memory_rounds", type=int, default=3)
    p.add_argument("--memory_dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"],
                   help="precisions of the memory phase (bf16: DeepSpeed mixed precision, fp32 master weights)")
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
        "--num_train_epochs", str(a.epochs), "--disable_tqdm",
        "--eval_steps", str(a.eval_every), "--eval_data_path", "examples/demo/data/heldout.txt",
        "--reward_functions", "examples.demo.task:reward",
    ]
    shared += ["--reward_function_weights", "0"] if a.reward == "model" else ["--use_reward_model", "false"]
    warm_up()
    tmp = Path(tempfile.mkdtemp(prefix="bench_esrl_"))
    print(f"demo task, {a.reward} reward, {a.epochs} epochs of 1000 prompts; ESRL flags: {a.esrl}")
    print("per seed, at the first evaluation reaching plain PPO's final held-out accuracy (ratios ESRL / PPO):")
    print(f"{'seed':>6} {'target':>7} {'ESRL final':>10} {'rounds':>9} {'time':>6} {'tokens':>7} {'rm/ref seq':>10} "
          f"{'critic seq':>10} {'peak RSS':>9}")
    results = []
    for seed in a.seeds:
        flags = ["--seed", str(seed)]
        plain = run(shared + flags + ["--critic_model_name_or_path", str(demo / "reward")] + shlex.split(a.ppo),
                    tmp / f"ppo{seed}")
        esrl = run(shared + flags + esrl_flags(a, demo / "reward"), tmp / f"esrl{seed}")
        r = compare(plain, esrl)
        P, E = r["P"], r["E"]
        rss = r["rss"][1] / r["rss"][0]
        if E is None:
            print(f"{seed:>6} {r['target']:7.3f} {r['esrl_final']:10.3f} {'never':>9} {'-':>6} {'-':>7} {'-':>10} "
                  f"{'-':>10} {rss:9.2f}")
        else:
            r["ratios"] = {"time": E["time"] / P["time"], "tokens": E["tokens"] / P["tokens"],
                           "scored": E["scored"] / P["scored"], "rss": rss}
            critic = r["ratios"]["scored"] if a.esrl_critic else 0.0
            print(f"{seed:>6} {r['target']:7.3f} {r['esrl_final']:10.3f} {E['step']:>4}/{P['step']:<4} "
                  f"{r['ratios']['time']:6.2f} {r['ratios']['tokens']:7.2f} {r['ratios']['scored']:10.2f} "
                  f"{critic:10.2f} {rss:9.2f}")
        results.append(r)
    reached = [r for r in results if r["E"] is not None]
    if results:
        print(f"ESRL reached the target in {len(reached)} of {len(results)} seeds", end="")
        if reached:
            med = {k: statistics.median(r["ratios"][k] for r in reached) for k in ("time", "tokens", "scored", "rss")}
            print(f"; medians over those: time {med['time']:.2f}, tokens {med['tokens']:.2f}, reward/reference "
                  f"sequences {med['scored']:.2f}, critic sequences {med['scored'] if a.esrl_critic else 0:.2f}, "
                  f"peak RSS {med['rss']:.2f}")
        else:
            print()
        rss = [r["rss"] for r in results]
        print("peak RSS MiB (PPO / ESRL): " + ", ".join(f"{x:.0f}/{y:.0f}" for x, y in rss))
    if a.memory_hidden:
        n = a.memory_hidden
        params = a.memory_layers * (4 * n * n + 3 * n * 4 * n)
        for dtype, (x, y) in memory_phase(a, shared, tmp).items():
            print(f"memory, {a.memory_rounds} rounds on a {params / 1e6:.0f}M-parameter Llama ({n} hidden, "
                  f"{a.memory_layers} layers, untrained), {dtype}: peak RSS PPO {x:.0f} MiB, ESRL {y:.0f} MiB, "
                  f"ratio {y / x:.2f}")
    print(f"(training time excludes start-up and evaluation; logs and metrics in {tmp})")


if __name__ == "__main__":
    main()
