"""Step 2 (alternative to a reward model): DPO, cDPO, IPO, SimPO or ORPO on preference pairs.

    python -m training.step2_dpo.main --model_name_or_path SFT_DIR --data_path PAIRS_DIR --output_dir O
    python -m training.step2_dpo.main ... --loss_type ipo --beta 0.5
    python -m training.step2_dpo.main ... --precompute_ref_log_probs   # reference scored once, then freed
    deepspeed --num_gpus 8 --module training.step2_dpo.main --zero_stage 3 --reference_zero_stage 3 ...

Chosen and rejected answers go through the policy in one concatenated forward; only answer
tokens count. The reference (sigmoid, ipo) is a frozen DeepSpeed engine with its own ZeRO
stage. The result is saved as an HF causal LM.
"""
from __future__ import annotations

from functools import partial

import torch

from utils import distributed as dist
from utils.checkpoint import save_hf_model
from utils.config import DPOConfig, parse_config
from utils.data import step_examples
from utils.data.preference import PreferenceBatch, collate_preferences, tokenize_preferences
from utils.ds_config import eval_ds_config
from utils.losses import dpo_loss, ipo_loss, orpo_loss, response_lengths, sequence_logprobs, simpo_loss
from utils.models import (TORCH_DTYPES, labelled_logits, load_causal_lm, load_tokenizer_for, load_trainable_lm,
                          zero3_init_context)
from utils.predict import make_predict_hook
from utils.run import finish, start, user_errors
from utils.trainer import LossOutput, Trainer, ds_config_for, start_engine, total_steps


def response_logps(model, batch: PreferenceBatch, average: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """([2P] summed or length-averaged answer log-probs, [2P] length-averaged ones);
    rows [0, P) chosen, [P, 2P) rejected."""
    total = sequence_logprobs(*labelled_logits(model, batch.input_ids, batch.attention_mask, batch.labels))
    mean = total / response_lengths(batch.labels)
    return (mean if average else total), mean


class DPOObjective:
    """(policy engine, batch) -> LossOutput; the reference is a live engine or precomputed."""

    def __init__(self, cfg: DPOConfig, reference=None):
        self.cfg, self.reference = cfg, reference

    def ref_logps(self, batch: PreferenceBatch) -> torch.Tensor:
        if not torch.isnan(batch.ref_logps).any():
            return batch.ref_logps
        with torch.no_grad():
            return response_logps(self.reference, batch, average=False)[0]

    def __call__(self, policy, batch: PreferenceBatch) -> LossOutput:
        cfg, P = self.cfg, batch.n_pairs
        average = cfg.loss_type in ("simpo", "orpo")
        logps, mean_logps = response_logps(policy, batch, average)
        chosen, rejected = logps[:P], logps[P:2 * P]
        metrics = {"logps/chosen": (float(chosen.detach().sum()), P),
                   "logps/rejected": (float(rejected.detach().sum()), P)}
        if cfg.uses_reference:
            ref = self.ref_logps(batch)
            ref_chosen, ref_rejected = ref[:P], ref[P:2 * P]
            if cfg.loss_type == "sigmoid":
                losses = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, cfg.beta, cfg.label_smoothing)
            else:
                losses = ipo_loss(chosen, rejected, ref_chosen, ref_rejected, cfg.beta)
            r_chosen = cfg.beta * (chosen - ref_chosen).detach()
            r_rejected = cfg.beta * (rejected - ref_rejected).detach()
        elif cfg.loss_type == "simpo":
            losses = simpo_loss(chosen, rejected, cfg.beta, cfg.simpo_gamma)
            r_chosen, r_rejected = cfg.beta * chosen.detach(), cfg.beta * rejected.detach()
        else:
            losses, ratio = orpo_loss(chosen, rejected, cfg.beta)
            r_chosen, r_rejected = cfg.beta * chosen.detach(), cfg.beta * rejected.detach()
            metrics["log_odds_ratio"] = (float(ratio.detach().sum()), P)
        if cfg.rpo_alpha:
            nll = -mean_logps[:P]
            losses = losses + cfg.rpo_alpha * nll
            metrics["nll/chosen"] = (float(nll.detach().sum()), P)
        metrics.update({
            "rewards/chosen": (float(r_chosen.sum()), P),
            "rewards/rejected": (float(r_rejected.sum()), P),
            "rewards/accuracy": (float((r_chosen > r_rejected).sum()), P),
            "rewards/margin": (float((r_chosen - r_rejected).sum()), P),
        })
        return LossOutput(losses.sum(), float(P), metrics)


