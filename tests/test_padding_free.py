"""SFT's --padding_free: one packed row per micro-batch gives the padded batch's loss (a whole run:
tests/test_sft_train.py), and a model whose attention ignores position-id restarts is refused in one line."""
from __future__ import annotations

import torch

from tests.conftest import DEMO_DATA, run_module
from tests.test_sft_train import MODULE, sft_args
from utils.data import IGNORE_INDEX, Example, collate_lm, collate_packed

I = IGNORE_INDEX


def test_collate_packed_exact_tensors():
    b = collate_packed([Example([1, 5, 6, 7], [I, I, 6, 7]), Example([1, 8, 9], [1, 8, 9])])
    assert b.input_ids.tolist() == [[1, 5, 6, 7, 1, 8, 9]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2]]
    # each example's first label goes: the previous example's last token would predict it
    assert b.labels.tolist() == [[I, I, 6, 7, I, 8, 9]]
    assert b.attention_mask.tolist() == [[1] * 7]


def test_packed_loss_equals_padded_loss(tiny_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    from training.step1_sft.main import label_count, sft_loss
    from utils.data import tokenize_records
    from utils.data.readers import read_file

    records = read_file(DEMO_DATA / "sft" / "train.txt")[:6]
    examples, _ = tokenize_records(records, tokenizer, max_len=48)
    examples.append(Example(examples[0].input_ids, list(examples[0].input_ids)))  # a text row: all labelled
    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    padded, packed = collate_lm(examples, tokenizer.pad_token_id), collate_packed(examples)
    assert padded.attention_mask.sum() == packed.input_ids.numel() < padded.input_ids.numel()
    assert label_count(padded) == label_count(packed)
    with torch.no_grad():
        a, b = sft_loss(model, padded), sft_loss(model, packed)
    assert a.count == b.count
    torch.testing.assert_close(b.loss_sum, a.loss_sum, atol=1e-5, rtol=1e-6)


def test_padding_free_refuses_a_model_that_attends_across_examples(sft_data, tmp_path):
    from examples.demo.build_model import corpus
    from devtools.tiny_families import build_family

    opt = build_family("opt", corpus()[:300], tmp_path / "opt", hidden_size=32, layers=2, heads=4)
    out = tmp_path / "never"
    p = run_module(MODULE, sft_args(opt, sft_data, out, "--max_steps", 1, "--padding_free"), check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1] == (
        "error: --padding_free: OPTForCausalLM lets packed examples attend to each other (its attention ignores "
        "position-id restarts); train without it")
    assert not out.exists()
