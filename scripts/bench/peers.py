"""TRL 1.16.0 side by side with our steps 1-3: median optimizer-step time, start-up and peak RSS.

    .venv/bin/python -m scripts.bench.peers [--steps 20] [--only sft dpo rlhf] [--hidden 128] [--layers 2]
        [--batch 16]

Run by hand, never in CI. Each row trains the same tiny Llama (built once per run from this
bench's own synthetic "repeat after me" task: prompts plus answers of 3-6 words, under 64
tokens together; fp32, the demo's 128 hidden x 2 layers by default) on the same files, with
the same batch, lengths, learning rate (constant, no warm-up), AdamW betas (0.9, 0.95), no
weight decay, gradient clipping at 1.0 and seed, for 5 warm-up + --steps optimizer steps:

- sft:  TRL `SFTTrainer` on prompt-completion rows (loss on the completion only) vs our
        step 1 on the same rows as `{"instruction","input","output"}` lines;
        --batch sequences per step, at most 64 tokens.
- dpo:  TRL `DPOTrainer` vs our step 2 DPO, both sigmoid loss, beta 0.1, a live frozen
        reference loaded from the same folder; --batch pairs per step, at most 64 tokens.
        "sft pf": the same TRL run vs ours with --padding_free.
        "dpo pre": the same TRL run vs ours with the reference log-probs precomputed (our
        default when a run covers every pair; the scoring pass counts in start-up).
- rlhf: TRL `RLOOTrainer` (num_generations 4) vs our step 3 `--advantage_estimator rloo
        --num_samples_per_prompt 4` (critic-free, the leave-one-out baseline); --batch prompts
        per step, so 4 x --batch
        answers of at most 16 new tokens sampled at temperature 1.0 (no top-p, no top-k),
        KL penalty 0.05 to a live reference, one optimizer step per round, and the same rule
        reward (`word_recall`: the fraction of the prompt's words found in the answer).

Every side runs in its own child process, one after the other. A step's time is the wall
time from the end of one optimizer step to the end of the next (data, logging and, in RL,
sampling and scoring included, the same on both sides): TRL's from a `TrainerCallback`'s
`on_step_end`, ours from the `time` stamp of each row of `<output_dir>/metrics.jsonl`
(`--logging_steps 1`; step 3 writes one row per round). The first 5 steps are warm-up; the
table gives the median of the rest, TRL / ours (> 1: we are faster), start-up (process
launch to the end of the first optimizer step, so imports, model and data loading and one
step) and peak RSS (`ru_maxrss` of the child, from os.wait4). Evaluation, checkpoints and
mid-run saving are off on both sides; our final save comes after the last timed step. The
last line is the start-up floor: the time a fresh process takes just to import torch,
transformers' model classes and deepspeed, which no change of ours can go below.

TRL environment: on first use `pip install --target .cache/trl-1.16.0 --no-deps trl==1.16.0`
plus, also with --no-deps, any of TRL's requirements that our venv does not satisfy (none
with requirements.txt as pinned; one installed there shadows ours in the TRL child only); a
marker file makes later runs reuse it. The TRL child is our own `.venv/bin/python` with that
folder on PYTHONPATH, so it imports our torch and transformers (it checks that their versions
and locations are ours, and that trl is the pinned one), and the model code is the same on
both sides. What still differs, by each side's own design: TRL's HF Trainer uses
fused AdamW (transformers' default on torch >= 2.8) where ours runs torch AdamW inside a
DeepSpeed engine; TRL computes log-probs through its chunked "fused LM head"; in RL, TRL takes
one clipped ratio per sequence and leaves advantages unnormalised, ours clips per token and
whitens advantages (both its default). TRL tokenizes prompt + answer as one string and ours
apart, but this task's prompts end on a token boundary, so both train on the same ids.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, distributions, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRL_VERSION = "1.16.0"
TRL_DIR = ROOT / ".cache" / f"trl-{TRL_VERSION}"
WARMUP = 5                      # optimizer steps left out of the median on each side
MAX_LEN = 64                    # SFT / DPO tokens per sequence
PROMPT_LEN, ANSWER_LEN = 32, 16  # RL prompt tokens, new tokens per answer
SAMPLES = 4                     # RL answers per prompt
TEMPERATURE, KL, BETA, LR, SEED = 1.0, 0.05, 0.1, 1e-5, 1234
WORDS = ("fox owl cat dog hen elk yak ant bee cod eel emu gnu ram bat asp red blue green pink grey gold "
         "jade rust teal navy plum lime sand snow iron ruby").split()


# -- the task: data and reward, the same files and function for both sides ---------------------------
def rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = rng.sample(WORDS, rng.randint(3, 6))
        # The answer carries the space after "Assistant:", so prompt and answer meet on a token boundary
        # and TRL's joint encoding of prompt + answer gives the ids of ours, which encodes them apart.
        out.append({"prompt": f"User: Repeat after me: {' '.join(words)}\nAssistant:", "answer": " " + " ".join(words),
                    "rejected": " " + " ".join(words[:-1])})  # the demo's kind of mistake: the last word dropped
    return out


def word_recall(prompt: str, answer: str) -> float:
    target = set(prompt.split("Repeat after me: ", 1)[1].split("\n", 1)[0].split())
    return len(target & set(answer.split())) / len(target)


def our_reward(prompts: list[str], answers: list[str], **_) -> list[float]:
    """Our step 3's `--reward_functions scripts.bench.peers:our_reward`."""
    return [word_recall(p, a) for p, a in zip(prompts, answers)]


