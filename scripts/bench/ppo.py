"""PPO throughput on a tiny model: samples/s, where a step's time goes, and the ratio to a
bare-torch round.

Runs step 3 itself (actor, reference, critic and reward model, all DeepSpeed engines) for a
few rounds and reports, per round, generation vs the three experience forwards vs the PPO
updates, so the printed samples/s counts the whole step (the experience forwards included).
Then the same round without DeepSpeed or any of our bookkeeping, on the same models, batch
and lengths: generate, the actor / reference / critic / reward forwards, GAE, and the actor
and critic updates on the same minibatches with fused AdamW. Ours is timed from round to
round (`time` of each metrics row: logging and sampling bookkeeping included).

    .venv/bin/python -m scripts.bench.ppo [--rounds 12 --batch 32 --answer_len 16 --hidden 128 --layers 4]
        [--profile 3] [--no-bare] [step-3 flags, e.g. --actor_zero_stage 3 --cache_implementation static]

--profile N: torch.profiler over N rounds after the warm-up, printing where a round's time goes
(the busiest operators) and how close its matmuls run to this machine's matmul peak: the floor
under any PPO round that does this arithmetic.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from scripts.bench.common import CallWindow, matmul_peak, parser, round_phases, setup_tiny


def main() -> None:
    p = parser(__doc__, steps=0, rounds=12)
    p.set_defaults(batch=32)
    p.add_argument("--answer_len", type=int, default=16)
    p.add_argument("--profile", type=int, default=0, help="rounds to profile after the warm-up (0: none)")
    p.add_argument("--bare", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the bare-torch round (--no-bare: ours only)")
    a, extra = p.parse_known_args()
    folder = setup_tiny(a.hidden, a.layers, 64 + a.answer_len)
    prof = RoundProfile(first=3, count=a.profile) if a.profile else None

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
        "--disable_tqdm", "--actor_learning_rate", "1e-5", "--critic_learning_rate", "1e-5", *extra])
    hist = result["history"][2:]  # the first rounds warm up
    gen, exp, train = (statistics.median(phases) for phases in zip(*(round_phases(h) for h in hist)))
    total = gen + exp + train
    tokens = statistics.median(h["response_length"] for h in hist)
    print(f"tiny Llama ({a.hidden} hidden, {a.layers} layers), {a.batch} prompts/round, "
          f"<= {a.answer_len} new tokens (mean {tokens:.1f}), {len(hist)} timed rounds")
    print(f"generation            {gen * 1e3:8.1f} ms  {gen / total:6.1%}")
    print(f"experience forwards   {exp * 1e3:8.1f} ms  {exp / total:6.1%}  (reward, actor, reference, critic)")
    print(f"PPO updates           {train * 1e3:8.1f} ms  {train / total:6.1%}")
    print(f"whole step            {total * 1e3:8.1f} ms  -> {a.batch / total:.1f} samples/s")
    rows = [json.loads(x) for x in (tmp / "out" / "metrics.jsonl").read_text().splitlines()]
    stamps = [r["time"] for r in rows if "phase/generation_s" in r][2:]
    ours = statistics.median(b - a_ for a_, b in zip(stamps, stamps[1:]))
    print(f"ours, round to round  {ours * 1e3:8.1f} ms  -> {a.batch / ours:.1f} samples/s")
    if not a.bare:
        return
    bare = bare_round_time(folder, tmp / "rm", tmp / "prompts.txt", a)
    print(f"bare torch round      {bare * 1e3:8.1f} ms  -> {a.batch / bare:.1f} samples/s")
    print(f"ratio ours/bare       {ours / bare:.3f}  (target <= 1.30)")
    if prof is not None:
        prof.summary(a.batch)


class RoundProfile(CallWindow):
    """The profiler over step-3 rounds `first` .. `first + count - 1` (PPORecipe.run_round)."""

    def __init__(self, first: int, count: int):
        from torch.profiler import ProfilerActivity

        from training.step3_rlhf.recipe import PPORecipe

        super().__init__(PPORecipe, "run_round", first, count, [ProfilerActivity.CPU], with_flops=True)

    def summary(self, batch: int) -> None:
        events = [e for e in self.profile.key_averages() if e.self_cpu_time_total > 0]
        n, wall = self.count, self.wall / self.count
        total = sum(e.self_cpu_time_total for e in events) / 1e6 / n
        mm = [e for e in events if e.key in ("aten::mm", "aten::addmm", "aten::bmm")]
        mm_time = sum(e.self_cpu_time_total for e in mm) / 1e6 / n
        mm_flops = sum(e.flops for e in mm) / n
        peak = matmul_peak(1024)
        print(f"profile of {n} rounds: {wall * 1e3:.1f} ms/round under the profiler, operators' own time "
              f"{total * 1e3:.1f} ms")
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]:
            t = e.self_cpu_time_total / 1e6 / n
            print(f"  {e.key[:48]:<48} {t * 1e3:8.1f} ms  {t / total:6.1%}  {e.count // n:6d} calls")
        print(f"matmuls: {mm_flops / 1e9:.2f} GFLOP per round in {mm_time * 1e3:.1f} ms = "
              f"{mm_flops / mm_time / 1e9:.0f} GFLOP/s; this machine's fp32 matmul peak {peak / 1e9:.0f} GFLOP/s, "
              f"so the matmuls alone take >= {mm_flops / peak * 1e3:.1f} ms per round "
              f"(<= {batch * peak / mm_flops:.0f} samples/s)")


def bare_round_time(actor_dir, rm_dir, prompts_file, a) -> float:
    """Median seconds of a PPO round in plain torch (same models, batch, lengths, minibatches)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from training.step3_rlhf.sampler import forward_logprobs
    from utils.generation import left_pad
    from utils.losses import gae, kl_penalized_rewards, ppo_policy_loss, ppo_value_loss
    from utils.models import end_scores, token_values

    tok = AutoTokenizer.from_pretrained(actor_dir)
    actor, ref = (AutoModelForCausalLM.from_pretrained(actor_dir) for _ in range(2))
    critic, reward = (AutoModelForSequenceClassification.from_pretrained(rm_dir) for _ in range(2))
    ref.eval(), reward.eval()
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-5, betas=(0.9, 0.95), fused=True) for m in (actor, critic)]
    rows = [json.loads(x) for x in Path(prompts_file).read_text().splitlines()]
    prompts = [tok(r["instruction"])["input_ids"][-64:] for r in rows]

    def logprobs(model, seq, attn, start):   # the LM head from the last prompt token on, as step 3
        return forward_logprobs(model, seq, attn, start)[1][:, start:]

    def one_round(i):
        ids, mask = left_pad(prompts[i * a.batch:(i + 1) * a.batch], tok.pad_token_id)
        P = ids.shape[1]
        with torch.no_grad():
            actor.eval()
            seq = actor.generate(input_ids=ids, attention_mask=mask, max_new_tokens=a.answer_len, do_sample=True,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            actor.train()
            done = (seq[:, P:] == tok.eos_token_id).long().cumsum(1)
            attn = torch.cat([mask, ((done - (seq[:, P:] == tok.eos_token_id).long()) == 0).long()], 1)
            act = attn[:, P:].float()
            old = logprobs(actor, seq, attn, P - 1)
            ref_lp = logprobs(ref, seq, attn, P - 1)
            old_values = token_values(critic, seq, attn)[:, P - 1:-1]
            score = end_scores(token_values(reward, seq, attn), attn)
            rewards, _ = kl_penalized_rewards(old, ref_lp, act, score.clamp(-5.0, 5.0), 0.1)
            adv, ret = gae(rewards, old_values, act, 1.0, 0.95)
        for mb in torch.arange(len(seq)).split(a.batch // 2):
            lp = logprobs(actor, seq[mb], attn[mb], P - 1)
            ppo_policy_loss(lp, old[mb], adv[mb], act[mb], 0.2)[0].backward()
            values = token_values(critic, seq[mb], attn[mb])[:, P - 1:-1]
            ppo_value_loss(values, old_values[mb], ret[mb], act[mb], 0.2)[0].backward()
            for opt in opts:
                opt.step()
                opt.zero_grad(set_to_none=True)

    times = []
    for i in range(a.rounds):
        t = time.perf_counter()
        one_round(i)
        times.append(time.perf_counter() - t)
    return statistics.median(times[2:])


if __name__ == "__main__":
    main()
