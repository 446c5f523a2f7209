"""Tokenizer and model loading, dropout control, LoRA through peft."""
from __future__ import annotations

import functools
import inspect
import warnings
from contextlib import contextmanager

import torch
from torch import nn

from . import masks
from .distributed import print_rank0
from .errors import ConfigError
from .losses import IGNORE_INDEX

masks.install()  # every forward of an sdpa model with padding builds its mask directly (utils/masks.py)


@contextmanager
def loading(what: str, path: str):
    """A model or tokenizer that cannot be loaded is a one-line `ConfigError` naming it: a missing
    or broken folder, or a folder with its own Python code (auto_map) when --trust_remote_code is
    not given (transformers refuses before running any of it)."""
    try:
        yield
    except OSError as e:
        raise ConfigError(f"cannot load {what} {path!r}: {str(e).splitlines()[0]}") from None
    except ValueError as e:
        if "trust_remote_code" not in str(e):
            raise
        raise ConfigError(f"cannot load {what} {path!r}: it ships its own Python code (auto_map in its config), "
                          f"which was not run; pass --trust_remote_code only if you trust that code") from None


def position_limit(config) -> tuple[str, int] | None:
    """(the config field, the most positions the model was built for), when its config says."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if name in getattr(config, "attribute_map", {}):
            continue   # an alias (GPT-2's max_position_embeddings): name the field its config.json has
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return name, value
    return None


def check_positions(model: nn.Module, length: int, flags: str, path: str) -> None:
    """Refuse (`ConfigError`) sequences of `length` tokens (set by `flags`) longer than the model's
    positions: learned position tables index past their end (an IndexError on CPU, a device-side
    assert on GPU), rotary models run on positions they never saw."""
    config = unwrap(model).config
    limit = position_limit(getattr(config, "text_config", None) or config)
    if limit is not None and length > limit[1]:
        raise ConfigError(f"{flags} {length} is longer than {path!r} can place ({limit[0]} {limit[1]} in its "
                          f"config); lower it to at most {limit[1]}")


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool = False, padding_side: str = "right",
                   eot_token: str | None = None):
    """AutoTokenizer with a pad token; with `eot_token`, that token is added as a special token and
    becomes the EOS, so every answer ends with it and generation stops at it (DeepSpeed-Chat's
    --add_eot_token).

    When the tokenizer has none, the EOS token pads (and the model config is told the same
    id by `load_causal_lm`); our collators mark padding by length, never by token id, so an
    EOS that ends an answer is still trained on.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if eot_token and tok.eos_token != eot_token:
        old_eos = tok.eos_token
        tok.add_special_tokens({"eos_token": eot_token})
        if tok.pad_token is None and old_eos is not None:
            tok.pad_token = old_eos
        print_rank0(f"[models] {name_or_path}: {eot_token!r} is the end-of-answer token (EOS)")
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise ValueError(f"{name_or_path}: tokenizer has neither a pad nor an EOS token")
        tok.pad_token = tok.eos_token
        print_rank0(f"[models] {name_or_path}: no pad token, padding with EOS ({tok.eos_token!r})")
    if tok.eos_token_id is None:
        raise ValueError(f"{name_or_path}: tokenizer has no EOS token, so answers cannot end")
    tok.padding_side = padding_side
    return tok


def add_distinct_pad(tokenizer) -> bool:
    """Give a tokenizer without a pad token, or whose pad is its EOS, a pad token of its own
    (returns True when the vocabulary grew). Needed where stock transformers pools: a
    `*ForSequenceClassification` reads the last token that is not the pad, so a pad equal to EOS
    makes it skip the EOS where a reward model's score is read."""
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return False
    before = len(tokenizer)
    tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    return len(tokenizer) > before


