"""The PPO recipe: rounds of rollout -> update, with evaluation; logging, checkpoints and resume
through the run loop every step shares (utils/loop.py).

A round takes --generation_batches generation batches of prompts per rank, turns each into an
`Experience` (rollout.py) and trains on all of them (update.py). `state_dict()` holds every piece
of state besides the DeepSpeed engines: the data position, the reward shaping's running state
(KL coefficient, normaliser, ESRL estimates, baseline, reward sources), counters, the pretraining
stream's position, the EMA weights and the RNG. A checkpoint stores each rank's state, so a resumed
run continues exactly where every rank stopped.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from transformers import AutoModelForSequenceClassification

from training.step3_rlhf.build import RLHFSetup
from training.step3_rlhf.rollout import ExperienceMaker
from training.step3_rlhf.update import PPOUpdater
from utils import distributed as dist
from utils.export import save_hf_model
from utils.data import epoch_batches
from utils.engines import engine_stats
from utils.loop import RunLoop
from utils.seeding import rng_state, set_rng_state


@dataclass
class Position:
    epoch: int = 0   # the epoch in progress
    round: int = 0   # rounds of it done
    step: int = 0    # rounds of the run done


class PPORecipe:
    def __init__(self, cfg, parts: RLHFSetup):
        self.cfg, self.parts, self.rlhf = cfg, parts, parts.rlhf
        self.maker = ExperienceMaker(cfg, parts.rlhf, parts.tokenizer, parts.sources, parts.weights, parts.prompts)
        self.updater = PPOUpdater(cfg, parts.rlhf, parts.tokenizer, parts.ptx)
        self.position = Position()
        self.total_rounds = parts.rounds_per_epoch * cfg.num_train_epochs
        if cfg.max_steps:
            self.total_rounds = min(self.total_rounds, cfg.max_steps)
        self.engines = {k: v for k, v in (("actor", self.rlhf.actor), ("critic", self.rlhf.critic)) if v is not None}
        # the EMA weights are the same on every rank (the EMA needs ZeRO 0-2): checkpointed once
        self.loop = RunLoop(cfg, self.engines, self, name="rlhf", shared=("ema",))

    # -- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        ptx, ema = self.parts.ptx, self.rlhf.ema
        return {"position": asdict(self.position), "rng": rng_state(), **self.maker.state_dict(),
                "ptx": ptx.state_dict() if ptx is not None else None,
                "ema": ema.state_dict() if ema is not None else None}

    def load_state_dict(self, s: dict) -> None:
        self.position = Position(**s["position"])
        set_rng_state(s["rng"])
        self.maker.load_state_dict(s)
        if self.parts.ptx is not None:
            self.parts.ptx.load_state_dict(s["ptx"])
        if self.rlhf.ema is not None:
            self.rlhf.ema.load_state_dict(s["ema"])

    # -- one round -------------------------------------------------------------------------------------
    def run_round(self, batches: list[list[int]]) -> dict[str, float]:
        """Rollout over this round's generation batches (prompt indices), then the PPO update."""
        cfg, prompts = self.cfg, self.parts.prompts
        exps, stats = [], {}
        for b in batches:
            exp, s = self.maker.make_experience([prompts[i] for i in b], b)
            exps.append(exp)
            for k, v in s.items():
                stats[k] = stats.get(k, 0.0) + v / len(batches)
        stats.update(self.maker.finish_round(exps))
        step = self.position.step
        stats.update(self.updater.train_on(exps, step, critic_only=step < cfg.critic_go_first_steps))
        self.loop.halt_if_not_finite(f"round {step + 1}", {k: stats[k] for k in ("loss", "pg_loss", "vf_loss")
                                                            if k in stats})
        stats.update({f"count/{k}": v for k, v in self.maker.counters.items()})
        return stats

    def after_round(self, stats: dict, epoch: int) -> None:
        """Evaluation, logging, predictions and printed answers of the round just done (of `epoch`)."""
        cfg, step = self.cfg, self.position.step
        if cfg.eval_steps and (step % cfg.eval_steps == 0 or step == self.total_rounds):
            t = time.perf_counter()
            stats.update(self.maker.evaluate(self.parts.eval_prompts))
            stats["time/eval"] = time.perf_counter() - t
        stats = {k: dist.all_reduce_sum(v) / dist.world_size() for k, v in sorted(stats.items())}
        stats.update(engine_stats({"actor": self.rlhf.actor, "critic": self.rlhf.critic}))
        stats.update({f"{name}/lr": engine.get_lr()[0] for name, engine in self.engines.items()})
        self.loop.log(step, stats)
        if self.parts.predict:
            self.parts.predict(self.rlhf.actor, epoch, step)
        if cfg.print_answers and step % cfg.print_answers_interval == 0:
            prompt, answer = self.maker.last_sample
            dist.print_rank0(f"[answer] step {step}\n--- prompt ---\n{prompt}\n--- answer ---\n{answer}")
        self.loop.bar.update(1)
        self.loop.bar.set_postfix(reward=f"{stats['reward/total']:.3f}", kl=f"{stats['kl']:.3f}")

    # -- the loop ----------------------------------------------------------------------------------------
    def fit(self) -> list[dict]:
        """Train to the end (resuming when asked); returns every round's statistics."""
        cfg = self.cfg
        where = self.loop.resume()
        if where:
            dist.print_rank0(f"[resume] {where}: epoch {self.position.epoch}, step {self.position.step}")
        self.loop.start(self.total_rounds, self.position.step, desc="ppo")
        per_round = cfg.generation_batches
        while self.position.step < self.total_rounds:
            batches = epoch_batches(len(self.parts.prompts), cfg.per_device_generation_batch_size,
                                    rank=dist.rank(), world_size=dist.world_size(), seed=cfg.seed,
                                    epoch=self.position.epoch)
            r = self.position.round
            stats = self.run_round(batches[r * per_round:(r + 1) * per_round])
            p = self.position
            self.position = (Position(p.epoch + 1, 0, p.step + 1) if r + 1 == self.parts.rounds_per_epoch
                             else Position(p.epoch, r + 1, p.step + 1))
            self.after_round(stats, p.epoch)
            self.loop.after_step(self.position.step)
        self.loop.close()
        return self.loop.history

    def save(self) -> None:
        """actor/, critic/ and actor_ema/ as folders stock transformers loads."""
        out, tok = self.cfg.output_dir, self.parts.tokenizer
        save_hf_model(self.rlhf.actor.module, tok, f"{out}/actor")
        if self.rlhf.critic is not None:
            save_hf_model(self.rlhf.critic.module, tok, f"{out}/critic", model_cls=AutoModelForSequenceClassification)
        if self.rlhf.ema is not None:
            save_hf_model(self.rlhf.ema, tok, f"{out}/actor_ema")
