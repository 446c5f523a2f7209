"""unbabel-comet models as reward sources.

COMET scores a translation `mt` of a source `src`, against a reference `ref` when the model
is reference-based. In step 3: src = the RLHF file's `input` (else the prompt), mt = the
sampled answer, ref = the file's `output`.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from .. import distributed as dist
from ..errors import ConfigError
from . import RewardSource, source_device


class CometLoadError(ConfigError):
    """A COMET model could not be found or loaded (a user mistake, reported in one line)."""


def checkpoint_file(spec: str) -> Path:
    """`spec` as a local checkpoint: a .ckpt file, or a model folder holding checkpoints/model.ckpt;
    otherwise a model name, downloaded with unbabel-comet's own downloader."""
    p = Path(spec)
    if p.is_file():
        return p
    if p.is_dir():
        ckpt = p / "checkpoints" / "model.ckpt"
        if not ckpt.is_file():
            raise CometLoadError(f"--comet_model_path {spec}: folder has no checkpoints/model.ckpt")
        return ckpt
    # a hub id is "org/name"; anything else that is not on disk is a mistyped local path
    if spec.endswith(".ckpt") or spec.startswith((".", "/", "~")) or spec.count("/") != 1 or p.parent.is_dir():
        raise CometLoadError(f"--comet_model_path {spec}: no such checkpoint file or folder")
    from comet import download_model

    try:
        return Path(download_model(spec, local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1"))
    except Exception as e:  # comet wraps every hub failure in KeyError/OSError; the message says why
        raise CometLoadError(f"--comet_model_path {spec}: not a local checkpoint and not downloadable ({e})")


def load_comet(spec: str, device: torch.device | str = "cpu"):
    """Load a COMET model for inference (eval mode, no grad) on `device`.

    The class comes from the folder's hparams.yaml, as in `comet.load_from_checkpoint`; weights
    load with `weights_only=True`. A relative `pretrained_model` (as written by
    `devtools.tiny_comet`) is resolved against the model folder, so such folders can be moved.
    """
    import yaml
    from comet.models import str2model

    ckpt = checkpoint_file(spec)
    hparams_file = ckpt.parents[1] / "hparams.yaml"
    if not hparams_file.is_file():
        raise CometLoadError(f"--comet_model_path {spec}: {hparams_file} is missing")
    hparams = yaml.safe_load(hparams_file.read_text()) or {}
    cls = str2model.get(hparams.get("class_identifier"))
    if cls is None:
        raise CometLoadError(f"--comet_model_path {spec}: unknown class_identifier "
                             f"{hparams.get('class_identifier')!r} in {hparams_file}")
    overrides = {}
    encoder = hparams.get("pretrained_model")
    local = encoder is not None and (ckpt.parents[1] / encoder).is_dir() and not Path(encoder).is_absolute()
    if local:
        overrides["pretrained_model"] = str((ckpt.parents[1] / encoder).resolve())
    if hparams.get("layer_transformation") == "sparsemax_patch":
        overrides["layer_transformation"] = "softmax"  # as comet's loader does since 2.2.4
    _quiet_lightning()
    try:
        model = cls.load_from_checkpoint(ckpt, map_location="cpu", strict=False, weights_only=True,
                                         load_pretrained_weights=False, local_files_only=local, **overrides)
    except (OSError, RuntimeError, KeyError) as e:
        raise CometLoadError(f"--comet_model_path {spec}: cannot load {ckpt}: {e}")
    return model.to(device).eval().requires_grad_(False)


def _quiet_lightning() -> None:
    for name in ("pytorch_lightning", "lightning", "lightning_fabric", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _to(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(v, device) for v in batch)
    return batch


@torch.no_grad()
def comet_scores(model, samples: list[dict], batch_size: int, device) -> torch.Tensor:
    """[N] segment scores of `samples` ({"src", "mt"[, "ref"]} dicts), in order.

    Runs COMET's own prepare_sample + predict_step in batches, without a Lightning Trainer:
    no progress bars, and no second distributed runtime inside a DeepSpeed job.
    """
    out = []
    for i in range(0, len(samples), batch_size):
        batch = _to(model.prepare_for_inference(samples[i:i + batch_size]), device)
        out.append(model.predict_step(batch)["scores"].float().view(-1).cpu())
    return torch.cat(out) if out else torch.zeros(0)


class RunningMeanStd:
    """Running mean and std of every score seen so far, on all ranks (Chan et al. merge)."""

    def __init__(self):
        self.count, self.mean, self.m2 = 0.0, 0.0, 0.0

    def update(self, x: torch.Tensor) -> None:
        n, s, ss = (dist.all_reduce_sum(float(v)) for v in (x.numel(), x.sum(), (x.double() ** 2).sum()))
        if n == 0:
            return
        b_mean = s / n
        b_m2 = max(ss - n * b_mean ** 2, 0.0)
        total = self.count + n
        delta = b_mean - self.mean
        self.mean += delta * n / total
        self.m2 += b_m2 + delta ** 2 * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return (self.m2 / self.count) ** 0.5 if self.count else 1.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Update with x, then return (x - mean) / (std + 1e-8)."""
        self.update(x)
        return (x - self.mean) / (self.std + 1e-8)

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.mean, self.m2 = state["count"], state["mean"], state["m2"]


class CometSource(RewardSource):
    """One COMET model as a reward source; `raw` keeps the last unnormalised scores for logging."""

    def __init__(self, model, name: str, *, batch_size: int, device, use_reference: bool, normalize: bool,
                 spec: str = ""):
        self.model, self.name, self.spec, self.batch_size, self.device = model, name, spec, batch_size, device
        self.use_reference = use_reference
        self.normalizer = RunningMeanStd() if normalize else None
        self.raw: torch.Tensor | None = None

    def samples(self, batch) -> list[dict]:
        if self.use_reference:
            return [{"src": s, "mt": a, "ref": r} for s, a, r in zip(batch.sources, batch.answers, batch.references)]
        return [{"src": s, "mt": a} for s, a in zip(batch.sources, batch.answers)]

    def __call__(self, batch) -> torch.Tensor:
        self.raw = self.raw_scores(batch)
        return self.normalizer(self.raw) if self.normalizer is not None else self.raw

    def raw_scores(self, batch) -> torch.Tensor:
        """Scores as the model gives them, leaving the running normalisation untouched (evaluation)."""
        return comet_scores(self.model, self.samples(batch), self.batch_size, self.device)

    def state_dict(self) -> dict | None:
        return self.normalizer.state_dict() if self.normalizer is not None else None

    def load_state_dict(self, state: dict | None) -> None:
        if self.normalizer is not None and state is not None:
            self.normalizer.load_state_dict(state)


def build_comet_sources(cfg, references_present: bool) -> list[CometSource]:
    """One CometSource per --comet_model_path, named comet0, comet1, ... (the order of the flag)."""
    sources = []
    for i, spec in enumerate(cfg.comet_model_path):
        devices = cfg.devices_comet_model
        device = source_device(devices[i if len(devices) > 1 else 0] if devices else None, "--devices_comet_model")
        model = load_comet(spec, device)
        use_ref = cfg.comet_model_require_reference or model.requires_references()
        if use_ref and not references_present:
            raise CometLoadError(f"--comet_model_path {spec}: this COMET model needs references, but some "
                                 f"prompts in --data_path have no `output`")
        sources.append(CometSource(model, f"comet{i}", batch_size=cfg.comet_model_batch_size, device=device,
                                   use_reference=use_ref, normalize=cfg.comet_reward_normalization, spec=spec))
    return sources
