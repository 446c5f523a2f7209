"""DPO throughput: pairs/s with a live reference model vs precomputed reference log-probs.

Same tiny policy, same pairs, same settings; the two modes alternate in blocks so machine
noise hits both. The precomputed mode's one-off scoring pass is timed and reported too.

    .venv/bin/python -m scripts.bench.dpo [--steps 30 --rounds 4 --hidden 128 --layers 4]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--batch", type=int, default=8, help="pairs per step")
    p.add_argument("--prompt_len", type=int, default=48)
    p.add_argument("--answer_len", type=int, default=48)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    a = p.parse_args()

    from utils import distributed as dist

    dist.set_env_defaults()
    dist.init_distributed()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.step2_dpo.main import DPOObjective, build_reference, pair_count, precompute_reference
    from utils.config import DPOConfig
    from utils.data.preference import PreferenceExample, collate_preferences
    from utils.tiny import build_tiny
    from utils.trainer import Trainer, init_engine

    tmp = tempfile.mkdtemp()
    build_tiny([f"User: item {i} is {i * 7 % 101}\nAssistant: noted {i}" for i in range(400)], f"{tmp}/m",
               vocab_size=400, hidden_size=a.hidden, layers=a.layers, heads=4,
               max_position=a.prompt_len + a.answer_len)
    tok = AutoTokenizer.from_pretrained(f"{tmp}/m")
    g = torch.Generator().manual_seed(0)

    def rnd(n):
        return torch.randint(4, len(tok), (n,), generator=g).tolist()
    pairs = [PreferenceExample(rnd(a.prompt_len), rnd(a.answer_len - 1) + [tok.eos_token_id],
                               rnd(a.answer_len - 1) + [tok.eos_token_id]) for _ in range(a.batch * 8)]
    cfg = DPOConfig(model_name_or_path=f"{tmp}/m", data_path=["-"], output_dir=f"{tmp}/out",
                    per_device_train_batch_size=a.batch, per_device_eval_batch_size=a.batch,
                    learning_rate=1e-5, lr_scheduler_type="constant", disable_tqdm=True)
    reference = build_reference(cfg, tok)

    def trainer_for(ref, examples):
        model = AutoModelForCausalLM.from_pretrained(f"{tmp}/m")
        engine = init_engine(model, cfg, total_steps=10**6)
        return Trainer(cfg, engine, examples, [], collate=lambda ex: collate_preferences(ex, tok.pad_token_id),
                       loss_fn=DPOObjective(cfg, ref), count_fn=pair_count)

    live = trainer_for(reference, pairs)
    pre_pairs = [PreferenceExample(e.prompt_ids, e.chosen_ids, e.rejected_ids) for e in pairs]
    t = time.perf_counter()
    precompute_reference(reference, pre_pairs, tok.pad_token_id, a.batch)
    t_precompute = time.perf_counter() - t
    pre = trainer_for(None, pre_pairs)
    windows = [[list(range(i, i + a.batch))] for i in range(0, len(pairs), a.batch)]

    def block(tr):
        t = time.perf_counter()
        for i in range(a.steps):
            tr.train_window(windows[i % len(windows)])
        return (time.perf_counter() - t) / a.steps

    block(live), block(pre)
    t_live, t_pre = [], []
    for _ in range(a.rounds):
        t_live.append(block(live))
        t_pre.append(block(pre))
    ml, mp = statistics.median(t_live), statistics.median(t_pre)
    print(f"policy {sum(p.numel() for p in live.engine.module.parameters()) / 1e6:.2f}M params, "
          f"{a.batch} pairs/step, {a.prompt_len}+{a.answer_len} tokens, {a.rounds} x {a.steps} steps each")
    print(f"live reference       : {ml * 1e3:7.2f} ms/step  {a.batch / ml:8.1f} pairs/s")
    print(f"precomputed reference: {mp * 1e3:7.2f} ms/step  {a.batch / mp:8.1f} pairs/s  "
          f"(+ one-off {len(pairs) / t_precompute:.0f} pairs/s scoring pass)")
    print(f"speed-up precomputed / live: {ml / mp:.2f}x")
    dist.teardown()


if __name__ == "__main__":
    main()