def build_reference(cfg: DPOConfig, tokenizer):
    """The frozen reference as a DeepSpeed engine without optimizer (own ZeRO stage)."""
    import deepspeed

    ds = eval_ds_config(micro_batch_size=cfg.per_device_train_batch_size, world_size=dist.world_size(),
                        zero_stage=cfg.reference_zero_stage, offload=cfg.offload_reference_model, dtype=cfg.dtype)
    zero3_init_context(ds)
    ref = load_causal_lm(cfg.reference_model_name_or_path or cfg.model_name_or_path, tokenizer,
                         trust_remote_code=cfg.trust_remote_code, disable_dropout_=True,
                         resize_embeddings=cfg.add_eot_token, dtype=TORCH_DTYPES[cfg.dtype])
    ref.requires_grad_(False)
    engine, *_ = deepspeed.initialize(model=ref, config=ds)
    engine.eval()
    return engine


@torch.no_grad()
def precompute_reference(reference, examples: list, pad_id: int, batch_size: int) -> None:
    """Store the reference's answer log-probs on every example: each rank scores a contiguous share
    (a rank with fewer batches repeats a forward and discards it, so ZeRO-3's collective forwards
    stay matched), then every rank receives all of them. The shares and batches are Trainer.evaluate's,
    so on the test split the reference scores each pair in the batch the policy is evaluated in."""
    if not examples:
        return
    device = dist.device()
    per_rank = -(-len(examples) // dist.world_size())
    mine = examples[dist.rank() * per_rank:(dist.rank() + 1) * per_rank]
    scores: list[tuple[float, float]] = []
    for b in range(-(-per_rank // batch_size)):
        chunk = mine[b * batch_size:(b + 1) * batch_size]
        lp = response_logps(reference, collate_preferences(chunk or examples[:1], pad_id).to(device),
                            average=False)[0].cpu()
        scores += [(float(lp[j]), float(lp[len(chunk) + j])) for j in range(len(chunk))]
    gathered = [s for part in dist.all_gather_object(scores) for s in part]
    for e, (chosen, rejected) in zip(examples, gathered, strict=True):
        e.ref_chosen, e.ref_rejected = chosen, rejected


def covers_every_pair(cfg: DPOConfig, n_train: int) -> bool:
    """Whether the run trains on each pair at least once (the default for precomputing)."""
    steps = total_steps(n_train, cfg, dist.world_size())
    return steps * cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * dist.world_size() >= n_train


def pair_count(batch: PreferenceBatch) -> int:
    return batch.n_pairs


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(DPOConfig, argv)
    start(cfg)
    with user_errors():
        tokenizer = load_tokenizer_for(cfg)
        train, test = step_examples(cfg, 1, partial(tokenize_preferences, tokenizer=tokenizer,
                                                    max_len=cfg.max_seq_len, pairs_only=True), "pairs")
        predict = make_predict_hook(cfg, tokenizer, cfg.max_seq_len)
        reference = build_reference(cfg, tokenizer) if cfg.uses_reference else None
        ds_config = ds_config_for(cfg)
        model = load_trainable_lm(cfg, tokenizer, ds_config)
    engine = start_engine(model, cfg, len(train), ds_config, f"policy ({cfg.loss_type}, beta {cfg.beta})")
    precompute = cfg.precompute_ref_log_probs
    if precompute is None:
        precompute = covers_every_pair(cfg, len(train))
    if reference is not None and precompute:
        for split in (train, test):  # test apart: scored in the very batches evaluation forms
            precompute_reference(reference, split, tokenizer.pad_token_id, cfg.per_device_eval_batch_size)
        reference = None
        why = "" if cfg.precompute_ref_log_probs else " (the default when every pair is trained on; " \
                                                      "--precompute_ref_log_probs false keeps it live)"
        dist.print_rank0(f"[dpo] reference log-probs precomputed for {len(train) + len(test)} pairs, the reference "
                         f"freed{why}")
    trainer = Trainer(cfg, engine, train, test, collate=partial(collate_preferences, pad_id=tokenizer.pad_token_id),
                      loss_fn=DPOObjective(cfg, reference), count_fn=pair_count, name="dpo")
    result = trainer.fit(after_step=predict and partial(predict, engine))

    save_hf_model(engine.module, tokenizer, cfg.output_dir)
    finish()
    return {"eval": result, "history": trainer.history, "reference": reference}


if __name__ == "__main__":
    main()
