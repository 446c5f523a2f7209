"""Any Hugging Face sequence classifier as a step-3 reward source (open-chatgpt's and TRL's
sentiment examples): the reward is one label's logit, or its log-probability, for each
`prompt + answer` (or the answer alone), read through the classifier's own tokenizer.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError
from . import RewardInputs, RewardSource, source_device


def resolve_label(label: str, id2label: dict[int, str], where: str) -> int:
    """The index of `label`: an index ("1"), or a label name, exactly or ignoring case."""
    n = len(id2label)
    if label.lstrip("-").isdigit():
        i = int(label)
        if not 0 <= i < n:
            raise ConfigError(f"--reward_classifier_label {label}: {where} has {n} label(s) (0..{n - 1})")
        return i
    names = {str(v): int(k) for k, v in id2label.items()}
    if label in names:
        return names[label]
    folded = [i for name, i in names.items() if name.lower() == label.lower()]
    if len(folded) == 1:
        return folded[0]
    raise ConfigError(f"--reward_classifier_label {label}: not a label of {where} (labels: "
                      f"{', '.join(f'{i}={id2label[i]}' for i in sorted(id2label))})")


def label_scores(logits: torch.Tensor, index: int, kind: str) -> torch.Tensor:
    """[N, L] classifier logits -> [N] the label's logit, or its log-probability (log-softmax)."""
    logits = logits.float()
    return logits[:, index] if kind == "logit" else torch.log_softmax(logits, -1)[:, index]


class ClassifierSource(RewardSource):
    """One sequence classifier with its tokenizer, on its own device, scoring in batches."""

    def __init__(self, model, tokenizer, label: int, *, kind: str, text: str, batch_size: int, device, name: str):
        self.model, self.tokenizer, self.label = model, tokenizer, label
        self.kind, self.text, self.batch_size, self.device, self.name = kind, text, batch_size, device, name

    def texts(self, batch: RewardInputs) -> list[str]:
        if self.text == "answer":
            return list(batch.answers)
        return [p + a for p, a in zip(batch.prompts, batch.answers)]

    @torch.no_grad()
    def __call__(self, batch: RewardInputs) -> torch.Tensor:
        texts, out = self.texts(batch), []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[i:i + self.batch_size], padding=True, truncation=True, return_tensors="pt")
            logits = self.model(**{k: v.to(self.device) for k, v in enc.items()}).logits
            out.append(label_scores(logits, self.label, self.kind).cpu())
        return torch.cat(out)


def load_classifier(path: str, trust_remote_code: bool, device):
    """(model in eval mode on `device`, its tokenizer padding on the right). A tokenizer without a
    pad token pads with EOS, and the model is told so: its last-token pooling then skips padding."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=trust_remote_code,
                                                                   dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise ConfigError(f"--reward_classifier {path}: cannot load a sequence classifier "
                          f"({str(e).splitlines()[0]})")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device).eval(), tokenizer


def build_classifier_sources(cfg) -> list[ClassifierSource]:
    """One source per --reward_classifier, named classifier0, classifier1, ... (the flag's order)."""
    sources = []
    for i, path in enumerate(cfg.reward_classifier):
        pick = (lambda values: values[i if len(values) > 1 else 0] if values else None)
        device = source_device(pick(cfg.devices_reward_classifier), "--devices_reward_classifier")
        model, tokenizer = load_classifier(path, cfg.trust_remote_code, device)
        id2label = {int(k): v for k, v in model.config.id2label.items()}
        label = pick(cfg.reward_classifier_label)
        if label is None:
            if len(id2label) > 1:
                names = ", ".join(id2label[j] for j in sorted(id2label))
                raise ConfigError(f"--reward_classifier {path} has {len(id2label)} labels: name the one to reward "
                                  f"with --reward_classifier_label ({names})")
            label = "0"
        if cfg.reward_classifier_score == "logprob" and len(id2label) < 2:
            raise ConfigError(f"--reward_classifier_score logprob: {path} has one label (its log-probability is "
                              f"always 0); use logit")
        sources.append(ClassifierSource(model, tokenizer, resolve_label(label, id2label, path),
                                        kind=cfg.reward_classifier_score, text=cfg.reward_classifier_input,
                                        batch_size=cfg.reward_classifier_batch_size, device=device,
                                        name=f"classifier{i}"))
    return sources
