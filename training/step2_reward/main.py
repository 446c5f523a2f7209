"""Step 2: reward model from preference pairs (Bradley-Terry) and/or annotated scores (MSE).

    python -m training.step2_reward.main --model_name_or_path SFT_DIR --data_path PAIRS_DIR --output_dir O
    deepspeed --num_gpus 8 --module training.step2_reward.main --zero_stage 3 ...
    python -m training.step2_reward.main ... --rm_loss mixed --score_loss_weight 0.5

The score of prompt + answer is the scalar head at the last token of `tokenizer(prompt + answer)`,
read as stock transformers reads it (utils/data/preference.py). The model is saved as an HF
sequence-classification folder (AutoModelForSequenceClassification) that scores the same there.
"""
from __future__ import annotations

import math
from functools import partial

import torch
from transformers import AutoModelForSequenceClassification

from utils.export import save_hf_model
from utils.cli import parse_config
from utils.config import RewardConfig
from utils.data import Phase, step_examples
from utils.data.preference import collate_preferences, tokenize_preferences
from utils.engines import ds_config_for, start_engine
from utils.losses import centering_penalty, divergence_pairwise_loss, pairwise_loss, score_mse
from utils import distributed as dist
from utils.models import (add_distinct_pad, check_positions, end_scores, load_tokenizer_for, load_trainable_lm,
                          reward_tokenizer_for_export, token_values)
from utils.run import finish, halts, start, user_errors
from utils.trainer import LossOutput, Trainer


def reward_loss(cfg: RewardConfig):
    """(engine, PreferenceBatch) -> LossOutput summed over examples (pairs and scored rows)."""
    def loss(model, batch) -> LossOutput:
        values = token_values(model, batch.input_ids, batch.attention_mask)
        scores = end_scores(values, batch.attention_mask)
        P = batch.n_pairs
        chosen, rejected = scores[:P], scores[P:2 * P]
        total = scores.new_zeros(())
        if cfg.rm_loss in ("pairwise", "mixed") and P:
            if cfg.pairwise_reduction == "end":
                total = total + pairwise_loss(chosen, rejected, batch.margin).sum()
            else:
                lens = batch.lengths
                total = total + divergence_pairwise_loss(values[:P], values[P:2 * P], batch.input_ids[:P],
                                                         batch.input_ids[P:2 * P], lens[:P], lens[P:2 * P],
                                                         batch.margin).sum()
            if cfg.center_rewards_coefficient:
                total = total + cfg.center_rewards_coefficient * centering_penalty(chosen, rejected).sum()
        scored = ~torch.isnan(batch.score_target)
        mse = score_mse(scores[scored], batch.score_target[scored]).sum()
        if cfg.rm_loss in ("score", "mixed"):
            total = total + (cfg.score_loss_weight if cfg.rm_loss == "mixed" else 1.0) * mse
        n_rows = scores.shape[0]
        metrics = {
            "accuracy": (float((chosen > rejected).sum()), P),
            "chosen_score": (float(chosen.sum()), P),
            "rejected_score": (float(rejected.sum()), P),
            "score_mean": (float(scores.sum()), n_rows),
            "score_sq": (float((scores.float() ** 2).sum()), n_rows),
        }
        if scored.any():
            metrics["mse"] = (float(mse), int(scored.sum()))
        return LossOutput(total, float(P + n_rows - 2 * P), metrics)
    return loss


def example_count(batch) -> int:
    return batch.n_pairs + batch.input_ids.shape[0] - 2 * batch.n_pairs


def score_std(metrics: dict) -> dict:
    var = metrics.pop("score_sq") - metrics["score_mean"] ** 2
    return {"score_std": math.sqrt(max(var, 0.0))}


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(RewardConfig, argv)
    start(cfg)
    with user_errors():
        tokenizer = load_tokenizer_for(cfg)
        grew = add_distinct_pad(tokenizer)
        if grew:
            dist.print_rank0(f"[models] pad token {tokenizer.pad_token!r} added (id {tokenizer.pad_token_id}): the "
                             f"tokenizer's pad was none or its EOS, where stock transformers reads the score")
        need_scores = cfg.rm_loss != "pairwise"
        train, test = step_examples(cfg.data_part(), Phase.REWARD, partial(tokenize_preferences, tokenizer=tokenizer,
                                                    max_len=cfg.max_seq_len, need_scores=need_scores, joint=True),
                                    "examples" + (" with scores" if need_scores else ""))
        if cfg.rm_loss == "pairwise" and not all(e.is_pair for e in train):
            from utils.config import ConfigError
            raise ConfigError("pointwise rows (prompt, response, score) need --rm_loss score or mixed")
        ds_config = ds_config_for(cfg)
        model = load_trainable_lm(cfg, tokenizer, ds_config, reward=True, resize=grew)
        check_positions(model, cfg.max_seq_len, "--max_seq_len", cfg.model_name_or_path)
    engine = start_engine(model, cfg, len(train), ds_config, "reward model")
    trainer = Trainer(cfg, engine, train, test, collate=partial(collate_preferences, pad_id=tokenizer.pad_token_id),
                      loss_fn=reward_loss(cfg), count_fn=example_count, name="reward")
    with halts():
        result = trainer.fit(eval_extra=score_std)
        export = reward_tokenizer_for_export(tokenizer)
        if export is None:
            dist.print_rank0("[save] this tokenizer cannot be saved to append EOS: stock users must append it to "
                             "prompt + answer themselves")
        save_hf_model(engine.module, export or tokenizer, cfg.output_dir, model_cls=AutoModelForSequenceClassification)
    finish(cfg.output_dir)
    return {"eval": result, "history": trainer.history}


if __name__ == "__main__":
    main()
