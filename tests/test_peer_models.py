"""Model-side flags of DeepSpeed-Chat and its fork: dropout values, head dropout, end-of-answer
token, LoRA learning rate."""
from __future__ import annotations

import torch

from utils.models import load_causal_lm, load_reward_model, load_tokenizer
from utils.engines import optimizer_groups


def test_dropout_value_reaches_modules_and_config(tiny_dir, tokenizer):
    model = load_causal_lm(str(tiny_dir), tokenizer, dropout=0.3)
    # the attention layers hold their own float copy of the probability, which they apply in training
    assert model.config.attention_dropout == 0.3 and model.model.layers[0].self_attn.attention_dropout == 0.3
    off = load_causal_lm(str(tiny_dir), tokenizer, dropout=0.3, disable_dropout_=True)
    assert off.config.attention_dropout == 0 and off.model.layers[0].self_attn.attention_dropout == 0
    ids = torch.tensor([tokenizer("User: hi\nAssistant: hello")["input_ids"]])
    off.train()
    torch.testing.assert_close(off(input_ids=ids).logits, off.eval()(input_ids=ids).logits, atol=0, rtol=0)


def test_head_dropout_acts_in_training_only_and_keeps_stock_layout(tiny_dir, tokenizer, tmp_path):
    from transformers import AutoModelForSequenceClassification

    ids = torch.tensor([tokenizer("User: hi\nAssistant: hello")["input_ids"]])
    plain = load_reward_model(str(tiny_dir), tokenizer)
    model = load_reward_model(str(tiny_dir), tokenizer, head_dropout=0.5)
    assert model.state_dict().keys() == plain.state_dict().keys()
    model.eval()
    plain.eval()
    assert torch.equal(model(input_ids=ids).logits, plain(input_ids=ids).logits)
    model.train()
    torch.manual_seed(0)
    a = model(input_ids=ids).logits
    b = model(input_ids=ids).logits
    assert not torch.equal(a, b)
    model.save_pretrained(tmp_path / "rm")
    stock = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    assert torch.allclose(stock(input_ids=ids).logits, plain(input_ids=ids).logits, atol=1e-6)


def test_eot_token_becomes_the_eos_and_embeddings_grow(tiny_dir):
    tok = load_tokenizer(str(tiny_dir), eot_token="<|endoftext|>")
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == eot == len(tok) - 1
    assert tok("hi <|endoftext|>", add_special_tokens=False)["input_ids"][-1] == eot
    model = load_causal_lm(str(tiny_dir), tok, resize_embeddings=True)
    assert model.get_input_embeddings().num_embeddings == len(tok)
    assert model.config.eos_token_id == eot and model.generation_config.eos_token_id == eot


def test_lora_learning_rate_gets_its_own_groups(tiny_dir, tokenizer):
    from utils.models import apply_lora

    model = apply_lora(load_causal_lm(str(tiny_dir), tokenizer), rank=4, alpha=None, module_filter="layers.",
                       only_optimize_lora=False)
    groups = optimizer_groups(model, weight_decay=0.1, lora_lr=5e-4)
    lora = [g for g in groups if g.get("lr") == 5e-4]
    assert len(lora) == 1 and lora[0]["weight_decay"] == 0.1
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("lora_" in names[id(p)] for p in lora[0]["params"])
    others = [p for g in groups if "lr" not in g for p in g["params"]]
    assert others and all("lora_" not in names[id(p)] for p in others)
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())
    assert all("lr" not in g for g in optimizer_groups(model, 0.1))


def test_models_load_directly_in_the_training_dtype(tiny_dir, tokenizer):
    from utils.cli import parse_config
    from utils.config import RewardConfig, SFTConfig
    from utils.models import load_trainable_lm

    for cls, reward in ((SFTConfig, False), (RewardConfig, True)):
        cfg = parse_config(cls, ["--model_name_or_path", str(tiny_dir), "--data_path", "d", "--output_dir", "o",
                                 "--dtype", "bf16"])
        model = load_trainable_lm(cfg, tokenizer, {"zero_optimization": {"stage": 0}}, reward=reward)
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert load_causal_lm(str(tiny_dir), tokenizer).dtype == torch.float32
