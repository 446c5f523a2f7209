"""Plain PPO or GRPO vs ESRL on the demo task, same seed, prompts and epochs, side by side in one run.

Both runs start from the demo's SFT model and reward model (run `bash scripts/demo.sh` once
first) and log held-out accuracy (greedy, the 200 unseen demo prompts, scored by the demo's
exact-match rule; with --reward model the rule has weight 0, so it never enters training)
every --eval_every rounds. The target is the baseline's final held-out accuracy; for each run
the bench finds the first evaluation at or above it and reports, side by side and as
ESRL / baseline ratios:

- training wall time to the target (generation + experience + updates; start-up, evaluation
  and saving excluded, the same for both),
- tokens sampled, and sequences through the reference and the critic (and the update), up to
  that point,
- peak resident memory of the whole process (os.wait4's ru_maxrss); on the demo model the
  libraries dominate it, so a memory phase also runs a few rounds of each on a larger,
  untrained Llama (--memory_hidden/--memory_layers) in each of --memory_dtypes.

--baseline ppo (the default) compares plain PPO (one sample per prompt, 32 prompts per round) with
critic-free ESRL; --baseline grpo compares GRPO with --samples answers per prompt and
--group_prompts prompts per round with ESRL on the same budget (`--dynamic_sampling
--advantage_estimator grpo`, the same k and prompts per round, so ESRL never samples more), prints
both learning curves with their cumulative training time, and also ESRL's time to the target as a
fraction of GRPO's whole training time.

    .venv/bin/python -m scripts.bench.esrl [--demo_dir output/demo] [--epochs 2] [--seeds 1234 1 2]
        [--reward model|rule] [--baseline ppo|grpo] [--esrl "--esrl_max_samples 3 --esrl_eliminate_ratio 0.3"]
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

from scripts.bench.common import round_phases

ROOT = Path(__file__).resolve().parents[2]


def start(args: list[str], out: Path) -> subprocess.Popen:
    """Start training in a child process, its output in out.log."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "training.step3_rlhf.main", *args, "--output_dir", str(out)]
    with open(out.with_suffix(".log"), "w") as log:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def finish(p: subprocess.Popen, out: Path) -> dict:
    """Wait for a started run; return its metrics and peak RSS (MiB)."""
    _, status, usage = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"error: run failed, see {out.with_suffix('.log')}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"rows": rows, "rss_mib": usage.ru_maxrss / 1024}


def run(args: list[str], out: Path) -> dict:
    """Train in a child process; return its metrics and peak RSS (MiB)."""
    return finish(start(args, out), out)


def run_pair(a: list[str], b: list[str], out_a: Path, out_b: Path, parallel: bool) -> tuple[dict, dict]:
    """Two runs, one after the other, or at once (--parallel: on a machine others share, both then
    meet the same load, so their time ratio holds while each one's time does not)."""
    if not parallel:
        return run(a, out_a), run(b, out_b)
    pa, pb = start(a, out_a), start(b, out_b)
    return finish(pa, out_a), finish(pb, out_b)


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
        elapsed += sum(round_phases(r))
        acc = r.get("eval/reward/reward")
        if acc is not None and acc >= target - 1e-9:
            return {"step": r["step"], "time": elapsed, "accuracy": acc, "tokens": r["count/sampled_tokens"],
                    "scored": r["count/trained_sequences"]}
    return None


def compare(base: dict, esrl: dict) -> dict:
    """Progress of both runs at the first evaluation reaching the baseline's final accuracy, and peak RSS."""
    target = base["rows"][-1]["eval/reward/reward"]
    return {"target": target, "esrl_final": esrl["rows"][-1]["eval/reward/reward"],
            "B": progress(base["rows"], target), "E": progress(esrl["rows"], target),
            "B_total": curve(base["rows"])[-1][2], "rss": (base["rss_mib"], esrl["rss_mib"]),
            "curves": (curve(base["rows"]), curve(esrl["rows"]))}


def curve(rows: list[dict]) -> list[tuple[int, float, float]]:
    """(round, held-out accuracy, cumulative training seconds) at every evaluation."""
    out, elapsed = [], 0.0
    for r in rows:
        elapsed += sum(round_phases(r))
        if "eval/reward/reward" in r:
            out.append((r["step"], r["eval/reward/reward"], elapsed))
    return out


