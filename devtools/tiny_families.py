"""Build a tiny random causal LM of one of twelve model families, with its tokenizer, offline.

`devtools/tiny.py` builds one tiny Llama. Code that must work across model families (special-token
habits, padding, BOS handling, dropout defaults) needs the other families too, and the tests
cannot download them. Each family here gets a model from its own transformers config class and
a tokenizer trained on the given texts with that family's real special-token habits (which
tokens exist, their ids, whether BOS is prepended, whether pad is EOS or absent). The result is
an ordinary HF folder that stock `AutoModelForCausalLM` / `AutoTokenizer` load offline.

    python -m devtools.tiny --family gpt2 --text corpus.txt --output_dir build/tiny-gpt2
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# One chat template for the tiny tokenizer, matching the seed SFT prompt style
# ("User: ...\nAssistant: "), so chat data and instruction data render alike.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token + '\n' }}"
    "{% elif message['role'] == 'system' %}{{ 'System: ' + message['content'] + '\n' }}"
    "{% else %}{{ 'User: ' + message['content'] + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
)

MAX_POSITIONS = 256
# Both tokenizer kinds hold all 256 bytes (byte-level symbols or sentencepiece byte fallback)
# before any merge; a requested `vocab_size` is raised to leave at least this many merges, so
# a small one still trains (the default 400 is enough for short ASCII corpora).
MIN_MERGES = 64
# Sentencepiece role of each control piece the sentencepiece families use.
_SP_ROLES = {"<unk>": "unk", "<s>": "bos", "</s>": "eos", "<bos>": "bos", "<eos>": "eos", "<pad>": "pad"}

Sizes = Callable[[int, int, int], dict]  # (hidden, layers, heads) -> config kwargs


@dataclass(frozen=True)
class Family:
    """One family's habits: model config, tokenizer kind and class, special tokens."""

    config: str  # transformers config class name
    sizes: Sizes
    tokenizer: str  # "bpe" (byte-level BPE, `tokenizers`) or "spm" (sentencepiece)
    tokenizer_class: str  # transformers fast tokenizer class name
    specials: tuple[str, ...]  # special tokens trained into the vocabulary, in id order
    eos: str
    bos: str | None = None
    pad: str | None = None
    unk: str | None = None
    prepend_bos: bool = False


def _llama_like(hidden: int, layers: int, heads: int) -> dict:
    return dict(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=heads,
                max_position_embeddings=MAX_POSITIONS)


