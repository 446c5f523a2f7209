"""Shared fixtures: a tiny model built offline once per session, and run helpers."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO_DATA = ROOT / "examples" / "demo" / "data"
FIXTURES = ROOT.parent / "shared" / "fixtures"

os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
os.environ.setdefault("HF_DATASETS_CACHE", str(ROOT / ".cache" / "hf_datasets"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama and its sentencepiece tokenizer, trained on the demo SFT text."""
    from examples.demo.build_model import corpus
    from devtools.tiny import build_tiny

    out = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    extra = ["The quick brown fox jumps over the lazy dog.", "System: be brief\nUser: hi\nAssistant: hello"]
    build_tiny(corpus()[:1500] + extra * 20, out, vocab_size=400, hidden_size=64, layers=2, heads=4)
    return out


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory) -> dict:
    """A tiny model of each of twelve families with its tokenizer's habits (devtools/tiny_families.py)."""
    from examples.demo.build_model import corpus
    from devtools.tiny_families import FAMILIES, build_family

    root = tmp_path_factory.mktemp("families")
    texts = corpus()[:1500]
    return {f: build_family(f, texts, root / f, hidden_size=32, layers=2, heads=4) for f in FAMILIES}


@pytest.fixture(scope="session")
def tokenizer(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(nproc: int, extra: dict | None = None) -> dict:
    """The environment of a run started as a subprocess. Every run a test compares with another
    gets the same thread count: a CPU matmul's rounding may depend on how many threads split it
    (one per rank at several processes)."""
    e = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1" if nproc > 1 else
         os.environ.get("OMP_NUM_THREADS", "2"), **(extra or {})}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(k, None)
    return e


