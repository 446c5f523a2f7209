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


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor, average: bool = False) -> torch.Tensor:
    """Log-probability of each sequence's labelled tokens (the response).

    Args:
        logits: [B, T, V]; labels: [B, T] with IGNORE_INDEX outside the response.
        average: divide by the number of labelled tokens (SimPO, ORPO).
    Returns:
        [B] summed (or averaged) log-probs.
    """
    lp = token_logprobs(logits, labels)
    total = lp.sum(-1)
    if not average:
        return total
    return total / (labels[:, 1:] != IGNORE_INDEX).sum(-1).clamp_min(1)


# -- reward model ------------------------------------------------------------------------------
def pairwise_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry loss -log sigmoid(r_chosen - r_rejected).

    Args: chosen, rejected: [P] end-token scores. Returns: [P] per-pair losses.
    """
    return -F.logsigmoid(chosen.float() - rejected.float())


def divergence_pairwise_loss(chosen_values: torch.Tensor, rejected_values: torch.Tensor,
                             chosen_ids: torch.Tensor, rejected_ids: torch.Tensor,
                             chosen_len: torch.Tensor, rejected_len: torch.Tensor) -> torch.Tensor:
    """DeepSpeed-Chat's variant: mean of -log sigmoid(v_chosen[t] - v_rejected[t]) over the
    tokens from the first position where the two sequences differ up to the end of the
    longer one (clamped to the padded length).

    Args:
        chosen_values, rejected_values: [P, T] per-token scores.
        chosen_ids, rejected_ids: [P, T] token ids (same padded length).
        chosen_len, rejected_len: [P] number of real tokens.
    Returns:
        [P] per-pair losses. Identical pairs fall back to the last token.
    """
    P, T = chosen_ids.shape
    pos = torch.arange(T, device=chosen_ids.device).expand(P, T)
    differs = (chosen_ids != rejected_ids) & (pos < torch.maximum(chosen_len, rejected_len).unsqueeze(1))
    first = torch.where(differs.any(1), differs.float().argmax(1), torch.minimum(chosen_len, rejected_len) - 1)
    end = torch.maximum(chosen_len, rejected_len)
    span = (pos >= first.unsqueeze(1)) & (pos < end.unsqueeze(1))
    per_tok = -F.logsigmoid(chosen_values.float() - rejected_values.float())
    return (per_tok * span).sum(1) / span.sum(1).clamp_min(1)


def score_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error to annotated scores. Args: pred, target [N]. Returns: [N]."""
    return (pred.float() - target.float()) ** 2


# -- DPO family ---------------------------------------------------------------------------------
def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """DPO (Rafailov et al. 2023, eq. 7); with label_smoothing eps, conservative DPO:
    -(1-eps) log sigmoid(beta*h) - eps log sigmoid(-beta*h),
    h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)).

    Args: [P] summed response log-probs of policy and reference. Returns: [P] losses.
    """
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)


def ipo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """IPO (Azar et al. 2023, eq. 17): (h - 1/(2 beta))^2 with h as in `dpo_loss`.

    Args: [P] log-probs (IPO uses the summed log-probs here, as the paper's h). Returns: [P].
    """
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return (h - 1.0 / (2.0 * beta)) ** 2


def simpo_loss(avg_chosen: torch.Tensor, avg_rejected: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """SimPO (Meng et al. 2024, eq. 6), reference-free:
    -log sigmoid(beta * avg_logp(y_w) - beta * avg_logp(y_l) - gamma).

    Args: [P] length-averaged response log-probs. Returns: [P].
    """
    return -F.logsigmoid(beta * (avg_chosen - avg_rejected) - gamma)


def orpo_loss(avg_chosen: torch.Tensor, avg_rejected: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """ORPO (Hong et al. 2024, eqs. 6-7), reference-free: L_SFT + lambda * L_OR with
    L_SFT = -avg_logp(y_w) and L_OR = -log sigmoid(log odds(y_w) - log odds(y_l)),
    log odds(y) = avg_logp - log(1 - exp(avg_logp)).

    Args: [P] length-averaged response log-probs. Returns: ([P] total, [P] log-odds ratio).
    """
    def log_odds(x):
        return x - torch.log1p(-torch.exp(x).clamp(max=1 - 1e-6))
    ratio = log_odds(avg_chosen) - log_odds(avg_rejected)
    return -avg_chosen - lam * F.logsigmoid(ratio), ratio