def _gpt_neo_layers(layers: int) -> list:
    """GPT-Neo alternates global/local attention and insists the pattern covers every layer."""
    return [[["global", "local"], layers // 2]] + ([[["global"], 1]] if layers % 2 else [])


_EOT = "<|endoftext|>"
_GPT2_TOKENS = dict(specials=(_EOT,), bos=_EOT, eos=_EOT, unk=_EOT)
_LLAMA_TOKENS = dict(specials=("<unk>", "<s>", "</s>"), unk="<unk>", bos="<s>", eos="</s>", prepend_bos=True)

FAMILY_SPECS: dict[str, Family] = {
    "gpt2": Family(
        "GPT2Config", lambda h, n, a: dict(n_embd=h, n_layer=n, n_head=a, n_positions=MAX_POSITIONS),
        "bpe", "GPT2TokenizerFast", **_GPT2_TOKENS),
    "opt": Family(
        "OPTConfig",
        lambda h, n, a: dict(hidden_size=h, word_embed_proj_dim=h, ffn_dim=4 * h, num_hidden_layers=n,
                             num_attention_heads=a, max_position_embeddings=MAX_POSITIONS),
        "bpe", "GPT2TokenizerFast", specials=("<s>", "<pad>", "</s>", "<unk>"),
        bos="</s>", eos="</s>", pad="<pad>", unk="<unk>", prepend_bos=True),
    "bloom": Family(
        "BloomConfig", lambda h, n, a: dict(hidden_size=h, n_layer=n, n_head=a),
        "bpe", "BloomTokenizerFast", specials=("<unk>", "<s>", "</s>", "<pad>"),
        unk="<unk>", bos="<s>", eos="</s>", pad="<pad>"),
    "gpt_neox": Family(
        "GPTNeoXConfig",
        lambda h, n, a: dict(hidden_size=h, intermediate_size=4 * h, num_hidden_layers=n,
                             num_attention_heads=a, max_position_embeddings=MAX_POSITIONS),
        "bpe", "GPTNeoXTokenizerFast", **_GPT2_TOKENS),
    "gptj": Family(
        "GPTJConfig",
        lambda h, n, a: dict(n_embd=h, n_layer=n, n_head=a, rotary_dim=h // a, n_positions=MAX_POSITIONS),
        "bpe", "GPT2TokenizerFast", **_GPT2_TOKENS),
    "llama": Family("LlamaConfig", _llama_like, "spm", "LlamaTokenizerFast", **_LLAMA_TOKENS),
    "mistral": Family("MistralConfig", _llama_like, "spm", "LlamaTokenizerFast", **_LLAMA_TOKENS),
    "qwen2": Family("Qwen2Config", _llama_like, "bpe", "Qwen2TokenizerFast",
                    specials=(_EOT,), eos=_EOT, pad=_EOT, unk=_EOT),
    "gemma": Family(
        "GemmaConfig", lambda h, n, a: dict(_llama_like(h, n, a), head_dim=h // a),
        "spm", "GemmaTokenizerFast", specials=("<pad>", "<eos>", "<bos>", "<unk>"),
        pad="<pad>", eos="<eos>", bos="<bos>", unk="<unk>", prepend_bos=True),
    # Phi-3 keeps Llama's <unk>/<s>/</s> but ends turns with an added <|endoftext|> that is also pad.
    "phi3": Family(
        "Phi3Config", lambda h, n, a: dict(_llama_like(h, n, a), original_max_position_embeddings=MAX_POSITIONS),
        "spm", "LlamaTokenizerFast", **dict(_LLAMA_TOKENS, eos=_EOT), pad=_EOT),
    "falcon": Family(
        "FalconConfig",
        lambda h, n, a: dict(hidden_size=h, num_hidden_layers=n, num_attention_heads=a,
                             new_decoder_architecture=False, alibi=False,
                             max_position_embeddings=MAX_POSITIONS),
        "bpe", "PreTrainedTokenizerFast", specials=(_EOT,), bos=_EOT, eos=_EOT),
    "gpt_neo": Family(
        "GPTNeoConfig",
        lambda h, n, a: dict(hidden_size=h, num_layers=n, num_heads=a, attention_types=_gpt_neo_layers(n),
                             max_position_embeddings=MAX_POSITIONS),
        "bpe", "GPT2TokenizerFast", **_GPT2_TOKENS),
}
FAMILIES: tuple[str, ...] = tuple(FAMILY_SPECS)


def _special_kwargs(fam: Family) -> dict:
    """bos/eos/pad/unk arguments for the tokenizer class; None where the family has no such token."""
    return dict(bos_token=fam.bos, eos_token=fam.eos, pad_token=fam.pad, unk_token=fam.unk)


def _byte_level_tokenizer(fam: Family, texts: list[str], vocab_size: int, output_dir: Path):
    """Byte-level BPE (GPT-2 style): every string encodes, so round-trips are exact.

    Special tokens take the first ids in `fam.specials` order. Only OPT prepends a token
    (its EOS "</s>" doubles as BOS), done with a template post-processor as in the real one.
    `output_dir` is unused: everything lands in tokenizer.json when the caller saves.
    """
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(fam.specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if fam.prepend_bos:
        bos = (fam.bos, tok.token_to_id(fam.bos))
        tok.post_processor = processors.TemplateProcessing(
            single=f"{fam.bos}:0 $A:0", pair=f"{fam.bos}:0 $A:0 $B:1", special_tokens=[bos])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    cls = getattr(transformers, fam.tokenizer_class)
    # Explicit input names: the generic fast class would also emit token_type_ids, which
    # decoder-only models reject in generate().
    return cls(tokenizer_object=tok, add_bos_token=fam.prepend_bos, add_prefix_space=False,
               clean_up_tokenization_spaces=False, model_input_names=["input_ids", "attention_mask"],
               **_special_kwargs(fam))


def _sentencepiece_tokenizer(fam: Family, texts: list[str], vocab_size: int, output_dir: Path):
    """Sentencepiece BPE with byte fallback, as `devtools/tiny.py` builds it, with the family's pieces.

    Control pieces get the ids of their position in `fam.specials`; a family token that
    sentencepiece has no role for (Phi-3's <|endoftext|>) is added after training, at the end
    of the vocabulary, as in the real tokenizer. The model is written as `tokenizer.model` in
    `output_dir`, so the slow class loads the folder too.
    """
    import sentencepiece as spm
    import transformers

    roles = {f"{role}_id": -1 for role in set(_SP_ROLES.values())}
    for i, piece in enumerate(fam.specials):
        roles[f"{_SP_ROLES[piece]}_id"] = i
        roles[f"{_SP_ROLES[piece]}_piece"] = piece
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, split_digits=True, add_dummy_prefix=False,
        normalization_rule_name="identity", remove_extra_whitespaces=False, minloglevel=2,
        num_threads=1, hard_vocab_limit=False, **roles,
    )
    sp_path = output_dir / "tokenizer.model"
    sp_path.write_bytes(model.getvalue())
    in_model = {k: v if v in fam.specials else None for k, v in _special_kwargs(fam).items()}
    cls = getattr(transformers, fam.tokenizer_class)
    tok = cls(vocab_file=str(sp_path), from_slow=True, legacy=False, add_prefix_space=False,
              add_bos_token=fam.prepend_bos, add_eos_token=False, **in_model)
    # add_prefix_space stays in the saved config, as in devtools/tiny.py: it makes a load re-convert
    # from tokenizer.model exactly as here, and keeps the slow class from adding a leading space.
    tok.init_kwargs.pop("from_slow", None)
    added = {k: v for k, v in _special_kwargs(fam).items() if v is not None and v not in fam.specials}
    tok.add_special_tokens(added)
    return tok


_TOKENIZER_BUILDERS = {"bpe": _byte_level_tokenizer, "spm": _sentencepiece_tokenizer}


def _min_vocab(fam: Family, texts: list[str]) -> int:
    """Bytes + specials + MIN_MERGES; sentencepiece also keeps every character as a piece."""
    chars = len(set().union(*texts)) if fam.tokenizer == "spm" else 0
    return 256 + len(fam.specials) + chars + MIN_MERGES


def build_family_tokenizer(family: str, texts: list[str], output_dir: str | Path, vocab_size: int = 400):
    """Train `family`'s tokenizer on `texts` and save it; `vocab_size` is raised to `_min_vocab` if below.

    It is a target: on a small corpus BPE runs out of merges first, so `len(tokenizer)` can be
    smaller (365 for 1500 short demo lines at the default 400).
    """
    fam = FAMILY_SPECS[family]
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    vocab_size = max(vocab_size, _min_vocab(fam, texts))
    tok = _TOKENIZER_BUILDERS[fam.tokenizer](fam, texts, vocab_size, output_dir)
    tok.chat_template = CHAT_TEMPLATE
    tok.model_max_length = MAX_POSITIONS
    tok.save_pretrained(output_dir)
    return tok


def build_family_model(family: str, tokenizer, *, hidden_size: int = 64, layers: int = 2,
                       heads: int = 4, seed: int = 0):
    """A random model from the family's own config class; dropout left at the class defaults."""
    import torch
    import transformers

    fam = FAMILY_SPECS[family]
    config = getattr(transformers, fam.config)(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **fam.sizes(hidden_size, layers, heads),
    )
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def build_family(family: str, texts: list[str], output_dir: str | Path, *, vocab_size: int = 400,
                 hidden_size: int = 64, layers: int = 2, heads: int = 4, seed: int = 0) -> Path:
    """Tokenizer + model of `family` in one HF folder; returns the folder."""
    if family not in FAMILY_SPECS:
        raise ValueError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    tok = build_family_tokenizer(family, texts, output_dir, vocab_size)
    model = build_family_model(family, tok, hidden_size=hidden_size, layers=layers, heads=heads, seed=seed)
    model.save_pretrained(output_dir, safe_serialization=True)
    return Path(output_dir)
