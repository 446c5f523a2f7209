"""Saving: HF-format export (ZeRO-3 gathered, LoRA merged) and resumable DeepSpeed checkpoints.

Both are written atomically: into a temporary sibling first, renamed into place when
complete, so a crash never leaves a half-written model or a `latest` pointing at one.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from torch import nn

from .distributed import all_reduce_max, barrier, is_main, print_rank0
from .errors import TrainingHalted
from .models import is_lora, lora_scaling, merge_lora_state_dict, zero3_disabled

LATEST = "latest"


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


def _move_into(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        target = dst / item.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(item, target)
    src.rmdir()


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
    if is_main():
        with zero3_disabled():
            _export(sd, module, tokenizer, Path(output_dir), model_cls)
    barrier()


def _export(sd: dict, module: nn.Module, tokenizer, out: Path, model_cls) -> None:
    tmp = out / ".tmp-export"
    if tmp.exists():
        shutil.rmtree(tmp)
    config = base_config(module)
    with torch.device("meta"):
        model = model_cls.from_config(config)
    dtype = next(iter(sd.values())).dtype
    model.load_state_dict(sd, strict=False, assign=True)
    model.tie_weights()
    left = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if left:
        raise RuntimeError(f"export: weights missing from the trained model: {left[:5]}")
    model.config.dtype = dtype
    gen = getattr(module, "generation_config", None)
    if gen is not None and hasattr(model, "generation_config"):
        model.generation_config = gen
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    _move_into(tmp, out)
    print_rank0(f"[save] model and tokenizer written to {out}")


def save_checkpoint(engines: dict, ckpt_dir: str | Path, tag: str, client_state: dict, keep: int) -> None:
    """Save each DeepSpeed engine under ckpt_dir/<tag>/<name>, then point `latest` at it.

    Every rank writes its shards into a hidden temporary tag; rank 0 renames it and rewrites
    `latest` (write + rename) only once all ranks finished.
    """
    ckpt_dir = Path(ckpt_dir)
    tmp = ckpt_dir / f".tmp-{tag}"
    if is_main():
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    barrier()
    for name, engine in engines.items():
        engine.save_checkpoint(str(tmp), tag=name, client_state=client_state, save_latest=False)
    barrier()
    if is_main():
        final = ckpt_dir / tag
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer = ckpt_dir / f".{LATEST}.tmp"
        pointer.write_text(tag)
        os.replace(pointer, ckpt_dir / LATEST)
        tags = sorted((p for p in ckpt_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
                      key=lambda p: p.stat().st_mtime)
        for old in tags[:-keep]:
            shutil.rmtree(old)
        print_rank0(f"[checkpoint] saved {final}")
    barrier()


def latest_tag(ckpt_dir: str | Path) -> str | None:
    p = Path(ckpt_dir) / LATEST
    if not p.is_file():
        return None
    tag = p.read_text().strip()
    return tag if (Path(ckpt_dir) / tag).is_dir() else None


def load_checkpoint(engines: dict, ckpt_dir: str | Path, tag: str) -> dict:
    """Restore every engine (weights, optimizer, scheduler) and return the client state."""
    client = {}
    for name, engine in engines.items():
        path, client = engine.load_checkpoint(str(Path(ckpt_dir) / tag), tag=name)
        if path is None:
            raise RuntimeError(f"checkpoint {ckpt_dir}/{tag}/{name} could not be loaded")
    return client