def reward_tokenizer_for_export(tokenizer):
    """A copy of `tokenizer` that appends EOS to every encoding, saved with a reward model so that
    stock `tokenizer(prompt + answer)` gives the ids it was trained on (`reward_model_ids`). None
    when this tokenizer cannot be made to (the caller says so in one line)."""
    import copy
    import json

    from tokenizers import Tokenizer

    tok = copy.deepcopy(tokenizer)
    # right padding: left-padded stock batches get positions counted over the padding, other scores
    tok.padding_side = tok.init_kwargs["padding_side"] = "right"
    probe = "User: hi\nAssistant: hello"
    want = tokenizer(probe)["input_ids"]
    want = want if want and want[-1] == tokenizer.eos_token_id else want + [tokenizer.eos_token_id]
    if hasattr(tok, "update_post_processor") and hasattr(tok, "add_eos_token"):
        tok.add_eos_token = True          # llama-style classes rebuild their post-processor from this flag
    elif getattr(tok, "is_fast", False):
        spec = json.loads(tok.backend_tokenizer.to_str())
        prefix = [tok.convert_ids_to_tokens(i) for i in tokenizer("")["input_ids"]]
        template = {"type": "TemplateProcessing",
                    "single": [{"SpecialToken": {"id": t, "type_id": 0}} for t in prefix]
                    + [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": tok.eos_token, "type_id": 0}}],
                    "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}},
                             {"SpecialToken": {"id": tok.eos_token, "type_id": 1}}],
                    "special_tokens": {t: {"id": t, "ids": [tok.convert_tokens_to_ids(t)], "tokens": [t]}
                                       for t in {*prefix, tok.eos_token}}}
        pp = spec.get("post_processor")
        if pp is None or pp["type"] == "TemplateProcessing":
            spec["post_processor"] = template
        elif pp["type"] == "Sequence":
            pp["processors"] = [p for p in pp["processors"] if p["type"] != "TemplateProcessing"] + [template]
        else:
            spec["post_processor"] = {"type": "Sequence", "processors": [pp, template]}
        tok._tokenizer = Tokenizer.from_str(json.dumps(spec))
    return tok if tok(probe)["input_ids"] == want else None


DROPOUT_KEYS = ("dropout", "attention_dropout", "hidden_dropout", "attn_pdrop", "resid_pdrop", "embd_pdrop",
                "hidden_dropout_prob", "attention_probs_dropout_prob", "activation_dropout", "layerdrop",
                "summary_first_dropout")


