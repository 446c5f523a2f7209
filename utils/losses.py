"""Every loss formula of the project, as pure functions of tensors.

Shapes: B batch, T sequence length, V vocabulary. Functions return sums with counts where
the caller must normalise over a whole accumulation window (see `utils.trainer`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(labels[t+1] | tokens <= t) for every position.

    Args:
        logits: [B, T, V] next-token logits at each position.
        labels: [B, T] token ids; IGNORE_INDEX entries get log-prob 0.
    Returns:
        [B, T-1] log-probabilities of labels[:, 1:].
    """
    target = labels[:, 1:]
    safe = target.clamp_min(0)
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return logp.masked_fill(target == IGNORE_INDEX, 0.0)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy and the number of predicted tokens.

    Args:
        logits: [B, T, V]; position t predicts labels[:, t + 1].
        labels: [B, T]; IGNORE_INDEX marks tokens without loss (prompt, padding).
    Returns:
        (loss_sum [], n_tokens []): mean loss is loss_sum / n_tokens.
    """
    target = labels[:, 1:].reshape(-1)
    loss_sum = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)).float(), target,
        ignore_index=IGNORE_INDEX, reduction="sum",
    )
    return loss_sum, (target != IGNORE_INDEX).sum()
