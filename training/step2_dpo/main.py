"""Step 2 (alternative to a reward model): DPO, cDPO, IPO, SimPO, ORPO, KTO or RRHF.

    python -m training.step2_dpo.main --model_name_or_path SFT_DIR --data_path PAIRS_DIR --output_dir O
    python -m training.step2_dpo.main ... --loss_type ipo --beta 0.5
    python -m training.step2_dpo.main ... --precompute_ref_log_probs   # reference scored once, then freed
    python -m training.step2_dpo.main ... --loss_type kto --data_path UNPAIRED_OR_PAIRS
    python -m training.step2_dpo.main ... --loss_type rrhf --data_path RANKED_OR_PAIRS --rrhf_weight 1
    deepspeed --num_gpus 8 --module training.step2_dpo.main --zero_stage 3 --reference_zero_stage 3 ...
    python -m training.step2_dpo.main dpo/config_full.yaml   # an alignment-handbook dpo or orpo recipe

Each example's answers go through the policy in one concatenated forward; only answer tokens
count. The reference (sigmoid, ipo, kto) is a frozen DeepSpeed engine with its own ZeRO stage,
or its log-probs computed once. The result is saved as an HF causal LM.
"""
from __future__ import annotations

from functools import partial

from utils import distributed as dist
from utils.export import save_hf_model
from utils.cli import parse_config
from utils.config import DPOConfig
from utils.data import Phase, step_examples
from utils.data.feedback import pair_for_kl
from utils.engines import ds_config_for, start_engine
from utils.models import check_positions, load_tokenizer_for, load_trainable_lm
from utils.predict import make_predict_hook
from utils.run import finish, halts, start, user_errors
from utils.trainer import Trainer

from .objectives import method_for
from .reference import build_reference, covers_every_example, precompute_reference


def prepare_kto(cfg: DPOConfig, train: list, test: list) -> None:
    """Pair every answer with another row's for the reference point; note a desirable/undesirable
    balance outside the KTO paper's advice."""
    for i, split in enumerate((train, test)):
        pair_for_kl(split, cfg.max_seq_len, cfg.data_seed + i)
    n_good = sum(e.desirable for e in train)
    ratio = cfg.desirable_weight * n_good / max(cfg.undesirable_weight * (len(train) - n_good), 1e-9)
    if not 1 <= ratio <= 4 / 3:
        dist.print_rank0(f"[kto] desirable_weight x {n_good} desirable / (undesirable_weight x "
                         f"{len(train) - n_good} undesirable) = {ratio:.3g}; the KTO paper advises 1 to 4/3 "
                         f"(set --desirable_weight / --undesirable_weight)")


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(DPOConfig, argv)
    start(cfg)
    method = method_for(cfg.loss_type)
    with user_errors():
        tokenizer = load_tokenizer_for(cfg)
        tokenize = partial(method.tokenize, tokenizer=tokenizer, max_len=cfg.max_seq_len)
        train, test = step_examples(cfg.data_part(), Phase.REWARD, tokenize, method.unit)
        if cfg.loss_type == "kto":
            prepare_kto(cfg, train, test)
        predict = make_predict_hook(cfg, tokenizer, cfg.max_seq_len)
        reference = build_reference(cfg, tokenizer) if cfg.uses_reference else None
        ds_config = ds_config_for(cfg)
        model = load_trainable_lm(cfg, tokenizer, ds_config)
        check_positions(model, cfg.max_seq_len, "--max_seq_len", cfg.model_name_or_path)
    beta = "" if cfg.loss_type == "rrhf" else f", beta {cfg.beta}"
    engine = start_engine(model, cfg, len(train), ds_config, f"policy ({cfg.loss_type}{beta})")
    collate = partial(method.collate, pad_id=tokenizer.pad_token_id)
    precompute = cfg.precompute_ref_log_probs
    if precompute is None:
        precompute = covers_every_example(cfg, len(train))
    if reference is not None and precompute:
        for split in (train, test):  # test apart: scored in the very batches evaluation forms
            precompute_reference(reference, split, collate, cfg.per_device_eval_batch_size)
        reference = None
        why = "" if cfg.precompute_ref_log_probs else " (the default when every example is trained on; " \
                                                      "--precompute_ref_log_probs false keeps it live)"
        dist.print_rank0(f"[dpo] reference log-probs precomputed for {len(train) + len(test)} {method.unit}, the "
                         f"reference freed{why}")
    trainer = Trainer(cfg, engine, train, test, collate=collate, loss_fn=method.objective(cfg, reference),
                      count_fn=method.count, name="dpo")
    with halts():
        result = trainer.fit(after_step=predict and partial(predict, engine))
        save_hf_model(engine.module, tokenizer, cfg.output_dir)
    finish(cfg.output_dir)
    return {"eval": result, "history": trainer.history}


if __name__ == "__main__":
    main()
