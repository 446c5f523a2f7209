"""PPO throughput on a tiny model: samples/s and where a step's time goes.

Runs step 3 itself (actor, reference, critic and reward model, all DeepSpeed engines) for a
few rounds and reports, per round, generation vs the three experience forwards vs the PPO
updates, so the printed samples/s counts the whole step (the experience forwards included).

    .venv/bin/python -m scripts.bench.ppo [--rounds 12 --batch 32 --answer_len 16 --hidden 128 --layers 4]
"""
from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

from scripts.bench.common import parser, setup_tiny


def main() -> None:
    p = parser(__doc__, steps=0, rounds=12)
    p.set_defaults(batch=32)
    p.add_argument("--answer_len", type=int, default=16)
    a = p.parse_args()
    folder = setup_tiny(a.hidden, a.layers, 64 + a.answer_len)

    from transformers import AutoTokenizer

    from training.step3_rlhf.main import main as rlhf_main
    from utils.models import load_reward_model

    tmp = Path(tempfile.mkdtemp())
    tok = AutoTokenizer.from_pretrained(folder)
    load_reward_model(folder, tok).save_pretrained(tmp / "rm")
    tok.save_pretrained(tmp / "rm")
    rows = [{"instruction": f"User: item {i} is number\nAssistant: ", "output": f"noted {i}"}
            for i in range(a.batch * (a.rounds + 1))]
    (tmp / "prompts.txt").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = rlhf_main([
        "--actor_model_name_or_path", folder, "--critic_model_name_or_path", str(tmp / "rm"),
        "--data_path", str(tmp / "prompts.txt"), "--output_dir", str(tmp / "out"),
        "--per_device_generation_batch_size", str(a.batch), "--per_device_training_batch_size", str(a.batch // 2),
        "--max_prompt_seq_len", "64", "--max_answer_seq_len", str(a.answer_len), "--max_steps", str(a.rounds),
        "--disable_tqdm", "--actor_learning_rate", "1e-5", "--critic_learning_rate", "1e-5"])
    hist = result["history"][2:]  # the first rounds warm up
    gen = statistics.median(h["time/generation"] for h in hist)
    exp = statistics.median(h["time/experience"] for h in hist)
    train = statistics.median(h["time/training"] for h in hist)
    total = gen + exp + train
    tokens = statistics.median(h["response_length"] for h in hist)
    print(f"tiny Llama ({a.hidden} hidden, {a.layers} layers), {a.batch} prompts/round, "
          f"<= {a.answer_len} new tokens (mean {tokens:.1f}), {len(hist)} timed rounds")
    print(f"generation            {gen * 1e3:8.1f} ms  {gen / total:6.1%}")
    print(f"experience forwards   {exp * 1e3:8.1f} ms  {exp / total:6.1%}  (reward, actor, reference, critic)")
    print(f"PPO updates           {train * 1e3:8.1f} ms  {train / total:6.1%}")
    print(f"whole step            {total * 1e3:8.1f} ms  -> {a.batch / total:.1f} samples/s")


if __name__ == "__main__":
    main()
