"""Step 1: supervised fine-tuning (instruction or chat data) and continued pretraining (text).

    python -m training.step1_sft.main --model_name_or_path M --data_path D --output_dir O
    deepspeed --num_gpus 8 --module training.step1_sft.main --zero_stage 3 ...
    deepspeed --hostfile hosts --module training.step1_sft.main ...      # several nodes
    python -m training.step1_sft.main config.yaml --learning_rate 2e-5  # file + overrides
    python -m training.step1_sft.main sft/config_full.yaml   # an alignment-handbook sft or cpt recipe

Loss: next-token cross-entropy on response tokens + EOS only (all tokens for plain text),
averaged over every such token of the accumulation window.
"""
from __future__ import annotations

from functools import partial

from utils.export import save_hf_model
from utils import distributed as dist
from utils.cli import parse_config
from utils.config import ConfigError, SFTConfig
from utils.data import IGNORE_INDEX, Phase, collate_lm, collate_packed, step_examples, tokenize_records
from utils.engines import ds_config_for, start_engine
from utils.losses import causal_lm_loss
from utils.models import (check_positions, labelled_logits, load_tokenizer_for, load_trainable_lm,
                          separates_packed_sequences)
from utils.predict import make_predict_hook
from utils.run import finish, halts, start, user_errors
from utils.trainer import LossOutput, Trainer, perplexity


def sft_loss(model, batch) -> LossOutput:
    loss_sum, n = causal_lm_loss(*labelled_logits(model, batch.input_ids, batch.attention_mask, batch.labels,
                                                  batch.position_ids))
    return LossOutput(loss_sum, float(n))


def label_count(batch) -> int:
    return int((batch.labels[:, 1:] != IGNORE_INDEX).sum())


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(SFTConfig, argv)
    start(cfg)
    with user_errors():
        tokenizer = load_tokenizer_for(cfg)
        train, test = step_examples(cfg.data_part(), Phase.SFT, partial(tokenize_records, tokenizer=tokenizer,
                                                    max_len=cfg.max_seq_len, fmt=cfg.data_format))
        predict = make_predict_hook(cfg, tokenizer, cfg.max_seq_len)
        ds_config = ds_config_for(cfg)
        model = load_trainable_lm(cfg, tokenizer, ds_config)
        check_positions(model, cfg.max_seq_len, "--max_seq_len", cfg.model_name_or_path)
    engine = start_engine(model, cfg, len(train), ds_config)
    with user_errors():
        if cfg.padding_free and not separates_packed_sequences(engine, dist.device()):
            raise ConfigError(f"--padding_free: {type(engine.module).__name__} lets packed examples attend to each "
                              f"other (its attention ignores position-id restarts); train without it")
    collate = collate_packed if cfg.padding_free else collate_lm
    trainer = Trainer(cfg, engine, train, test, collate=partial(collate, pad_id=tokenizer.pad_token_id),
                      loss_fn=sft_loss, count_fn=label_count)
    with halts():
        result = trainer.fit(eval_extra=perplexity, after_step=predict and partial(predict, engine))
        save_hf_model(engine.module, tokenizer, cfg.output_dir)
    finish(cfg.output_dir)
    return {"eval": result, "history": trainer.history}


if __name__ == "__main__":
    main()
