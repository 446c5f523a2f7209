"""The LM head on answer positions only vs on every position, on a tiny Llama with a
real-sized vocabulary, side by side (same model, batch and optimizer): one SFT training step,
step 3's no-grad log-prob pass (old and reference log-probs) and its policy update.

    .venv/bin/python -m scripts.bench.logits [--vocab 32000 --seq 64 --answer 16 --batch 16]

Prints both losses and log-probs (equal) and the median times (alternating blocks).
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

    from training.step3_rlhf.sampler import forward_logprobs
    from utils.losses import causal_lm_loss, ppo_policy_loss
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

    start = a.seq - a.answer - 1   # step 3: the last prompt token predicts the first answer token
    act = torch.zeros(a.batch, a.seq - 1)
    act[:, start:] = 1

    def logprob_pass(s):
        with torch.no_grad():
            return forward_logprobs(model, ids, mask, s)[1]

    def policy_update(s):
        lp = forward_logprobs(model, ids, mask, s)[1]
        ppo_policy_loss(lp, old, torch.ones_like(lp), act, 0.2)[0].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with torch.no_grad():
        losses = [float(s / n) for s, n in (every_position(), answers_only())]
    old = logprob_pass(0)
    gap = float((old[:, start:] - logprob_pass(start)[:, start:]).abs().max())
    t = alternate({"all": lambda i: step(every_position), "answers": lambda i: step(answers_only),
                   "lp all": lambda i: logprob_pass(0), "lp answers": lambda i: logprob_pass(start),
                   "ppo all": lambda i: policy_update(0), "ppo answers": lambda i: policy_update(start)},
                  a.rounds, a.steps)
    print(f"vocab {a.vocab}, {a.hidden} hidden x {a.layers} layers, batch {a.batch} x {a.seq} tokens, "
          f"{a.answer}-token answers; loss {losses[0]:.6f} vs {losses[1]:.6f}; step-3 log-probs differ by "
          f"at most {gap:.1e}")
    print(f"{'LM head on':<34} {'every position':>15} {'answers only':>13}")
    for name, key in (("SFT step", ""), ("step 3 log-prob pass (no grad)", "lp "), ("step 3 policy update", "ppo ")):
        every, answers = t[f"{key}all"], t[f"{key}answers"]
        print(f"{name:<34} {every * 1e3:12.1f} ms {answers * 1e3:10.1f} ms   ({every / answers:.2f}x)")


if __name__ == "__main__":
    main()