def trl_reward(prompts: list[str], completions: list[str], **_) -> list[float]:
    """TRL's reward_funcs signature, same rule."""
    return [word_recall(p, c) for p, c in zip(prompts, completions)]


def write_inputs(tmp: Path, n: int, hidden: int, layers: int) -> dict[str, Path]:
    """The tiny model and the three data sets in our formats (the TRL child reads the same files)."""
    import pandas as pd

    from devtools.tiny import build_tiny

    data = rows(n, SEED)
    model = build_tiny([r["prompt"] + r["answer"] for r in data], tmp / "model", vocab_size=400,
                       hidden_size=hidden, layers=layers, heads=4, max_position=128)
    sft = tmp / "sft.txt"
    sft.write_text("".join(json.dumps({"instruction": r["prompt"], "input": "", "output": r["answer"]}) + "\n"
                           for r in data))
    (tmp / "pairs").mkdir()
    pd.DataFrame({"prompt": [r["prompt"] for r in data], "chosen": [r["answer"] for r in data],
                  "rejected": [r["rejected"] for r in data]}).to_parquet(tmp / "pairs" / "train.parquet")
    return {"model": model, "sft": sft, "dpo": tmp / "pairs", "rlhf": sft}


# -- the pinned TRL environment -------------------------------------------------------------------
def pip_target(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(TRL_DIR), "--no-deps", *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed:\n{done.stdout}{done.stderr}")


def unmet_requirements() -> list[str]:
    """TRL's own (non-extra) requirements that this venv lacks or has at another version."""
    from packaging.requirements import Requirement

    trl = next(distributions(name="trl", path=[str(TRL_DIR)]))
    unmet = []
    for req in map(Requirement, trl.requires or []):
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            ok = req.specifier.contains(version(req.name), prereleases=True)
        except PackageNotFoundError:
            ok = False
        if not ok:
            unmet.append(f"{req.name}{req.specifier}")
    return unmet


def ensure_trl() -> None:
    marker = TRL_DIR / ".installed"
    if marker.is_file():
        return
    if TRL_DIR.exists():  # an install cut short: pip --target would skip what is already there
        shutil.rmtree(TRL_DIR)
    print(f"[peers] installing trl=={TRL_VERSION} into {TRL_DIR.relative_to(ROOT)} (once)", flush=True)
    pip_target(f"trl=={TRL_VERSION}")
    extra = unmet_requirements()
    if extra:
        pip_target(*extra)
    marker.write_text(" ".join([f"trl=={TRL_VERSION}", *extra]) + "\n")


def stack_versions() -> dict[str, str]:
    return {name: version(name) for name in ("torch", "transformers")}


# -- the TRL child ------------------------------------------------------------------------------
def check_stack(expected: dict[str, str]) -> None:
    """The TRL side must run the pinned TRL over our torch and transformers, not copies pulled
    into its folder."""
    import torch
    import transformers
    import trl

    if trl.__version__ != TRL_VERSION or not Path(trl.__file__).is_relative_to(TRL_DIR):
        raise SystemExit(f"error: TRL child imports trl {trl.__version__} from {trl.__file__}, not {TRL_DIR}")
    for mod in (torch, transformers):
        if mod.__version__ != expected[mod.__name__] or Path(mod.__file__).is_relative_to(TRL_DIR):
            raise SystemExit(f"error: TRL child runs {mod.__name__} {mod.__version__} from {mod.__file__}, "
                             f"not our {expected[mod.__name__]}")


def trl_args(spec: dict, batch: int) -> dict:
    """TrainingArguments shared by the three TRL trainers, set to what our side runs."""
    return dict(output_dir=spec["out"], max_steps=spec["steps"], per_device_train_batch_size=batch,
                learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, adam_beta1=0.9, adam_beta2=0.95,
                weight_decay=0.0, max_grad_norm=1.0, seed=SEED, logging_steps=1, save_strategy="no",
                eval_strategy="no", report_to="none", use_cpu=True, bf16=False, fp16=False,
                gradient_checkpointing=False, disable_tqdm=True, dataloader_num_workers=0)


def trl_trainer(spec: dict):
    import pandas as pd
    import trl
    from datasets import Dataset

    kind, model, data = spec["kind"], spec["model"], spec["data"]
    if kind == "sft":
        lines = [json.loads(line) for line in Path(data).read_text().splitlines()]
        ds = Dataset.from_list([{"prompt": r["instruction"], "completion": r["output"]} for r in lines])
        cfg = trl.SFTConfig(**trl_args(spec, spec["batch"]), max_length=MAX_LEN, completion_only_loss=True)
        return trl.SFTTrainer(model=model, args=cfg, train_dataset=ds)
    if kind == "dpo":
        ds = Dataset.from_pandas(pd.read_parquet(Path(data) / "train.parquet"))
        cfg = trl.DPOConfig(**trl_args(spec, spec["batch"]), max_length=MAX_LEN, beta=BETA, loss_type=["sigmoid"])
        return trl.DPOTrainer(model=model, args=cfg, train_dataset=ds)  # no ref_model: a live copy of `model`
    lines = [json.loads(line) for line in Path(data).read_text().splitlines()]
    ds = Dataset.from_dict({"prompt": [r["instruction"] for r in lines]})
    # per_device_train_batch_size counts answers here: 4 x batch answers = batch prompts per step
    cfg = trl.RLOOConfig(**trl_args(spec, spec["batch"] * SAMPLES), num_generations=SAMPLES,
                         max_completion_length=ANSWER_LEN, temperature=TEMPERATURE, top_p=1.0, top_k=0, beta=KL,
                         disable_dropout=True)
    return trl.RLOOTrainer(model=model, reward_funcs=[trl_reward], args=cfg, train_dataset=ds)


def trl_child(spec_file: str) -> None:
    """Entry of the TRL child process: train, then write the wall-clock end of every optimizer step."""
    spec = json.loads(Path(spec_file).read_text())
    check_stack(spec["versions"])
    from transformers import TrainerCallback

    ends: list[float] = []

    class StepEnds(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.time())

    trainer = trl_trainer(spec)
    trainer.add_callback(StepEnds())
    trainer.train()
    Path(spec["out"], "step_ends.json").write_text(json.dumps(ends))


# -- our side's command lines ----------------------------------------------------------------------
def our_argv(kind: str, inputs: dict[str, Path], batch: int, steps: int) -> list[str]:
    shared = ["--max_steps", str(steps), "--logging_steps", "1", "--disable_tqdm", "--seed", str(SEED),
              "--lr_scheduler_type", "constant", "--num_warmup_steps", "0", "--adam_beta1", "0.9",
              "--adam_beta2", "0.95", "--weight_decay", "0", "--gradient_clipping", "1.0", "--dtype", "fp32",
              "--save_steps", "0", "--eval_steps", "0"]
    model, data = str(inputs["model"]), str(inputs[kind])
    if kind == "sft":
        return ["--model_name_or_path", model, "--data_path", data, "--max_seq_len", str(MAX_LEN),
                "--per_device_train_batch_size", str(batch), "--learning_rate", str(LR), *shared]
    if kind == "dpo":
        return ["--model_name_or_path", model, "--data_path", data, "--max_seq_len", str(MAX_LEN),
                "--per_device_train_batch_size", str(batch), "--learning_rate", str(LR), "--beta", str(BETA),
                "--loss_type", "sigmoid", *shared]
    return ["--actor_model_name_or_path", model, "--data_path", data, "--max_prompt_seq_len", str(PROMPT_LEN),
            "--max_answer_seq_len", str(ANSWER_LEN), "--per_device_generation_batch_size", str(batch),
            "--per_device_training_batch_size", str(batch * SAMPLES), "--actor_learning_rate", str(LR),
            "--advantage_estimator", "rloo", "--num_samples_per_prompt", str(SAMPLES),
            "--temperature", str(TEMPERATURE), "--top_p", "1.0", "--top_k", "0", "--use_reward_model", "false",
            "--reward_functions", "scripts.bench.peers:our_reward", "--kl_ctl", str(KL), *shared]


MODULES = {"sft": "training.step1_sft.main", "dpo": "training.step2_dpo.main", "rlhf": "training.step3_rlhf.main"}


# -- running and measuring ------------------------------------------------------------------------
def launch(cmd: list[str], out: Path, env: dict) -> tuple[float, float]:
    """Run a child to the end; (launch wall-clock time, peak RSS in MiB). A failure prints the
    tail of its log and stops the bench with a non-zero exit code."""
    out.mkdir(parents=True)
    log = out.with_suffix(".log")
    with open(log, "w") as f:
        t0 = time.time()
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(p.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-40:])
        print(f"{tail}\nerror: {' '.join(cmd[:3])} exited {code}; full log: {log}", file=sys.stderr)
        raise SystemExit(1)
    return t0, usage.ru_maxrss / 1024


