"""SFT step cost: our DeepSpeed step vs a bare torch forward/backward/AdamW loop.

Same tiny Llama, same batches (8 x 128 tokens, half of them answer tokens), same optimizer
settings (AdamW, grad-norm clipping 1.0, fp32); blocks of steps alternate between the two
so machine noise hits both alike. Prints tokens/s of each and the ratio of step times.

    .venv/bin/python -m scripts.bench.sft [--steps 60 --rounds 5 --hidden 128 --layers 4]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40, help="steps per timed block")
    p.add_argument("--rounds", type=int, default=5, help="alternating blocks per side")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    a = p.parse_args()

    from utils import distributed as dist

    dist.set_env_defaults()
    dist.init_distributed()
    from transformers import AutoModelForCausalLM

    from utils.config import SFTConfig
    from utils.data import Example, collate_lm
    from utils.losses import causal_lm_loss
    from utils.tiny import build_tiny
    from utils.trainer import Trainer, init_engine
    from training.step1_sft.main import label_count, sft_loss

    tmp = tempfile.mkdtemp()
    texts = [f"User: item {i} is number {i * 7 % 101}\nAssistant: noted {i}" for i in range(400)]
    build_tiny(texts, f"{tmp}/m", vocab_size=400, hidden_size=a.hidden, layers=a.layers, heads=4,
               max_position=a.seq)
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(f"{tmp}/m"))
    g = torch.Generator().manual_seed(0)
    examples = []
    for _ in range(a.batch * 8):
        ids = torch.randint(4, vocab, (a.seq,), generator=g).tolist()
        examples.append(Example(ids, [-100] * (a.seq // 2) + ids[a.seq // 2:]))
    batches = [collate_lm(examples[i:i + a.batch], pad_id=3) for i in range(0, len(examples), a.batch)]

    # bare loop
    torch.manual_seed(0)
    bare = AutoModelForCausalLM.from_pretrained(f"{tmp}/m")
    opt = torch.optim.AdamW(bare.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)

    def bare_step(batch):
        logits = bare(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        s, n = causal_lm_loss(logits, batch.labels)
        (s / n).backward()
        torch.nn.utils.clip_grad_norm_(bare.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    # ours: the real Trainer step on a DeepSpeed engine
    cfg = SFTConfig(model_name_or_path=f"{tmp}/m", data_path=["-"], output_dir=f"{tmp}/out",
                    per_device_train_batch_size=a.batch, learning_rate=1e-4, lr_scheduler_type="constant",
                    disable_tqdm=True)
    ours_model = AutoModelForCausalLM.from_pretrained(f"{tmp}/m")
    engine = init_engine(ours_model, cfg, total_steps=10**6)
    trainer = Trainer(cfg, engine, examples, [], collate=lambda ex: collate_lm(ex, pad_id=3),
                      loss_fn=sft_loss, count_fn=label_count)
    windows = [[list(range(i, i + a.batch))] for i in range(0, len(examples), a.batch)]

    def block(fn, items):
        t = time.perf_counter()
        for i in range(a.steps):
            fn(items[i % len(items)])
        return (time.perf_counter() - t) / a.steps

    for _ in range(2):  # warm-up both
        block(bare_step, batches)
        block(trainer.train_window, windows)
    t_bare, t_ours = [], []
    for _ in range(a.rounds):
        t_bare.append(block(bare_step, batches))
        t_ours.append(block(trainer.train_window, windows))
    tokens = a.batch * a.seq
    mb, mo = statistics.median(t_bare), statistics.median(t_ours)
    n_params = sum(p.numel() for p in bare.parameters())
    print(f"model {n_params / 1e6:.2f}M params, batch {a.batch} x {a.seq} tokens, {a.rounds} x {a.steps} steps each")
    print(f"bare torch loop : {mb * 1e3:7.2f} ms/step  {tokens / mb:9.0f} tok/s")
    print(f"ours (DeepSpeed): {mo * 1e3:7.2f} ms/step  {tokens / mo:9.0f} tok/s")
    print(f"ratio ours/bare : {mo / mb:.3f}  (target <= 1.10)")
    dist.teardown()


if __name__ == "__main__":
    main()
