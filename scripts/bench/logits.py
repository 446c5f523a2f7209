"""The LM head on answer positions only vs on every position: one SFT training step of a
tiny Llama with a real-sized vocabulary, side by side (same model, batch and optimizer).

    .venv/bin/python -m scripts.bench.logits [--vocab 32000 --seq 64 --answer 16 --batch 16]

Prints both losses (equal) and the median step times (alternating blocks).
"""
from __future__ import annotations

import torch

from scripts.bench.common import alternate, parser


def main() -> None:
    p = parser(__doc__, steps=5, rounds=3)
    p.set_defaults(batch=16, layers=2)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--answer", type=int, default=16)
    a = p.parse_args()

    from transformers import LlamaConfig, LlamaForCausalLM

    from utils.losses import causal_lm_loss
    from utils.models import labelled_logits

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=4 * a.hidden,
                                         num_hidden_layers=a.layers, num_attention_heads=4, num_key_value_heads=4,
                                         max_position_embeddings=a.seq))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    ids = torch.randint(4, a.vocab, (a.batch, a.seq))
    mask = torch.ones_like(ids)
    labels = ids.clone()
    labels[:, :a.seq - a.answer] = -100

    def every_position():
        return causal_lm_loss(model(input_ids=ids, attention_mask=mask, use_cache=False).logits, labels)

    def answers_only():
        return causal_lm_loss(*labelled_logits(model, ids, mask, labels))

    def step(loss_fn):
        s, n = loss_fn()
        (s / n).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with torch.no_grad():
        losses = [float(s / n) for s, n in (every_position(), answers_only())]
    t = alternate({"all": lambda i: step(every_position), "answers": lambda i: step(answers_only)}, a.rounds, a.steps)
    print(f"vocab {a.vocab}, {a.hidden} hidden x {a.layers} layers, batch {a.batch} x {a.seq} tokens, "
          f"{a.answer}-token answers; loss {losses[0]:.6f} vs {losses[1]:.6f}")
    print(f"LM head on every position : {t['all'] * 1e3:8.1f} ms/step")
    print(f"LM head on answers only   : {t['answers'] * 1e3:8.1f} ms/step   ({t['all'] / t['answers']:.2f}x)")


if __name__ == "__main__":
    main()
