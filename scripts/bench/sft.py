"""SFT step cost: our DeepSpeed step vs a bare torch forward/backward/AdamW loop.

Same tiny Llama, same batches (8 x 128 tokens, half of them answer tokens), same optimizer
settings (AdamW, grad-norm clipping 1.0, fp32); blocks of steps alternate between the two
so machine noise hits both alike. Prints tokens/s of each and the ratio of step times.

    .venv/bin/python -m scripts.bench.sft [--steps 40 --rounds 5 --hidden 128 --layers 4]
"""
from __future__ import annotations

import torch

from scripts.bench.common import alternate, parser, setup_tiny


def main() -> None:
    p = parser(__doc__, steps=40, rounds=5)
    p.add_argument("--seq", type=int, default=128)
    a = p.parse_args()
    folder = setup_tiny(a.hidden, a.layers, a.seq)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.step1_sft.main import label_count, sft_loss
    from utils import distributed as dist
    from utils.config import SFTConfig
    from utils.data import Example, collate_lm
    from utils.losses import causal_lm_loss
    from utils.models import labelled_logits
    from utils.engines import ds_config_for, init_engine
    from utils.trainer import Trainer

    vocab = len(AutoTokenizer.from_pretrained(folder))
    g = torch.Generator().manual_seed(0)
    examples = []
    for _ in range(a.batch * 8):
        ids = torch.randint(4, vocab, (a.seq,), generator=g).tolist()
        examples.append(Example(ids, [-100] * (a.seq // 2) + ids[a.seq // 2:]))
    batches = [collate_lm(examples[i:i + a.batch], pad_id=3) for i in range(0, len(examples), a.batch)]

    torch.manual_seed(0)
    bare = AutoModelForCausalLM.from_pretrained(folder)
    # the fastest torch optimizer and the same answer-only logits as ours: a limit only if it is fast
    opt = torch.optim.AdamW(bare.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0, fused=True)

    def bare_step(i):
        batch = batches[i % len(batches)]
        s, n = causal_lm_loss(*labelled_logits(bare, batch.input_ids, batch.attention_mask, batch.labels))
        (s / n).backward()
        torch.nn.utils.clip_grad_norm_(bare.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    cfg = SFTConfig(model_name_or_path=folder, data_path=["-"], output_dir=f"{folder}/out",
                    per_device_train_batch_size=a.batch, learning_rate=1e-4, lr_scheduler_type="constant",
                    disable_tqdm=True)
    engine = init_engine(AutoModelForCausalLM.from_pretrained(folder), cfg, total_steps=10**6,
                         ds_config=ds_config_for(cfg))
    trainer = Trainer(cfg, engine, examples, [], collate=lambda ex: collate_lm(ex, pad_id=3),
                      loss_fn=sft_loss, count_fn=label_count)
    windows = [[list(range(i, i + a.batch))] for i in range(0, len(examples), a.batch)]

    t = alternate({"bare": bare_step, "ours": lambda i: trainer.train_window(windows[i % len(windows)])},
                  a.rounds, a.steps)
    tokens = a.batch * a.seq
    print(f"model {sum(p.numel() for p in bare.parameters()) / 1e6:.2f}M params, batch {a.batch} x {a.seq} "
          f"tokens, {a.rounds} x {a.steps} steps each")
    print(f"bare torch loop : {t['bare'] * 1e3:7.2f} ms/step  {tokens / t['bare']:9.0f} tok/s")
    print(f"ours (DeepSpeed): {t['ours'] * 1e3:7.2f} ms/step  {tokens / t['ours']:9.0f} tok/s")
    print(f"ratio ours/bare : {t['ours'] / t['bare']:.3f}  (target <= 1.10)")
    dist.teardown()


if __name__ == "__main__":
    main()
