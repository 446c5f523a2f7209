"""GPU benchmarks: SFT throughput and model FLOPs utilisation, step-3 PPO samples/s with and
without DeepSpeed's hybrid engine, fp16 with dynamic loss scaling, and peak device memory of
plain PPO vs ESRL.

Every model is built here from a config with random weights (no hub) and trained by our own
`main` functions, as a user runs them. `scripts/bench/gpu.sh` runs the sections one process
each and prints the whole report; a section by hand:

    python -m scripts.bench.gpu peak
    python -m scripts.bench.gpu sft   [--batch 16 --seq 1024 --steps 30 --zero 2]
    python -m scripts.bench.gpu ppo   [--zero 3 --hybrid --dtype bf16 --esrl --rounds 6 --no_gather --cache static]
    python -m scripts.bench.gpu fp16  (SFT on the demo task in fp16: loss and skipped steps)

Each section ends with one `RESULT {...}` line (JSON) that gpu.sh collects into the summary.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
from pathlib import Path

from scripts.bench.common import CallWindow, matmul_peak, round_phases

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo" / "data"

# Dense bf16 peaks (TFLOP/s, no sparsity) by the name torch reports; MFU is quoted against these.
PEAK_BF16 = {"H100 80GB HBM3": 989.0, "H100 SXM": 989.0, "H200": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0,
             "A100": 312.0}

# A ~0.5B Llama for SFT, a ~350M actor and a ~125M critic for PPO (sizes of DeepSpeed-Chat's
# OPT-350m / OPT-125m example), all with a 32k vocabulary.
SFT_MODEL = dict(hidden=1536, layers=16, heads=12, inter=4096, vocab=32000, tied=False)
ACTOR_MODEL = dict(hidden=1024, layers=24, heads=16, inter=2816, vocab=32000, tied=True)
CRITIC_MODEL = dict(hidden=768, layers=12, heads=12, inter=2048, vocab=32000, tied=True)
FP16_MODEL = dict(hidden=768, layers=12, heads=12, inter=2048, vocab=512, tied=True)
# --small: every model at this size, to check the bench itself on a CPU in a minute
SMALL = dict(hidden=64, layers=2, heads=4, inter=128, vocab=1000)


def result(**kw) -> None:
    print("RESULT " + json.dumps(kw), flush=True)


def report(line: str) -> None:
    """A line of the summary gpu.sh prints (training's own output stays in the log)."""
    print("| " + line, flush=True)


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if on_gpu() else "cpu"


def peak_memory_gib() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if on_gpu() else float("nan")


def reset_peak_memory() -> None:
    import torch

    if on_gpu():
        torch.cuda.reset_peak_memory_stats()


def peak_tflops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def demo_texts() -> list[str]:
    rows = [json.loads(x) for x in (DEMO / "sft" / "train.txt").read_text().splitlines()]
    return [r["instruction"] + r["output"] for r in rows]


def build_llama(folder: Path, spec: dict, max_position: int) -> dict:
    """Tokenizer (trained on the demo text) + a random-weight Llama of `spec`, saved in bf16;
    returns parameter counts. The config's vocabulary is larger than the tokenizer's, as many
    released models pad theirs, so the LM head costs what a real 32k vocabulary costs."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from devtools.tiny import build_tokenizer

    tok = build_tokenizer(demo_texts(), folder, vocab_size=512)
    config = LlamaConfig(
        vocab_size=max(spec["vocab"], len(tok)), hidden_size=spec["hidden"], intermediate_size=spec["inter"],
        num_hidden_layers=spec["layers"], num_attention_heads=spec["heads"], num_key_value_heads=spec["heads"],
        max_position_embeddings=max_position, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=spec["tied"])
    torch.manual_seed(0)
    with torch.device("cuda" if on_gpu() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder, safe_serialization=True)
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight.numel()
    del model
    if on_gpu():
        torch.cuda.empty_cache()
    return {"params": total, "embedding": embed, "vocab": config.vocab_size}


def build_reward(causal: Path, folder: Path) -> None:
    """A scalar-head model (critic / reward model) from a causal LM folder."""
    import torch
    from transformers import AutoTokenizer

    from utils.models import load_reward_model

    tok = AutoTokenizer.from_pretrained(causal)
    load_reward_model(str(causal), tok, dtype=torch.bfloat16).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)


def flops_per_token(spec: dict, seq: int) -> float:
    """Training FLOPs per token: 6 x (every weight a token is multiplied by: the layers and the LM
    head, not the embedding lookup) + 12 x layers x hidden x sequence for attention scores and
    values (PaLM's formula, as Megatron and nanoGPT quote MFU)."""
    h, i, L, V = spec["hidden"], spec["inter"], spec["layers"], spec["vocab"]
    per_layer = 4 * h * h + 3 * h * i
    return 6 * (L * per_layer + V * h) + 12 * L * h * seq


# -- sections ------------------------------------------------------------------------------------
def section_peak(a) -> None:
    """The bf16 matrix-product rate this device reaches (the ceiling no training loop passes)."""
    import torch

    n = 8192
    tflops = matmul_peak(n, torch.bfloat16, "cuda") / 1e12
    name = device_name()
    report(f"{name}: {n}^3 bf16 matmul {tflops:.0f} TFLOP/s (spec dense peak {peak_tflops(name)})")
    result(section="peak", device=name, matmul_tflops=tflops, spec_peak_tflops=peak_tflops(name),
           torch=torch.__version__, cuda=torch.version.cuda)


def section_sft(a) -> None:
    from training.step1_sft.main import main as sft_main

    tmp = Path(tempfile.mkdtemp())
    counts = build_llama(tmp / "m", a.spec(SFT_MODEL), a.seq)
    texts = demo_texts()
    rng = random.Random(0)
    # ~25 tokens per demo row: enough text for every step's batch of full --seq blocks
    lines = [rng.choice(texts) for _ in range((a.steps + 2) * a.batch * a.seq // 20)]
    (tmp / "corpus.txt").write_text("\n".join(lines) + "\n")
    reset_peak_memory()
    prof = ProfileWindows(a.profile) if a.profile and on_gpu() else None
    out = sft_main([
        "--model_name_or_path", str(tmp / "m"), "--data_path", str(tmp / "corpus.txt"), "--data_format", "text",
        "--max_seq_len", str(a.seq), "--per_device_train_batch_size", str(a.batch), "--dtype", a.dtype,
        "--zero_stage", str(a.zero), "--max_steps", str(a.steps), "--logging_steps", str(a.log_every),
        "--learning_rate", "1e-4", "--output_dir", str(tmp / "out"), "--disable_tqdm",
        *(["--gradient_checkpointing"] if a.gradient_checkpointing else []),
        *(["--torch_compile"] if a.compile else [])])
    if prof is not None:
        prof.summary()
    rows = [h for h in out["history"] if "train/tokens_per_s" in h]
    tps = statistics.median(r["train/tokens_per_s"] for r in rows[1:])  # the first window warms up
    fpt = flops_per_token(a.spec(SFT_MODEL), a.seq)
    name = device_name()
    peak = peak_tflops(name)
    achieved = tps * fpt / 1e12
    mfu = achieved / peak if peak else None
    mem = peak_memory_gib()
    losses = [r["train/loss"] for r in rows]
    report(f"SFT {counts['params'] / 1e6:.0f}M Llama (embedding {counts['embedding'] / 1e6:.0f}M, vocab "
          f"{counts['vocab']}), {a.dtype}, ZeRO-{a.zero}, batch {a.batch} x {a.seq} tokens, {a.steps} steps"
           + (", torch.compile" if a.compile else ""))
    report(f"  {tps:,.0f} tokens/s, {fpt / 1e9:.2f} GFLOP/token -> {achieved:.0f} TFLOP/s"
          + (f" = MFU {mfu:.1%} of {peak:.0f} ({name})" if mfu else f" ({name}: no peak on record)"))
    report(f"  loss {losses[0]:.3f} -> {losses[-1]:.3f}; peak device memory {mem:.1f} GiB")
    result(section="sft", params=counts["params"], dtype=a.dtype, zero=a.zero, batch=a.batch, seq=a.seq,
           compile=a.compile,
           tokens_per_s=tps, tflops=achieved, mfu=mfu, peak_gib=mem, loss_first=losses[0], loss_last=losses[-1])


KERNEL_KINDS = [("matmul (GEMM)", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "sm90")),
                ("attention", ("flash", "fmha", "attention", "sdpa")),
                ("optimizer", ("adam", "multi_tensor", "foreach")),
                ("loss / softmax", ("softmax", "cross_entropy", "nll"))]


class ProfileWindows(CallWindow):
    """The profiler over optimizer windows `first` .. `first + count - 1` of a Trainer run
    (Trainer.train_window), CPU and GPU activity."""

    def __init__(self, first: int, count: int = 3):
        import torch
        from torch.profiler import ProfilerActivity

        from utils.trainer import Trainer

        super().__init__(Trainer, "train_window", first, count, [ProfilerActivity.CPU, ProfilerActivity.CUDA],
                         sync=torch.cuda.synchronize)

    def summary(self) -> None:
        """GPU kernel time per step by kind, the busiest kernels, and the share of wall time the GPU
        was busy."""
        if not self.done:
            report("  profile: the run ended before the profiled steps")
            return
        kinds: dict[str, float] = {}
        top: list[tuple[float, str]] = []
        for e in self.profile.key_averages():
            if "CUDA" not in str(getattr(e, "device_type", "")):
                continue  # an operator (aten::mm...): its kernels are counted as themselves
            t = getattr(e, "self_device_time_total", None)
            t = getattr(e, "self_cuda_time_total", 0.0) if t is None else t
            if t <= 0:
                continue
            name = e.key.lower()
            kind = next((k for k, pats in KERNEL_KINDS if any(p in name for p in pats)), "element-wise / other")
            kinds[kind] = kinds.get(kind, 0.0) + t
            top.append((t, e.key[:100]))
        n, busy = self.count, sum(kinds.values()) / 1e6
        report(f"  profile of {n} steps: wall {self.wall / n * 1e3:.1f} ms/step, GPU kernels {busy / n * 1e3:.1f} "
               f"ms/step ({busy / self.wall:.0%} busy)")
        for k, t in sorted(kinds.items(), key=lambda kv: -kv[1]):
            report(f"    {k:<22} {t / 1e3 / n:8.1f} ms/step  {t / 1e6 / busy:6.1%}")
        for t, name in sorted(top, reverse=True)[:10]:
            report(f"    {t / 1e3 / n:8.2f} ms/step  {name}")


def prompts_file(path: Path, n: int, words: int) -> None:
    """RLHF rows in the SFT format whose prompts run past --max_prompt_seq_len (cut from the left)."""
    from examples.demo.task import WORDS, prompt_for

    rng = random.Random(0)
    rows = [{"instruction": prompt_for([rng.choice(WORDS) for _ in range(words)]), "input": "",
             "output": "x"} for _ in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def section_ppo(a) -> None:
    from training.step3_rlhf.main import main as rlhf_main

    tmp = Path(tempfile.mkdtemp())
    actor = build_llama(tmp / "actor", a.spec(ACTOR_MODEL), a.prompt_len + a.answer_len)
    critic = build_llama(tmp / "critic_lm", a.spec(CRITIC_MODEL), a.prompt_len + a.answer_len)
    build_reward(tmp / "critic_lm", tmp / "critic")
    prompts_file(tmp / "prompts.txt", a.batch * (a.rounds + 1), a.prompt_len)
    flags = ["--dynamic_sampling"] if a.esrl else []
    reset_peak_memory()
    out = rlhf_main([
        "--actor_model_name_or_path", str(tmp / "actor"), "--critic_model_name_or_path", str(tmp / "critic"),
        "--data_path", str(tmp / "prompts.txt"), "--output_dir", str(tmp / "out"), "--dtype", a.dtype,
        "--actor_zero_stage", str(a.zero), "--critic_zero_stage", str(a.zero),
        "--per_device_generation_batch_size", str(a.batch), "--per_device_training_batch_size", str(a.batch),
        "--max_prompt_seq_len", str(a.prompt_len), "--max_answer_seq_len", str(a.answer_len),
        "--max_steps", str(a.rounds), "--disable_tqdm", "--actor_learning_rate", "1e-6",
        "--critic_learning_rate", "1e-5", *(["--enable_hybrid_engine"] if a.hybrid else []),
        "--ds3_gather_for_generation", str(a.gather).lower(),
        *(["--cache_implementation", a.cache] if a.cache else []), *flags])
    mem = peak_memory_gib()
    hist = out["history"]
    timed = hist[a.warmup:]
    gen, exp, train = (statistics.median(phases) for phases in zip(*(round_phases(h) for h in timed)))
    total = gen + exp + train
    samples = statistics.median(h["count/sampled_sequences"] - p["count/sampled_sequences"]
                                for p, h in zip(hist[a.warmup - 1:], timed))
    length = statistics.median(h["response_length"] for h in timed)
    hybrid = out["engine"].hybrid
    name = (f"PPO actor {actor['params'] / 1e6:.0f}M + critic {critic['params'] / 1e6:.0f}M, {a.dtype}, "
            f"ZeRO-{a.zero}{'' if a.gather or a.zero < 3 else ' (weights partitioned in generation)'}, "
            f"hybrid engine {'on' if hybrid else 'off'}{', ESRL' if a.esrl else ''}"
            f"{f', {a.cache} KV cache' if a.cache else ''}")
    report(f"{name}: {a.batch} prompts/round, prompt {a.prompt_len} + <= {a.answer_len} new tokens "
          f"(median answer {length:.0f}), {len(timed)} timed rounds of {len(hist)}")
    report(f"  generation {gen:.2f} s ({gen / total:.0%}), experience {exp:.2f} s, training {train:.2f} s; "
          f"{samples / total:.1f} samples/s; peak device memory {mem:.1f} GiB")
    skipped = {k: hist[-1][k] for k in hist[-1] if k.endswith("skipped_steps")}
    vf = [h["vf_loss"] for h in hist if "vf_loss" in h]
    if skipped:
        report(f"  fp16: skipped steps {skipped}; critic vf_loss {vf[0]:.4f} -> {vf[-1]:.4f}; any NaN: "
              f"{any(v != v for h in hist for v in h.values() if isinstance(v, float))}")
    result(section="ppo", zero=a.zero, dtype=a.dtype, hybrid=hybrid, esrl=a.esrl, gather=a.gather, cache=a.cache,
           batch=a.batch,
           samples_per_s=samples / total, generation_s=gen, experience_s=exp, training_s=train,
           generation_share=gen / total, peak_gib=mem, answer_len=length, skipped=skipped,
           vf_first=vf[0] if vf else None, vf_last=vf[-1] if vf else None)
    if a.zero < 3:  # ZeRO-3 would gather weights over the process group main() closed
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tmp / "actor")
        if hybrid:
            result(section="hybrid_check", zero=a.zero, **hybrid_vs_native(out["engine"].actor, tok))
        if a.cache == "static":
            result(section="static_cache_check", zero=a.zero, **static_vs_dynamic(out["engine"].actor, tok))


def greedy_agreement(label: str, tok, fast, slow) -> dict:
    """Greedy answers from the same prompts through `fast` and `slow` (each a `generate`): equal
    prompt lengths, then left-padded ones. Reports, per case, the first step where the greedy
    tokens differ and the largest logit gap before it (bf16 kernels differ in rounding, so a late
    divergence is expected)."""
    import torch

    from utils.generation import left_pad

    rng = random.Random(1)
    cases = {"equal": [[rng.randrange(4, 500) for _ in range(64)] for _ in range(8)],
             "padded": [[rng.randrange(4, 500) for _ in range(16 + 6 * i)] for i in range(8)]}
    out = {}
    for case, rows in cases.items():
        ids, mask = (t.to("cuda" if torch.cuda.is_available() else "cpu") for t in left_pad(rows, tok.pad_token_id))
        kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=32, do_sample=False, output_scores=True,
                  return_dict_in_generate=True, pad_token_id=tok.pad_token_id, eos_token_id=None)
        with torch.no_grad():
            a, b = fast(**kw), slow(**kw)
        P = ids.shape[1]
        same = (a.sequences[:, P:] == b.sequences[:, P:]).all(0).tolist() + [False]
        first = same.index(False)
        gap = max((float((f.float() - s.float()).abs().max()) for f, s in zip(a.scores[:max(first, 1)], b.scores)),
                  default=0.0)
        report(f"  {label} greedy ({case} prompt lengths): tokens equal for {first} of 32 steps; "
               f"largest logit gap before that {gap:.3f}")
        out[f"equal_steps_{case}"], out[f"logit_gap_{case}"] = first, gap
    return out


def hybrid_vs_native(actor, tok) -> dict:
    """The hybrid engine's kernels against the model's own forward."""
    def hybrid(**kw):
        actor.eval()
        try:
            return actor.generate(**kw)
        finally:
            actor.train()

    return greedy_agreement("hybrid vs native", tok, hybrid, eval_generate(actor.module))


def static_vs_dynamic(actor, tok) -> dict:
    """A static KV cache (compiled decoding on a GPU) against the dynamic cache, same weights."""
    gen = eval_generate(actor.module)
    return greedy_agreement("static vs dynamic cache", tok, lambda **kw: gen(**kw, cache_implementation="static"),
                            gen)


def eval_generate(module):
    def generate(**kw):
        module.eval()
        try:
            return module.generate(**kw)
        finally:
            module.train()

    return generate


def section_fp16(a) -> None:
    """SFT of a ~100M Llama on the demo task in fp16 (dynamic loss scaling): the loss falls and
    the loss scaler skips only its first steps."""
    from training.step1_sft.main import main as sft_main

    tmp = Path(tempfile.mkdtemp())
    build_llama(tmp / "m", a.spec(FP16_MODEL), 128)
    out = sft_main([
        "--model_name_or_path", str(tmp / "m"), "--data_path", str(DEMO / "sft"), "--max_seq_len", "128",
        "--per_device_train_batch_size", "32", "--dtype", "fp16", "--zero_stage", str(a.zero),
        "--max_steps", str(a.steps), "--logging_steps", "5", "--learning_rate", "3e-4", "--num_warmup_steps", "5",
        "--output_dir", str(tmp / "out"), "--disable_tqdm"])
    rows = [h for h in out["history"] if "train/loss" in h]
    evals = [h["eval/loss"] for h in out["history"] if "eval/loss" in h]
    nan = any(r["train/loss"] != r["train/loss"] for r in rows)
    skipped = [(r["step"], r.get("train/skipped_steps")) for r in rows]
    report(f"fp16 SFT ZeRO-{a.zero}: train loss {rows[0]['train/loss']:.3f} -> {rows[-1]['train/loss']:.3f}, "
          f"eval loss {evals[0]:.3f} -> {evals[-1]:.3f}; skipped steps (step, total so far) {skipped}; "
          f"loss scale {rows[-1].get('train/loss_scale')}; NaN loss: {nan}")
    result(section="fp16_sft", zero=a.zero, loss_first=rows[0]["train/loss"], loss_last=rows[-1]["train/loss"],
           eval_first=evals[0], eval_last=evals[-1], skipped=skipped, nan=nan,
           peak_gib=peak_memory_gib())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("section", choices=["peak", "sft", "ppo", "fp16"])
    p.add_argument("--zero", type=int, default=2)
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--batch", type=int, default=None, help="sft: sequences per step (16); ppo: prompts per round (32)")
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--log_every", type=int, default=5)
    p.add_argument("--gradient_checkpointing", action="store_true")
    p.add_argument("--compile", action="store_true", help="sft: --torch_compile")
    p.add_argument("--profile", type=int, default=0, help="sft: profile 3 optimizer steps from this one (0: none)")
    p.add_argument("--hybrid", action="store_true")
    p.add_argument("--no_gather", dest="gather", action="store_false",
                   help="ppo at ZeRO-3: --ds3_gather_for_generation false (partitioned weights in generation)")
    p.add_argument("--cache", default=None, choices=["static"], help="ppo: --cache_implementation")
    p.add_argument("--esrl", action="store_true", help="ppo: ESRL dynamic sampling with its default knobs")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2, help="ppo: rounds left out of the medians")
    p.add_argument("--prompt_len", type=int, default=256)
    p.add_argument("--answer_len", type=int, default=256)
    p.add_argument("--small", action="store_true", help="tiny models (a check of the bench itself, on CPU too)")
    a = p.parse_args()
    a.spec = (lambda spec: {**spec, **SMALL}) if a.small else (lambda spec: spec)
    a.batch = a.batch or (16 if a.section == "sft" else 32)

    from utils import distributed as dist

    dist.set_env_defaults()
    {"peak": section_peak, "sft": section_sft, "ppo": section_ppo, "fp16": section_fp16}[a.section](a)


if __name__ == "__main__":
    main()