def run_module(module: str, args: list[str], *, nproc: int = 1, timeout: int = 600, check: bool = True,
               env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m module args` (nproc=1) or through the deepspeed launcher."""
    e = child_env(nproc, env)
    if nproc == 1:
        cmd = [sys.executable, "-m", module, *args]
    else:
        cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", str(nproc),
               "--master_port", str(free_port()), "--module", module, *args]
    p = subprocess.run(cmd, cwd=ROOT, env=e, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{module} failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
    return p


def launch(module: str, args: list, nproc: int) -> subprocess.Popen:
    """The run as a user starts it (the deepspeed launcher at nproc > 1), in its own process group."""
    env = child_env(nproc)
    cmd = ([sys.executable, "-m", module] if nproc == 1 else
           [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", str(nproc), "--master_port",
            str(free_port()), "--module", module])
    return subprocess.Popen([*cmd, *map(str, args)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def checkpoint_step(out: Path) -> int:
    latest = out / "checkpoints" / "latest"
    return int(latest.read_text()[len("step"):]) if latest.is_file() else 0


def metric_rows(out: Path) -> list[str]:
    metrics = out / "metrics.jsonl"
    return [x for x in metrics.read_text().splitlines() if x.strip()] if metrics.is_file() else []


def logged_step(out: Path, skip: int = 0) -> int:
    """The last step logged, in the rows after the first `skip` (those of earlier runs)."""
    return max((json.loads(x).get("step", 0) for x in metric_rows(out)[skip:]), default=0)


def interrupt(module: str, args: list, out: Path, nproc: int, *, after: int, sig: int) -> subprocess.CompletedProcess:
    """Start the run and send `sig` to every process of it once it is past step `after`: SIGKILL
    once a checkpoint at or after that step exists, SIGTERM once this run has logged that step (the
    ranks get the signal directly, as a cluster scheduler sends it)."""
    earlier = len(metric_rows(out))     # a resumed run continues the file
    p = launch(module, args, nproc)
    reached = checkpoint_step if sig == signal.SIGKILL else (lambda o: logged_step(o, earlier))
    deadline = time.time() + 400
    while p.poll() is None and reached(out) < after:
        assert time.time() < deadline, "the run did not reach the step to interrupt"
        time.sleep(0.02)
    if p.poll() is None:
        os.killpg(p.pid, sig)
    stdout, stderr = p.communicate(timeout=400)
    return subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)


def step3_args(actor: Path, critic: Path, prompts: Path, out: Path, *extra, prompt_len: int = 32,
               seed: int = 9) -> list[str]:
    """Step-3 flags for a few quick rounds on the tiny models (8 prompts/round, 6 new tokens)."""
    return ["--actor_model_name_or_path", str(actor), "--critic_model_name_or_path", str(critic),
            "--data_path", str(prompts), "--output_dir", str(out), "--max_prompt_seq_len", str(prompt_len),
            "--max_answer_seq_len", "6", "--per_device_generation_batch_size", "8",
            "--per_device_training_batch_size", "4", "--actor_learning_rate", "1e-3", "--critic_learning_rate",
            "1e-3", "--disable_tqdm", "--seed", str(seed), *map(str, extra)]


def read_metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]


def load_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def sft_dir(tiny_dir, tmp_path_factory) -> Path:
    """The tiny model after a short SFT run on demo data: the starting point of steps 2 and 3."""
    root = tmp_path_factory.mktemp("sft")
    lines = (DEMO_DATA / "sft" / "train.txt").read_text().splitlines()
    write_jsonl(root / "data" / "train.txt", lines[:800])
    out = root / "model"
    run_module("training.step1_sft.main", [
        "--model_name_or_path", str(tiny_dir), "--data_path", str(root / "data"), "--output_dir", str(out),
        "--max_seq_len", "48", "--per_device_train_batch_size", "16", "--learning_rate", "3e-3",
        "--num_train_epochs", "3", "--num_warmup_steps", "10", "--disable_tqdm", "--seed", "11"])
    return out


@pytest.fixture(scope="session")
def leaky_sft_dir(sft_dir, tmp_path_factory) -> Path:
    """The SFT model with a generation_config that would change sampling if anything read it (as
    Qwen2.5-Instruct's repetition_penalty does): step 3 must sample from its flags alone."""
    import shutil

    out = tmp_path_factory.mktemp("leaky") / "model"
    shutil.copytree(sft_dir, out)
    path = out / "generation_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**config, "repetition_penalty": 1.3, "no_repeat_ngram_size": 2, "min_new_tokens": 3}))
    return out


@pytest.fixture(scope="session")
def rm_dir(sft_dir, tokenizer, tmp_path_factory) -> Path:
    """An (untrained) reward model: the SFT backbone with a freshly initialised head."""
    from utils.models import load_reward_model

    out = tmp_path_factory.mktemp("rm") / "rm"
    load_reward_model(str(sft_dir), tokenizer).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def prompts(tmp_path_factory) -> Path:
    """The first 64 demo RLHF prompts: the step-3 tests' data."""
    lines = (DEMO_DATA / "rlhf" / "train.txt").read_text().splitlines()
    return write_jsonl(tmp_path_factory.mktemp("rlhf") / "prompts.txt", lines[:64])


def _child(queue, fn, args):
    try:
        queue.put(("ok", fn(*args)))
    except BaseException as e:  # report any failure (SystemExit included) to the parent test
        import traceback

        queue.put(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


def in_fresh_process(fn, *args, timeout: int = 600):
    """Run fn(*args) in a spawned interpreter and return its (picklable) result.

    In-process checks of a training run (e.g. that a frozen engine's weights are untouched)
    need their own interpreter: DeepSpeed caches process groups across runs in one process.
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q, fn, args))
    p.start()
    status, value = q.get(timeout=timeout)
    p.join(timeout=60)
    if status != "ok":
        raise AssertionError(value)
    return value


def recording(owner, name: str) -> list:
    """Replace `owner.name` (a function or class that a main builds with) by a wrapper that keeps
    each object it returns: how a test inside `in_fresh_process` reaches a model a run built (a
    frozen reference), since mains return metrics only."""
    made, real = [], getattr(owner, name)

    def wrapper(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]
    setattr(owner, name, wrapper)
    return made


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory) -> Path:
    """160 training and 32 held-out demo SFT rows (a folder with train.txt / test.txt)."""
    out = tmp_path_factory.mktemp("sftdata") / "sft"
    lines = (DEMO_DATA / "sft" / "train.txt").read_text().splitlines()
    write_jsonl(out / "train.txt", lines[:160])
    write_jsonl(out / "test.txt", lines[160:192])
    return out
