"""The final export: an HF folder stock transformers loads (ZeRO-3 gathered, LoRA merged), whole or
not at all.

The export is written into `<folder>/.tmp-export` and fsynced; then the previous export's files
go, `config.json` first, and the new ones move in, `config.json` last. A run killed in between
leaves a folder transformers refuses to load (no config.json), never one that mixes two exports;
`.tmp-export` still holds the whole new one, and `--resume` writes it again. `.exported` lists the
export's files, so the next export (or `--overwrite_output_dir`) removes exactly those.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from .distributed import all_reduce_max, is_main, print_rank0
from .errors import TrainingHalted
from .models import is_lora, lora_scaling, merge_lora_state_dict, zero3_disabled
from .writing import fsync_dir, remove, seal_files, write_together

EXPORTED = ".exported"    # the names of the files the last export wrote


def gather_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Full CPU state dict on rank 0 ({} elsewhere); gathers ZeRO-3 partitions one by one."""
    import deepspeed

    sd: dict[str, torch.Tensor] = {}
    for name, p in module.named_parameters():
        if hasattr(p, "ds_id"):
            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                if is_main():
                    sd[name] = p.detach().cpu().clone()
        elif is_main():
            sd[name] = p.detach().cpu().clone()
    if is_main():
        # Persistent buffers (rarely any) are never partitioned.
        persistent = set(module.state_dict().keys())
        for name, b in module.named_buffers():
            if name in persistent:
                sd[name] = b.detach().cpu().clone()
    return sd


def plain_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Gathered weights with LoRA adapters merged in (rank 0; {} elsewhere)."""
    sd = gather_state_dict(module)
    if is_main() and is_lora(module):
        sd = merge_lora_state_dict(sd, lora_scaling(module))
    return sd


def base_config(module: nn.Module):
    return module.base_model.model.config if is_lora(module) else module.config


def save_hf_model(module: nn.Module, tokenizer, output_dir: str | Path, model_cls=None) -> None:
    """Write an HF folder stock transformers loads: config, safetensors weights, tokenizer.

    `model_cls` (default AutoModelForCausalLM) is instantiated on the meta device from the
    config and filled with the gathered weights, so nothing is allocated twice.
    """
    from transformers import AutoModelForCausalLM

    model_cls = model_cls or AutoModelForCausalLM
    sd = plain_state_dict(module)
    bad = [n for n, t in sd.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if all_reduce_max(float(bool(bad))):   # sd is rank 0's: every rank halts with it
        raise TrainingHalted(f"export to {output_dir}: {len(bad)} weight tensor(s) not finite (first: "
                             f"{bad[0] if bad else 'on rank 0'}); nothing written")
    out = Path(output_dir)

    def write():
        with zero3_disabled():
            _export(sd, module, tokenizer, out, model_cls)

    write_together(f"export to {out}", out / ".tmp-export", write, every_rank=False)
    print_rank0(f"[save] model and tokenizer written to {out}")


def _export(sd: dict, module: nn.Module, tokenizer, out: Path, model_cls) -> None:
    tmp = out / ".tmp-export"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    config = base_config(module)
    with torch.device("meta"):
        model = model_cls.from_config(config)
    dtype = next(iter(sd.values())).dtype
    model.load_state_dict(sd, strict=False, assign=True)
    model.tie_weights()
    left = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if left:
        raise ValueError(f"export: weights missing from the trained model: {left[:5]}")
    model.config.dtype = dtype
    gen = getattr(module, "generation_config", None)
    if gen is not None and hasattr(model, "generation_config"):
        model.generation_config = gen
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    seal_files(tmp)
    _commit(tmp, out)


def _commit(tmp: Path, out: Path) -> None:
    """Replace the export in `out` by the one in `tmp`: config.json leaves first and comes back last."""
    names = sorted(p.name for p in tmp.iterdir())
    for name in ["config.json", *previous_export(out)]:
        remove(out / name)
    for name in names:
        if name != "config.json":
            remove(out / name)
            os.replace(tmp / name, out / name)
    listing = out / f"{EXPORTED}.tmp"
    listing.write_text(json.dumps(names))
    os.replace(listing, out / EXPORTED)
    os.replace(tmp / "config.json", out / "config.json")
    tmp.rmdir()
    fsync_dir(out)


def previous_export(out: Path) -> list[str]:
    """The files the last export into `out` wrote ([] when it has none, or it predates `.exported`)."""
    try:
        return [n for n in json.loads((out / EXPORTED).read_text()) if "/" not in n and n not in ("", ".", "..")]
    except (FileNotFoundError, ValueError):
        return []
