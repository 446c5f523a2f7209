"""DPO throughput: pairs/s with a live reference model vs precomputed reference log-probs.

Same tiny policy, same pairs, same settings; the two modes alternate in blocks so machine
noise hits both. The precomputed mode's one-off scoring pass is timed and reported too.

    .venv/bin/python -m scripts.bench.dpo [--steps 30 --rounds 4 --hidden 128 --layers 4]
"""
from __future__ import annotations

import time

import torch

from scripts.bench.common import alternate, parser, setup_tiny


def main() -> None:
    p = parser(__doc__, steps=30, rounds=4)
    p.add_argument("--prompt_len", type=int, default=48)
    p.add_argument("--answer_len", type=int, default=48)
    a = p.parse_args()
    folder = setup_tiny(a.hidden, a.layers, a.prompt_len + a.answer_len)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.step2_dpo.objectives import DPOObjective, method_for
    from training.step2_dpo.reference import build_reference, precompute_reference
    from utils import distributed as dist
    from utils.config import DPOConfig
    from utils.data.preference import PreferenceExample, collate_preferences
    from utils.engines import ds_config_for, init_engine
    from utils.trainer import Trainer

    tok = AutoTokenizer.from_pretrained(folder)
    g = torch.Generator().manual_seed(0)

    def rnd(n):
        return torch.randint(4, len(tok), (n,), generator=g).tolist()
    pairs = [PreferenceExample(rnd(a.prompt_len), rnd(a.answer_len - 1) + [tok.eos_token_id],
                               rnd(a.answer_len - 1) + [tok.eos_token_id]) for _ in range(a.batch * 8)]
    cfg = DPOConfig(model_name_or_path=folder, data_path=["-"], output_dir=f"{folder}/out",
                    per_device_train_batch_size=a.batch, per_device_eval_batch_size=a.batch,
                    learning_rate=1e-5, lr_scheduler_type="constant", disable_tqdm=True)
    reference = build_reference(cfg, tok)

    def trainer_for(ref, examples):
        engine = init_engine(AutoModelForCausalLM.from_pretrained(folder), cfg, total_steps=10**6,
                             ds_config=ds_config_for(cfg))
        return Trainer(cfg, engine, examples, [], collate=lambda ex: collate_preferences(ex, tok.pad_token_id),
                       loss_fn=DPOObjective(cfg, ref), count_fn=method_for("sigmoid").count)

    live = trainer_for(reference, pairs)
    pre_pairs = [PreferenceExample(e.prompt_ids, e.chosen_ids, e.rejected_ids) for e in pairs]
    t0 = time.perf_counter()
    precompute_reference(reference, pre_pairs, lambda ex: collate_preferences(ex, tok.pad_token_id), a.batch)
    t_precompute = time.perf_counter() - t0
    pre = trainer_for(None, pre_pairs)
    windows = [[list(range(i, i + a.batch))] for i in range(0, len(pairs), a.batch)]

    t = alternate({"live": lambda i: live.train_window(windows[i % len(windows)]),
                   "pre": lambda i: pre.train_window(windows[i % len(windows)])}, a.rounds, a.steps)
    print(f"policy {sum(p.numel() for p in live.engine.module.parameters()) / 1e6:.2f}M params, "
          f"{a.batch} pairs/step, {a.prompt_len}+{a.answer_len} tokens, {a.rounds} x {a.steps} steps each")
    print(f"live reference       : {t['live'] * 1e3:7.2f} ms/step  {a.batch / t['live']:8.1f} pairs/s")
    print(f"precomputed reference: {t['pre'] * 1e3:7.2f} ms/step  {a.batch / t['pre']:8.1f} pairs/s  "
          f"(+ one-off {len(pairs) / t_precompute:.0f} pairs/s scoring pass)")
    print(f"speed-up precomputed / live: {t['live'] / t['pre']:.2f}x")
    dist.teardown()


if __name__ == "__main__":
    main()