def summary(ends: list[float], steps: int, t0: float, rss: float) -> dict[str, float]:
    """Median seconds per optimizer step after the warm-up, start-up seconds, peak RSS."""
    if len(ends) != steps:
        raise SystemExit(f"error: expected {steps} optimizer steps, the run recorded {len(ends)}")
    per_step = [b - a for a, b in zip(ends, ends[1:])][WARMUP - 1:]  # element i is step i + 2
    return {"step": statistics.median(per_step), "startup": ends[0] - t0, "rss": rss}


def run_ours(kind: str, inputs: dict[str, Path], batch: int, steps: int, tmp: Path, env: dict,
             extra: tuple[str, ...] = (), name: str = "") -> dict[str, float]:
    out = tmp / f"ours_{name or kind}"
    cmd = [sys.executable, "-m", MODULES[kind], *our_argv(kind, inputs, batch, steps), *extra, "--output_dir", str(out)]
    t0, rss = launch(cmd, out, env)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return summary([r["time"] for r in logged], steps, t0, rss)


def run_trl(kind: str, inputs: dict[str, Path], batch: int, steps: int, tmp: Path, env: dict) -> dict[str, float]:
    out = tmp / f"trl_{kind}"
    spec = {"kind": kind, "model": str(inputs["model"]), "data": str(inputs[kind]), "out": str(out),
            "batch": batch, "steps": steps, "versions": stack_versions()}
    spec_file = tmp / f"trl_{kind}.json"
    spec_file.write_text(json.dumps(spec))
    code = f"from scripts.bench.peers import trl_child; trl_child({str(spec_file)!r})"
    t0, rss = launch([sys.executable, "-c", code], out, {**env, "PYTHONPATH": str(TRL_DIR)})
    return summary(json.loads((out / "step_ends.json").read_text()), steps, t0, rss)


