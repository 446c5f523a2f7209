"""Twelve causal-LM families, each with its tokenizer's special-token habits (no pad token, pad ==
EOS, a prepended BOS or none): every model call works (falcon's classifier takes no position ids),
a saved reward model scores in stock transformers exactly as in our training, and dropout switched
off makes train-mode forwards equal eval-mode ones."""
from __future__ import annotations

import pytest
import torch

from devtools.tiny_families import FAMILIES

PROMPT = "User: Repeat after me: fox red owl\nAssistant: "


@pytest.mark.parametrize("family", FAMILIES)
def test_value_head_reads_what_stock_pools(family, family_dirs):
    """token_values runs the model's own forward (only the arguments it declares) and its value at
    the last token of an unpadded text is the stock sequence-classification logit, exactly."""
    from utils.models import load_reward_model, load_tokenizer, token_values

    folder = family_dirs[family]
    tok = load_tokenizer(str(folder))
    model = load_reward_model(str(folder), tok, disable_dropout_=True).eval()
    for text in (PROMPT + "fox red owl", PROMPT + "owl"):
        ids = torch.tensor([tok(text)["input_ids"]])
        with torch.no_grad():
            values = token_values(model, ids, torch.ones_like(ids))
            stock = model(input_ids=ids).logits[0, 0]
        assert values.shape == ids.shape and torch.equal(values[0, -1], stock)


def pair_texts(n: int = 6) -> list[dict]:
    import pyarrow.parquet as pq

    from tests.conftest import DEMO_DATA

    rows = pq.read_table(DEMO_DATA / "preference" / "train.parquet").to_pylist()[:n]
    return [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows]


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_reward_model_scores_in_stock_transformers_as_in_training(family, family_dirs, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from utils.data.preference import collate_preferences, tokenize_preferences
    from utils.data.readers import Record
    from utils.models import (add_distinct_pad, end_scores, load_reward_model, load_tokenizer,
                              reward_tokenizer_for_export, token_values)

    tok = load_tokenizer(str(family_dirs[family]))
    grew = add_distinct_pad(tok)
    assert tok.pad_token_id != tok.eos_token_id
    model = load_reward_model(str(family_dirs[family]), tok, disable_dropout_=True, resize_embeddings=grew)
    rows = pair_texts()
    records = [Record("pairs.parquet", f" row {i}", r) for i, r in enumerate(rows)]
    examples, _ = tokenize_preferences(records, tok, 256, joint=True)   # what reward-model training reads
    export = reward_tokenizer_for_export(tok)
    assert export is not None
    model.save_pretrained(tmp_path / "rm")
    export.save_pretrained(tmp_path / "rm")

    stock_tok = AutoTokenizer.from_pretrained(tmp_path / "rm")
    stock = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    texts = [r["prompt"] + r[k] for k in ("chosen", "rejected") for r in rows]
    assert [e.chosen_ids for e in examples] + [e.rejected_ids for e in examples] == stock_tok(texts)["input_ids"]
    batch = collate_preferences(examples, tok.pad_token_id)
    with torch.no_grad():
        ours = end_scores(token_values(stock, batch.input_ids, batch.attention_mask), batch.attention_mask)
        theirs = stock(**stock_tok(texts, padding=True, return_tensors="pt")).logits[:, 0]
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("family", FAMILIES)
def test_dropout_off_makes_training_forwards_deterministic(family, family_dirs):
    """What makes PPO's first ratio exactly 1: with dropout off (step 3's default) the update's
    train-mode forward equals the eval-mode forward that sampled the old log-probs."""
    from utils.models import load_causal_lm, load_tokenizer, model_inputs

    folder = family_dirs[family]
    tok = load_tokenizer(str(folder))
    ids = torch.tensor([tok(PROMPT + "fox red owl")["input_ids"]])
    mask = torch.ones_like(ids)
    model = load_causal_lm(str(folder), tok, disable_dropout_=True)
    with torch.no_grad():
        train = model.train()(**model_inputs(model, ids, mask)).logits
        evaluated = model.eval()(**model_inputs(model, ids, mask)).logits
    assert torch.equal(train, evaluated)


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_only_where_labelled(family, family_dirs):
    """The LM head runs only from the token before the batch's first label (where the family's
    forward takes `logits_to_keep`), and the loss and log-probs equal the whole sequence's."""
    from utils.data import IGNORE_INDEX
    from utils.losses import causal_lm_loss, sequence_logprobs
    from utils.models import (forward_arguments, labelled_logits, lm_logits, load_causal_lm, load_tokenizer,
                              model_inputs)

    folder = family_dirs[family]
    tok = load_tokenizer(str(folder))
    model = load_causal_lm(str(folder), tok, disable_dropout_=True).eval()
    rows = [tok(PROMPT + "fox red owl")["input_ids"], tok(PROMPT + "owl")["input_ids"] + [tok.eos_token_id] * 3]
    T = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_token_id] * (T - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows])
    labels = ids.clone()
    labels[0, :T - 4] = IGNORE_INDEX      # answers start 4 and 6 tokens before the end
    labels[1, :T - 6] = IGNORE_INDEX
    labels[mask == 0] = IGNORE_INDEX
    head_rows = []
    model.get_output_embeddings().register_forward_hook(lambda m, i, o: head_rows.append(i[0].shape[1]))
    with torch.no_grad():
        full = model(**model_inputs(model, ids, mask)).logits
        logits, kept = labelled_logits(model, ids, mask, labels)
        assert kept.shape[1] == logits.shape[1] == 7 and torch.equal(kept, labels[:, -7:])
        if "logits_to_keep" in forward_arguments(type(model)):
            assert head_rows == [T, 7]
        torch.testing.assert_close(logits, full[:, -7:], atol=1e-6, rtol=0)
        # sums over fewer padded zeros: the same to float32 rounding of a ~30-magnitude total
        for a, b in zip(causal_lm_loss(logits, kept), causal_lm_loss(full, labels)):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(sequence_logprobs(logits, kept), sequence_logprobs(full, labels), atol=1e-6,
                                   rtol=1e-6)
        assert torch.equal(lm_logits(model, ids, mask), full)
        # step 3: left-padded prompts, answers from position P = T - 6
        from training.step3_rlhf.sampler import forward_logprobs
        from utils.losses import token_logprobs

        _, lp = forward_logprobs(model, ids, mask, T - 7)
        whole = token_logprobs(full, ids)
        assert lp.shape == whole.shape and not lp[:, :T - 7].any()
        torch.testing.assert_close(lp[:, T - 7:], whole[:, T - 7:], atol=1e-6, rtol=0)
