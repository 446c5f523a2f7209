"""DeepSpeed config dicts, built by pure functions (no globals, no side effects)."""
from __future__ import annotations

from typing import Any


def _dtype_section(dtype: str) -> dict[str, Any]:
    if dtype == "fp16":
        return {"fp16": {"enabled": True, "loss_scale_window": 100, "initial_scale_power": 16}}
    if dtype == "bf16":
        return {"bf16": {"enabled": True}}
    if dtype == "fp32":
        return {}
    raise ValueError(f"dtype must be fp32, fp16 or bf16, got {dtype!r}")


def train_ds_config(
    *,
    micro_batch_size: int,
    gradient_accumulation_steps: int,
    world_size: int,
    zero_stage: int = 0,
    offload: bool = False,
    dtype: str = "fp32",
    gradient_clipping: float = 1.0,
    steps_per_print: int = 10**9,
) -> dict[str, Any]:
    """Config for a trained model.

    The global batch is micro_batch_size x gradient_accumulation_steps x world_size, written
    out explicitly so DeepSpeed's own consistency check passes on any world size.
    """
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {zero_stage}")
    zero: dict[str, Any] = {"stage": zero_stage}
    if offload:
        if zero_stage == 0:
            raise ValueError("offload needs zero_stage >= 1")
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
        if zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    if zero_stage == 3:
        # Gather weights to a full state dict on save (HF export works without zero_to_fp32).
        zero["stage3_gather_16bit_weights_on_model_save"] = True
        zero["stage3_param_persistence_threshold"] = 1e4
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "train_batch_size": micro_batch_size * gradient_accumulation_steps * world_size,
        "zero_optimization": zero,
        # Offload works with any torch optimizer; DeepSpeedCPUAdam is picked on GPUs only.
        "zero_force_ds_cpu_optimizer": False,
        "gradient_clipping": gradient_clipping,
        "steps_per_print": steps_per_print,
        "wall_clock_breakdown": False,
        **_dtype_section(dtype),
    }


def eval_ds_config(
    *, micro_batch_size: int, world_size: int, zero_stage: int = 0, offload: bool = False, dtype: str = "fp32"
) -> dict[str, Any]:
    """Config for a frozen model (reference, reward): no optimizer, ZeRO-3 shards weights only."""
    zero: dict[str, Any] = {"stage": zero_stage if zero_stage == 3 else 0}
    if offload and zero_stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "train_batch_size": micro_batch_size * world_size,
        "gradient_accumulation_steps": 1,
        "zero_optimization": zero,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        **_dtype_section(dtype),
    }


def merge_user_config(base: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    """`user` (a --deepspeed_config JSON) over `base`, recursively: the user's keys win, except the
    value "auto" (HF-style configs), which keeps ours. Returns a new dict; neither input changes."""
    out = dict(base)
    for key, value in user.items():
        if value == "auto":
            continue
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_user_config(out[key], value)
        else:
            out[key] = value
    return out
