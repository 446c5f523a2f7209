"""Build a tiny Llama-style causal LM and a sentencepiece tokenizer offline.

Used by the demo and the tests so nothing needs a hub download. The result is an ordinary
HF folder: stock `AutoModelForCausalLM` / `AutoTokenizer` load it.

    python -m devtools.tiny --text corpus.txt --output_dir build/tiny-llama
    python -m devtools.tiny --family gpt2 --text corpus.txt --output_dir build/tiny-gpt2   # tiny_families.py
"""
from __future__ import annotations

import argparse
import io
import os
import tempfile
from functools import partial
from pathlib import Path

from devtools.tiny_families import CHAT_TEMPLATE, FAMILIES, build_family


def build_tokenizer(texts: list[str], output_dir: str | Path, vocab_size: int = 512):
    """Train a byte-fallback BPE sentencepiece model on `texts`; save an HF tokenizer folder.

    Special ids: 0 <unk>, 1 <s>, 2 </s>, 3 <pad> (pad distinct from EOS, so padding never
    hides an end-of-answer token).
    """
    import sentencepiece as spm
    from transformers import LlamaTokenizerFast

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        pad_piece="<pad>",
        split_digits=True,
        add_dummy_prefix=False,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        minloglevel=2,
        num_threads=1,
        hard_vocab_limit=False,  # small corpora: up to vocab_size pieces, not exactly
    )
    with tempfile.TemporaryDirectory() as tmp:
        sp_path = os.path.join(tmp, "tokenizer.model")
        with open(sp_path, "wb") as f:
            f.write(model.getvalue())
        tok = LlamaTokenizerFast(
            vocab_file=sp_path, from_slow=True, legacy=False, add_prefix_space=False,
            pad_token="<pad>", add_bos_token=True, add_eos_token=False, padding_side="right",
        )
        tok.init_kwargs.pop("from_slow", None)
        tok.chat_template = CHAT_TEMPLATE
        tok.padding_side = "right"
        tok.save_pretrained(output_dir)  # copies tokenizer.model too, so the slow class loads
    return tok


def build_model(tokenizer, output_dir: str | Path, *, hidden_size: int = 64, layers: int = 2,
                heads: int = 4, max_position: int = 4096, seed: int = 0):
    """A randomly initialised Llama sized for CPU tests; saved with safetensors. Rotary positions
    cost no weights, so `max_position` is as long as the peers' scripts ask for (their
    --max_seq_len 2048, prompt 768 + answer 256), which the steps check against it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_position,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        attention_dropout=0.0,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(output_dir, safe_serialization=True)
    return model


def build_tiny(texts: list[str], output_dir: str | Path, *, vocab_size: int = 512, **model_kw) -> Path:
    """Tokenizer + model in one folder; returns the folder."""
    tok = build_tokenizer(texts, output_dir, vocab_size=vocab_size)
    build_model(tok, output_dir, **model_kw)
    return Path(output_dir)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text", required=True, help="UTF-8 text file; each line is a training sentence")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--family", choices=FAMILIES, help="a model family with its tokenizer habits (default: this "
                                                      "module's Llama with a pad token)")
    p.add_argument("--vocab_size", type=int, default=512)
    p.add_argument("--hidden_size", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    texts = [line for line in Path(a.text).read_text(encoding="utf-8").splitlines() if line.strip()]
    build = partial(build_family, a.family) if a.family else build_tiny
    build(texts, a.output_dir, vocab_size=a.vocab_size, hidden_size=a.hidden_size, layers=a.layers, heads=a.heads,
          seed=a.seed)
    print(f"tiny {a.family or 'llama'} model and tokenizer written to {a.output_dir}")


if __name__ == "__main__":
    main()