def warm_up_deepspeed(env: dict) -> None:
    """Compile DeepSpeed's CPU op now if it is not cached yet, so neither its time nor the
    compiler's memory lands in our first run's start-up and peak RSS."""
    code = "from utils import distributed as d; d.set_env_defaults(); d.init_distributed(); d.teardown()"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: DeepSpeed start-up failed:\n{done.stderr}")


def import_floor(env: dict) -> float:
    """Seconds a fresh process takes to import what both sides must before their first step
    (torch, transformers with its Llama and Auto classes, deepspeed): the best of three."""
    code = ("import time; t = time.perf_counter(); import torch, deepspeed; "
            "from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM; "
            "print(time.perf_counter() - t)")
    runs = [subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
            for _ in range(3)]
    return min(float(r.stdout.split()[-1]) for r in runs)


def table(results: dict[str, dict], header: str) -> str:
    lines = [header, f"{'step':<7} {'TRL ms':>8} {'ours ms':>8} {'TRL/ours':>8} {'start TRL':>10} "
                     f"{'start ours':>10} {'RSS TRL':>9} {'RSS ours':>9}"]
    for kind, r in results.items():
        t, o = r["trl"], r["ours"]
        lines.append(f"{kind:<7} {t['step'] * 1e3:8.1f} {o['step'] * 1e3:8.1f} {t['step'] / o['step']:8.2f} "
                     f"{t['startup']:9.1f}s {o['startup']:9.1f}s {t['rss']:5.0f} MiB {o['rss']:5.0f} MiB")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20, help=f"timed optimizer steps per side (after {WARMUP} warm-up)")
    p.add_argument("--only", nargs="+", choices=list(MODULES), default=list(MODULES), help="rows to run")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=16, help="sequences (sft), pairs (dpo) or prompts (rlhf) per step")
    a = p.parse_args()
    if a.steps < 1:
        p.error("--steps must be >= 1")
    steps = WARMUP + a.steps
    ensure_trl()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONWARNINGS": "ignore"}
    env.pop("PYTHONPATH", None)  # both children import from the repo and our venv alone (TRL: plus its folder)
    warm_up_deepspeed(env)
    tmp = Path(tempfile.mkdtemp(prefix="bench_peers_"))
    # one epoch holds every step, so neither side reaches an epoch boundary (or its evaluation)
    inputs = write_inputs(tmp, a.batch * (steps + 1), a.hidden, a.layers)
    results = {}
    for kind in a.only:
        results[kind] = {"trl": run_trl(kind, inputs, a.batch, steps, tmp, env),
                         "ours": run_ours(kind, inputs, a.batch, steps, tmp, env)}
        if kind == "sft":  # ours with --padding_free (TRL's default pads, as ours does)
            results["sft pf"] = {"trl": results["sft"]["trl"],
                                 "ours": run_ours(kind, inputs, a.batch, steps, tmp, env, ("--padding_free",), "sft_pf")}
        if kind == "dpo":  # ours with the reference scored once up front (our default on whole epochs)
            results["dpo pre"] = {"trl": results["dpo"]["trl"],
                                  "ours": run_ours(kind, inputs, a.batch, steps, tmp, env,
                                                   ("--precompute_ref_log_probs",), "dpo_pre")}
    v = stack_versions()
    print(table(results, f"TRL {TRL_VERSION} vs ours: tiny Llama {a.hidden} hidden x {a.layers} layers, fp32, "
                         f"batch {a.batch}, median of {a.steps} steps after {WARMUP} warm-up, one process each "
                         f"(torch {v['torch']}, transformers {v['transformers']}); logs in {tmp}"))
    print(f"start-up floor: importing torch, transformers' Llama and deepspeed takes {import_floor(env):.1f} s "
          f"in a fresh process")


if __name__ == "__main__":
    main()