def set_dropout(model: nn.Module, p: float) -> None:
    """Every dropout probability of the model = p: nn.Dropout modules, the plain float
    probabilities many attention and decoder layers copy from the config at construction (llama's
    `attention_dropout`, opt's `dropout`; changing the config alone leaves those on), and the
    config, so a saved model keeps it."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = p
        for key in DROPOUT_KEYS:
            if isinstance(m.__dict__.get(key), float):
                setattr(m, key, p)
    for key in DROPOUT_KEYS:
        if hasattr(model.config, key) and isinstance(getattr(model.config, key), float):
            setattr(model.config, key, p)


def disable_dropout(model: nn.Module) -> None:
    set_dropout(model, 0.0)


TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def load_causal_lm(name_or_path: str, tokenizer, *, trust_remote_code: bool = False,
                   disable_dropout_: bool = False, gradient_checkpointing: bool = False,
                   dtype: torch.dtype | None = None, dropout: float | None = None,
                   resize_embeddings: bool = False) -> nn.Module:
    """AutoModelForCausalLM whose config agrees with the tokenizer on pad/EOS ids, loaded in
    `dtype` (default fp32) directly, never materialised in fp32 first.

    Under ZeRO-3 call this while an `HfDeepSpeedConfig` is alive, on every rank, so the
    weights are partitioned at load time.
    """
    from transformers import AutoModelForCausalLM

    with loading("model", name_or_path):
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, trust_remote_code=trust_remote_code, dtype=dtype or torch.float32
        )
    return _prepare(model, tokenizer, disable_dropout_, gradient_checkpointing, dropout, resize_embeddings)


def _prepare(model: nn.Module, tokenizer, disable_dropout_: bool, gradient_checkpointing: bool,
             dropout: float | None = None, resize_embeddings: bool = False) -> nn.Module:
    """What every loaded model gets: embeddings covering the tokenizer (resized only when asked,
    for an added end-of-answer token), pad/EOS ids agreeing with the tokenizer, dropout and
    activation checkpointing as asked."""
    if resize_embeddings and len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    _align_special_ids(model, tokenizer)
    if dropout is not None:
        set_dropout(model, dropout)
    if disable_dropout_:
        disable_dropout(model)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model


def stop_ids(model, tokenizer) -> tuple[int, ...]:
    """Every id that ends an answer: the tokenizer's EOS first, then each of the list of EOS ids the
    model's generation config or config declares (Llama-3.1: 128001, 128008, 128009;
    Qwen2.5-Instruct: 151645, 151643). A single declared EOS that is not the tokenizer's is the one
    the tokenizer replaced (--add_eot_token), so it no longer ends answers."""
    ids = [tokenizer.eos_token_id]
    for holder in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        declared = getattr(holder, "eos_token_id", None)
        if isinstance(declared, (list, tuple)):
            ids += declared
    return tuple(dict.fromkeys(i for i in ids if i is not None))


def _align_special_ids(model: nn.Module, tokenizer) -> None:
    """pad and EOS as the tokenizer has them; the other stop ids the model declares stay (after the
    tokenizer's EOS), so a model with several (Llama-3.1, Qwen2.5-Instruct) still stops at each."""
    ids = stop_ids(model, tokenizer)
    eos = list(ids) if len(ids) > 1 else ids[0]
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = eos
    gc = getattr(model, "generation_config", None)
    if gc is not None:
        gc.pad_token_id = tokenizer.pad_token_id
        gc.eos_token_id = eos
    emb = model.get_input_embeddings()
    rows = emb.weight.shape[0] if emb.weight.dim() == 2 and emb.weight.numel() else model.config.vocab_size
    if len(tokenizer) > rows:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the model's embedding has {rows} rows")


def lora_target_modules(model: nn.Module, name_filter: str) -> list[str]:
    """Qualified names of the nn.Linear modules that LoRA wraps (lm_head never)."""
    names = [n for n, m in model.named_modules()
             if isinstance(m, nn.Linear) and name_filter in n and not n.endswith("lm_head")]
    if not names:
        raise ValueError(f"--lora_module_name {name_filter!r} matches no nn.Linear in the model")
    return names


def apply_lora(model: nn.Module, *, rank: int, alpha: float | None, module_filter: str,
               only_optimize_lora: bool) -> nn.Module:
    """Wrap matching linears with LoRA adapters (peft). Without `only_optimize_lora` the base
    weights keep training too, as in DeepSpeed-Chat."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, lora_dropout=0.0,
                        target_modules=lora_target_modules(model, module_filter), bias="none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(model, config)
    if not only_optimize_lora:
        for name, p in model.named_parameters():
            if "lora_" not in name:
                p.requires_grad_(True)
    if getattr(model, "is_gradient_checkpointing", False) or getattr(
            model.base_model.model, "is_gradient_checkpointing", False):
        model.enable_input_require_grads()
    return model


def is_lora(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")


def merge_lora_state_dict(state: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """peft state dict -> plain model state dict with W' = W + scaling * B @ A.

    Works on gathered tensors, so any ZeRO stage exports the same merged weights.
    Keys: `base_model.model.<m>.base_layer.weight`, `...<m>.lora_A.default.weight` [r, in],
    `...<m>.lora_B.default.weight` [out, r] -> `<m>.weight`.
    """
    prefix = "base_model.model."
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".lora_A." in key or ".lora_B." in key:
            continue
        plain = key[len(prefix):] if key.startswith(prefix) else key
        if ".base_layer." in plain:
            module = key.split(".base_layer.")[0]
            plain = plain.replace(".base_layer.", ".")
            if plain.endswith(".weight"):
                a = state[f"{module}.lora_A.default.weight"].float()
                b = state[f"{module}.lora_B.default.weight"].float()
                value = (value.float() + scaling * (b @ a)).to(value.dtype)
        out[plain] = value
    return out


def lora_scaling(model: nn.Module) -> float:
    cfg = model.peft_config["default"]
    return cfg.lora_alpha / cfg.r


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total), counting ZeRO-3 partitioned parameters at full size."""
    def numel(p):
        return getattr(p, "ds_numel", p.numel())
    params = list(model.parameters())
    return sum(numel(p) for p in params if p.requires_grad), sum(numel(p) for p in params)


_ZERO3_CONTEXT: list = []  # keeps HfDeepSpeedConfig alive: transformers reads it at load time


def zero3_init_context(ds_config: dict) -> None:
    """Make the next `from_pretrained` calls partition weights across ranks (ZeRO-3)."""
    from transformers.integrations import HfDeepSpeedConfig

    _ZERO3_CONTEXT.clear()
    if ds_config["zero_optimization"]["stage"] == 3:
        _ZERO3_CONTEXT.append(HfDeepSpeedConfig(ds_config))


@contextmanager
def zero3_disabled():
    """Plain (unpartitioned) model construction inside, even while ZeRO-3 training runs:
    rank 0 alone builds the export model, so no collective may happen there."""
    from transformers.integrations import deepspeed as hf_ds

    saved = hf_ds._hf_deepspeed_config_weak_ref
    hf_ds._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = saved


def load_trainable_lm(cfg, tokenizer, ds_config: dict, path: str | None = None, reward: bool = False,
                      resize: bool = False) -> nn.Module:
    """The trained model of a step (a causal LM, or with `reward` a scalar-head model):
    ZeRO-3 aware load in the training dtype (DeepSpeed keeps its own fp32 master weights for
    bf16/fp16), dropout, gradient checkpointing, LoRA."""
    path = path or cfg.model_name_or_path
    zero3_init_context(ds_config)
    extra = {"head_dropout": getattr(cfg, "head_dropout", 0.0)} if reward else {}
    loader = load_reward_model if reward else load_causal_lm
    model = loader(path, tokenizer, trust_remote_code=cfg.trust_remote_code,
                   disable_dropout_=cfg.disable_dropout, gradient_checkpointing=cfg.gradient_checkpointing,
                   dropout=cfg.dropout, resize_embeddings=cfg.add_eot_token or resize,
                   dtype=TORCH_DTYPES[cfg.dtype], **extra)
    if cfg.lora_dim > 0:
        try:
            model = apply_lora(model, rank=cfg.lora_dim, alpha=cfg.lora_alpha,
                               module_filter=cfg.lora_module_name, only_optimize_lora=cfg.only_optimize_lora)
        except ValueError as e:
            raise ConfigError(str(e))
        if reward:  # the new scalar head always trains
            for name, p in model.named_parameters():
                if ".score." in name or ".classifier." in name:
                    p.requires_grad_(True)
    return model


def load_tokenizer_for(cfg, path: str | None = None, padding_side: str = "right") -> object:
    """The step's tokenizer (--tokenizer_name_or_path, else `path`, else the model's) with
    --chat_template when given; a missing or broken one is a one-line ConfigError."""
    path = getattr(cfg, "tokenizer_name_or_path", None) or path or cfg.model_name_or_path
    try:
        with loading("tokenizer", path):
            tokenizer = load_tokenizer(path, trust_remote_code=cfg.trust_remote_code, padding_side=padding_side,
                                       eot_token=cfg.eot_token if cfg.add_eot_token else None)
    except ValueError as e:
        raise ConfigError(f"cannot load tokenizer {path!r}: {str(e).splitlines()[0]}")
    if getattr(cfg, "chat_template", None):
        tokenizer.chat_template = cfg.chat_template
    return tokenizer


# -- reward model / critic ---------------------------------------------------------------------
def load_reward_model(name_or_path: str, tokenizer, *, trust_remote_code: bool = False,
                      disable_dropout_: bool = False, gradient_checkpointing: bool = False,
                      dropout: float | None = None, resize_embeddings: bool = False,
                      head_dropout: float = 0.0, dtype: torch.dtype | None = None) -> nn.Module:
    """AutoModelForSequenceClassification with one output: a causal-LM backbone plus a scalar
    head (`score`), newly initialised when starting from a causal LM. Saved with
    `save_hf_model(..., model_cls=AutoModelForSequenceClassification)` it reloads in stock
    transformers and gives the same scores."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    with warnings.catch_warnings(), loading("model", name_or_path):
        warnings.simplefilter("ignore")
        model = AutoModelForSequenceClassification.from_pretrained(
            name_or_path, num_labels=1, trust_remote_code=trust_remote_code, dtype=dtype or torch.float32)
        archs = getattr(AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code),
                        "architectures", None) or []
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        init_value_head(model)
    if head_dropout:
        add_head_dropout(model, head_dropout)
    return _prepare(model, tokenizer, disable_dropout_, gradient_checkpointing, dropout, resize_embeddings)


def add_head_dropout(model: nn.Module, p: float) -> None:
    """Dropout on the hidden state entering the scalar head, in training mode only. A hook, not a
    new module, so the saved weights keep the stock `score` layout and reload in transformers."""
    def hook(module, args):
        return (torch.nn.functional.dropout(args[0], p, module.training),)
    value_head(model).register_forward_pre_hook(hook)


def value_head(model: nn.Module) -> nn.Linear:
    m = unwrap(model)
    return getattr(m, "score", None) or getattr(m, "classifier")


def init_value_head(model: nn.Module, seed: int = 0) -> None:
    """N(0, initializer_range) weights (transformers' own choice), zero bias, from a fixed
    seed, on every ZeRO stage.

    Done here rather than by transformers because under ZeRO-3 its initialisation of the new
    head is skipped: the head was seen holding uninitialised memory (std ~1e28). A smaller
    std (1/(hidden+1)) was tried and learned markedly slower (demo RM 0.825 vs 0.98)."""
    import deepspeed

    head = value_head(model)
    params = [p for p in (head.weight, head.bias) if p is not None]
    with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
        g = torch.Generator().manual_seed(seed)
        std = getattr(unwrap(model).config, "initializer_range", 0.02)
        w = torch.randn(head.weight.shape, generator=g) * std
        with torch.no_grad():
            head.weight.copy_(w.to(head.weight.dtype))
            if head.bias is not None:
                head.bias.zero_()


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model under a DeepSpeed engine and/or a peft wrapper."""
    model = getattr(model, "module", model)
    return model.get_base_model() if is_lora(model) else model


def token_values(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The scalar head applied at every position: [B, T] ids -> [B, T] float values.

    Runs the model's own forward (through the DeepSpeed engine when given one, so its hooks run)
    and takes the head's per-position output on its way to stock pooling: every
    `*ForSequenceClassification` of a causal LM applies its head to the final hidden state
    before picking the last token, so no other layer's activations are kept. The reward is the
    value at the last token (`end_scores`); a critic uses every position.
    """
    captured = []
    handle = value_head(model).register_forward_hook(lambda module, args, out: captured.append(out))
    try:
        model(**model_inputs(model, input_ids, attention_mask))
    finally:
        handle.remove()
    return captured[-1].squeeze(-1).float()


def model_inputs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 packed_positions: torch.Tensor | None = None) -> dict:
    """Forward arguments for a teacher-forced pass: ids, mask, and the position ids counted over
    real tokens and no KV cache where the model's forward takes them (falcon's sequence
    classifier takes no position ids). `packed_positions` (a padding-free row, collate_packed):
    those position ids and no mask, which is how transformers recognises packed sequences."""
    out = {"input_ids": input_ids, "attention_mask": attention_mask}
    takes = forward_arguments(type(unwrap(model)))
    if packed_positions is not None:
        if "position_ids" not in takes:
            raise ValueError(f"{type(unwrap(model)).__name__} takes no position ids: it cannot read packed rows")
        out.update(attention_mask=None, position_ids=packed_positions)
    elif "position_ids" in takes:
        out["position_ids"] = position_ids(attention_mask)
    if "use_cache" in takes:
        out["use_cache"] = False
    return out


def lm_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: int = 0,
              packed_positions: torch.Tensor | None = None) -> torch.Tensor:
    """[B, K, V] next-token logits of the last `keep` positions of [B, T] inputs (all T when 0).
    With real vocabularies the LM head is the largest matmul and activation of a short-answer
    batch, so it runs only on the kept positions when the model's forward takes transformers'
    `logits_to_keep`; a family without it computes every position and is sliced (same values)."""
    kwargs = model_inputs(model, input_ids, attention_mask, packed_positions)
    if keep and "logits_to_keep" in forward_arguments(type(unwrap(model))):
        kwargs["logits_to_keep"] = keep
    logits = model(**kwargs).logits
    return logits[:, -keep:] if keep else logits


def labelled_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    labels: torch.Tensor, packed_positions: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [B, K, V], labels [B, K]): the last K positions, from the one before the batch's
    first labelled token (IGNORE_INDEX elsewhere) to the end. Any causal-LM loss over `labels`
    is the same on this pair as on the whole sequence: position t predicts label t + 1."""
    labelled = (labels != IGNORE_INDEX).any(0)
    first = int(labelled.float().argmax()) if bool(labelled.any()) else 0
    keep = labels.shape[1] - max(first - 1, 0)
    return lm_logits(model, input_ids, attention_mask, keep, packed_positions), labels[:, -keep:]


@torch.no_grad()
def separates_packed_sequences(model: nn.Module, device) -> bool:
    """Whether `model` (an engine too) reads position-id restarts in a row without a mask as
    sequence boundaries: two short sequences packed give the logits they give one by one. True
    for the families on transformers' masking utilities (llama, mistral, qwen2, gemma, phi3,
    gpt2, gpt_neox in 4.57), false where packed tokens attend across (opt, gptj, falcon, gpt_neo,
    bloom). Every rank must call it (a ZeRO-3 forward is collective)."""
    if "position_ids" not in forward_arguments(type(unwrap(model))):
        return False
    a = torch.tensor([[5, 6, 7, 8, 9]], device=device)
    b = torch.tensor([[10, 11, 12]], device=device)
    module = unwrap(model)
    was_training = module.training
    module.eval()
    try:
        one = torch.cat([lm_logits(model, x, torch.ones_like(x)) for x in (a, b)], 1)
        packed = lm_logits(model, torch.cat([a, b], 1), None,
                           packed_positions=torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2]], device=device))
    finally:
        module.train(was_training)
    return bool(torch.allclose(one.float(), packed.float(), atol=1e-3, rtol=1e-3))


@functools.lru_cache(maxsize=None)
def forward_arguments(cls: type) -> frozenset[str]:
    """Names a model class's forward declares (not those it would swallow through **kwargs)."""
    return frozenset(inspect.signature(cls.forward).parameters)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so a left-padded sequence is scored exactly
    like the same tokens without padding. [B, T] -> [B, T]."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def end_scores(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] per-token values -> [B] value at the last real token (any padding side)."""
    pos = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (attention_mask.long() * pos).argmax(-1)
    return values.gather(1, last.unsqueeze(1)).squeeze(1)
