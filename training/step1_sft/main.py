"""Step 1: supervised fine-tuning (instruction or chat data) and continued pretraining (text).

    python -m training.step1_sft.main --model_name_or_path M --data_path D --output_dir O
    deepspeed --num_gpus 8 --module training.step1_sft.main --zero_stage 3 ...
    deepspeed --hostfile hosts --module training.step1_sft.main ...      # several nodes
    python -m training.step1_sft.main config.yaml --learning_rate 2e-5  # file + overrides

Loss: next-token cross-entropy on response tokens + EOS only (all tokens for plain text),
averaged over every such token of the accumulation window.
"""
from __future__ import annotations

from functools import partial

from utils import distributed as dist
from utils.checkpoint import save_hf_model
from utils.config import SFTConfig, parse_config
from utils.data import IGNORE_INDEX, collate_lm, load_step_records, tokenize_step_data
from utils.ds_config import train_ds_config
from utils.losses import causal_lm_loss
from utils.models import count_parameters, load_tokenizer_for, load_trainable_lm
from utils.run import finish, start, user_errors
from utils.trainer import LossOutput, Trainer, init_engine, perplexity, total_steps


def sft_loss(model, batch) -> LossOutput:
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    loss_sum, n = causal_lm_loss(logits, batch.labels)
    return LossOutput(loss_sum, float(n))


def label_count(batch) -> int:
    return int((batch.labels[:, 1:] != IGNORE_INDEX).sum())


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(SFTConfig, argv)
    start(cfg)
    with user_errors():
        tokenizer = load_tokenizer_for(cfg)
        data = load_step_records(cfg.data_path, cfg.data_split, step=0, seed=cfg.data_seed)
        train, test, truncated = tokenize_step_data(data, tokenizer, cfg.max_seq_len, cfg.data_format)
        if truncated:
            dist.print_rank0(f"[data] {truncated} answers truncated to --max_seq_len {cfg.max_seq_len}")
        dist.print_rank0(f"[data] {len(train)} training and {len(test)} held-out sequences")
        ds_config = train_ds_config(
            micro_batch_size=cfg.per_device_train_batch_size,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps, world_size=dist.world_size(),
            zero_stage=cfg.zero_stage, offload=cfg.offload, dtype=cfg.dtype,
            gradient_clipping=cfg.gradient_clipping)
        model = load_trainable_lm(cfg, tokenizer, ds_config)
    trainable, total = count_parameters(model)
    dist.print_rank0(f"[model] {cfg.model_name_or_path}: {total:,} parameters, {trainable:,} trained")

    engine = init_engine(model, cfg, total_steps(len(train), cfg, dist.world_size()), ds_config=ds_config)
    trainer = Trainer(cfg, engine, train, test, collate=partial(collate_lm, pad_id=tokenizer.pad_token_id),
                      loss_fn=sft_loss, count_fn=label_count)
    result = trainer.fit(eval_extra=perplexity)

    save_hf_model(engine.module, tokenizer, cfg.output_dir)
    finish()
    return {"eval": result, "history": trainer.history}


if __name__ == "__main__":
    main()