def group_flags(a) -> list[str]:
    return ["--advantage_estimator", "grpo", "--num_samples_per_prompt", str(a.samples),
            "--per_device_generation_batch_size", str(a.group_prompts)]


def baseline_flags(a, critic: Path) -> list[str]:
    if a.baseline == "grpo":
        return group_flags(a) + shlex.split(a.ppo)
    return ["--critic_model_name_or_path", str(critic), *shlex.split(a.ppo)]


def esrl_flags(a, critic: Path) -> list[str]:
    if a.baseline == "grpo":
        return ["--dynamic_sampling", *group_flags(a), *shlex.split(a.esrl)]
    mode = ["--critic_model_name_or_path", str(critic)] if a.esrl_critic else ["--remove_critic_model"]
    return ["--dynamic_sampling", *mode, *shlex.split(a.esrl)]


def memory_phase(a, shared: list[str], tmp: Path) -> dict[str, tuple[float, float]]:
    """Peak RSS of a few rounds of each method on a larger (untrained) model with the demo
    tokenizer, where model states, not the libraries, dominate memory. Returns MiB (baseline, ESRL)
    per --memory_dtypes entry."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from devtools.tiny import build_model

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
        base = run(args + rounds + baseline_flags(a, tmp / "big_rm"), tmp / f"mem_{a.baseline}_{dtype}")
        esrl = run(args + rounds + esrl_flags(a, tmp / "big_rm"), tmp / f"mem_esrl_{dtype}")
        out[dtype] = base["rss_mib"], esrl["rss_mib"]
    return out


def print_seed(a, seed: int, r: dict) -> None:
    """One seed's row: target, ESRL's final accuracy, rounds and the ESRL / baseline ratios."""
    B, E = r["B"], r["E"]
    rss = r["rss"][1] / r["rss"][0]
    if E is None:
        print(f"{seed:>6} {r['target']:7.3f} {r['esrl_final']:10.3f} {'never':>9} {'-':>6} {'-':>7} {'-':>7} {'-':>10} "
              f"{'-':>10} {rss:9.2f}")
        return
    r["ratios"] = {"time": E["time"] / B["time"], "total": E["time"] / r["B_total"],
                   "tokens": E["tokens"] / B["tokens"], "scored": E["scored"] / B["scored"], "rss": rss}
    critic = r["ratios"]["scored"] if a.esrl_critic else 0.0
    print(f"{seed:>6} {r['target']:7.3f} {r['esrl_final']:10.3f} {E['step']:>4}/{B['step']:<4} "
          f"{r['ratios']['time']:6.2f} {r['ratios']['total']:7.2f} {r['ratios']['tokens']:7.2f} "
          f"{r['ratios']['scored']:10.2f} {critic:10.2f} {rss:9.2f}")


def print_curves(a, seed: int, r: dict) -> None:
    for name, c in zip((a.baseline, "esrl"), r["curves"]):
        print(f"  seed {seed} {name:>5}: " + " ".join(f"{step}:{acc:.3f}@{t:.1f}s" for step, acc, t in c))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo_dir", default="output/demo")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="*", default=[1234, 1, 2], help="none: only the memory phase")
    p.add_argument("--eval_every", type=int, default=None,
                   help="rounds between evaluations (default: 4; with --baseline grpo, every 128 prompts)")
    p.add_argument("--baseline", choices=["ppo", "grpo"], default="ppo",
                   help="ppo: plain PPO against critic-free ESRL; grpo: GRPO against ESRL on the same budget")
    p.add_argument("--samples", type=int, default=4, help="--baseline grpo: answers per prompt (k) of both runs")
    p.add_argument("--group_prompts", type=int, default=8, help="--baseline grpo: prompts per round of both runs")
    p.add_argument("--esrl", default=None,
                   help="ESRL flags added to the shared ones (default with --baseline ppo: --esrl_min_samples 2 "
                        "--esrl_max_samples 4 --esrl_eliminate_ratio 0.5 --per_device_generation_batch_size 16; "
                        "with grpo: none, the product's defaults)")
    p.add_argument("--ppo", default="", help="extra flags for the baseline run")
    p.add_argument("--esrl_critic", action="store_true", help="--baseline ppo: ESRL with PPO and its critic, "
                                                              "not REINFORCE")
    p.add_argument("--parallel", action="store_true",
                   help="run each seed's two runs at once (set OMP_NUM_THREADS=1): on a machine others share, both "
                        "then meet the same load")
    p.add_argument("--reward", choices=["model", "rule"], default="model",
                   help="train against the demo reward model, or against the demo's exact-match rule")
    p.add_argument("--memory_hidden", type=int, default=1024,
                   help="hidden size of the larger model of the memory phase (0: skip it)")
    p.add_argument("--memory_layers", type=int, default=8)
    p.add_argument("--memory_rounds", type=int, default=3)
    p.add_argument("--memory_dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"],
                   help="precisions of the memory phase (bf16: DeepSpeed mixed precision, fp32 master weights)")
    a = p.parse_args()
    if a.esrl is None:
        a.esrl = ("" if a.baseline == "grpo" else
                  "--esrl_min_samples 2 --esrl_max_samples 4 --esrl_eliminate_ratio 0.5 "
                  "--per_device_generation_batch_size 16")
    if a.eval_every is None:
        a.eval_every = max(1, 128 // a.group_prompts) if a.baseline == "grpo" else 4
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
    base = a.baseline.upper()
    setup = f"{a.samples} samples x {a.group_prompts} prompts per round; " if a.baseline == "grpo" else ""
    print(f"demo task, {a.reward} reward, {a.epochs} epochs of 1000 prompts; {setup}ESRL flags: {a.esrl!r}")
    print(f"per seed, at the first evaluation reaching {base}'s final held-out accuracy (ratios ESRL / {base}; "
          f"'of total': ESRL's time to it / {base}'s whole training time):")
    print(f"{'seed':>6} {'target':>7} {'ESRL final':>10} {'rounds':>9} {'time':>6} {'of total':>7} {'tokens':>7} "
          f"{'ref seq':>10} {'critic seq':>10} {'peak RSS':>9}")
    results = []
    for seed in a.seeds:
        flags = ["--seed", str(seed)]
        baseline, esrl = run_pair(shared + flags + baseline_flags(a, demo / "reward"),
                                  shared + flags + esrl_flags(a, demo / "reward"), tmp / f"{a.baseline}{seed}",
                                  tmp / f"esrl{seed}", a.parallel)
        results.append(compare(baseline, esrl))
        print_seed(a, seed, results[-1])
    reached = [r for r in results if r["E"] is not None]
    if results:
        print(f"ESRL reached the target in {len(reached)} of {len(results)} seeds", end="")
        if reached:
            med = {k: statistics.median(r["ratios"][k] for r in reached)
                   for k in ("time", "total", "tokens", "scored", "rss")}
            print(f"; medians over those: time {med['time']:.2f} (of {base}'s total {med['total']:.2f}), tokens "
                  f"{med['tokens']:.2f}, reference sequences {med['scored']:.2f}, critic sequences "
                  f"{med['scored'] if a.esrl_critic else 0:.2f}, peak RSS {med['rss']:.2f}")
        else:
            print()
        rss = [r["rss"] for r in results]
        print(f"peak RSS MiB ({base} / ESRL): " + ", ".join(f"{x:.0f}/{y:.0f}" for x, y in rss))
        print("learning curves (round:accuracy@cumulative training time):")
        for seed, r in zip(a.seeds, results):
            print_curves(a, seed, r)
    if a.memory_hidden:
        n = a.memory_hidden
        params = a.memory_layers * (4 * n * n + 3 * n * 4 * n)
        for dtype, (x, y) in memory_phase(a, shared, tmp).items():
            print(f"memory, {a.memory_rounds} rounds on a {params / 1e6:.0f}M-parameter Llama ({n} hidden, "
                  f"{a.memory_layers} layers, untrained), {dtype}: peak RSS {base} {x:.0f} MiB, ESRL {y:.0f} MiB, "
                  f"ratio {y / x:.2f}")
    print(f"(training time excludes start-up and evaluation; logs and metrics in {tmp})")


if __name__ == "__main__":
    main()
