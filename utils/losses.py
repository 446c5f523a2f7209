"""Every loss formula of the project, as pure functions of tensors.

Shapes: B batch, T sequence length, V vocabulary. Functions return sums with counts where
the caller must normalise over a whole accumulation window (see `utils.trainer`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100   # label of a position outside the loss (torch's cross-entropy default)


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


def prompt_lm_mask(attention_mask: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
    """The predictions of step 3's pretraining loss without a dataset (the fork's, on the prompts):
    position t counts when token t and token t+1 are both real prompt tokens, so a left-pad position
    is never trained to predict the first token.

    Args:
        attention_mask: [B, S] 1 on real tokens (prompts left-padded, answers right-padded).
        action_mask: [B, S-1] 1 where token t+1 is an answer token.
    Returns:
        [B, S-1] float mask over next-token predictions.
    """
    real = attention_mask.float()
    return real[:, :-1] * real[:, 1:] * (1 - action_mask.float())


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor, average: bool = False) -> torch.Tensor:
    """Log-probability of each sequence's labelled tokens (the response).

    Args:
        logits: [B, T, V]; labels: [B, T] with IGNORE_INDEX outside the response.
        average: divide by the number of labelled tokens (SimPO, ORPO).
    Returns:
        [B] summed (or averaged) log-probs.
    """
    total = token_logprobs(logits, labels).sum(-1)
    return total / response_lengths(labels) if average else total


def response_lengths(labels: torch.Tensor) -> torch.Tensor:
    """[B, T] labels -> [B] number of predicted (labelled) tokens, at least 1."""
    return (labels[:, 1:] != IGNORE_INDEX).sum(-1).clamp_min(1)


# -- reward model ------------------------------------------------------------------------------
def pairwise_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None) -> torch.Tensor:
    """Bradley-Terry loss -log sigmoid(r_chosen - r_rejected - margin); the margin (Llama 2's,
    TRL's `margin` column) asks a clearer preference to be scored further apart.

    Args: chosen, rejected: [P] end-token scores; margin: [P] or None (0). Returns: [P] per-pair losses.
    """
    diff = chosen.float() - rejected.float()
    return -F.logsigmoid(diff if margin is None else diff - margin.float())


def centering_penalty(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """(r_chosen + r_rejected)^2: pulls a pair's mean score to 0. The pairwise loss sees only
    differences, so without it the scores drift as a whole (Eisenstein et al. 2023, TRL's
    `center_rewards_coefficient`).

    Args: chosen, rejected: [P] end-token scores. Returns: [P].
    """
    return (chosen.float() + rejected.float()) ** 2


def divergence_pairwise_loss(chosen_values: torch.Tensor, rejected_values: torch.Tensor,
                             chosen_ids: torch.Tensor, rejected_ids: torch.Tensor,
                             chosen_len: torch.Tensor, rejected_len: torch.Tensor,
                             margin: torch.Tensor | None = None) -> torch.Tensor:
    """DeepSpeed-Chat's variant: mean of -log sigmoid(v_chosen[t] - v_rejected[t] - margin) over
    the tokens from the first position where the two sequences differ up to the end of the
    longer one (clamped to the padded length).

    Args:
        chosen_values, rejected_values: [P, T] per-token scores.
        chosen_ids, rejected_ids: [P, T] token ids (same padded length).
        chosen_len, rejected_len: [P] number of real tokens.
        margin: [P] or None (0).
    Returns:
        [P] per-pair losses. Identical pairs fall back to the last token.
    """
    P, T = chosen_ids.shape
    pos = torch.arange(T, device=chosen_ids.device).expand(P, T)
    differs = (chosen_ids != rejected_ids) & (pos < torch.maximum(chosen_len, rejected_len).unsqueeze(1))
    first = torch.where(differs.any(1), differs.float().argmax(1), torch.minimum(chosen_len, rejected_len) - 1)
    end = torch.maximum(chosen_len, rejected_len)
    span = (pos >= first.unsqueeze(1)) & (pos < end.unsqueeze(1))
    diff = chosen_values.float() - rejected_values.float()
    per_tok = -F.logsigmoid(diff if margin is None else diff - margin.float().unsqueeze(1))
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


def kto_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, desirable: torch.Tensor, kl: torch.Tensor,
             beta: float, desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> torch.Tensor:
    """KTO (Ethayarajh et al. 2024, eq. 8) on unpaired answers: lambda_y - v(x, y) with
    r = log pi(y|x) - log ref(y|x) and the reference point z0 = `kl`:
    desirable: lambda_D * (1 - sigmoid(beta * (r - z0))), undesirable: lambda_U * (1 - sigmoid(beta * (z0 - r))).

    Args:
        policy_logps, ref_logps: [N] summed answer log-probs.
        desirable: [N] bool label of each answer.
        kl: [] the reference point (see `kto_reference_point`), no gradient.
    Returns:
        [N] per-answer losses.
    """
    r = policy_logps - ref_logps
    value = torch.where(desirable, torch.sigmoid(beta * (r - kl)), torch.sigmoid(beta * (kl - r)))
    weight = torch.where(desirable, desirable_weight, undesirable_weight).to(value.dtype)
    return weight * (1 - value)


def kto_reference_point(kl_sum: float, n: float) -> float:
    """z0 = max(0, mean of log pi(y'|x) - log ref(y'|x)) over answers y' paired with another row's
    prompt x: a biased estimate of KL(pi || ref) that carries no gradient (KTO, sec. 4.1).
    `kl_sum` and `n` are summed over every rank before the mean."""
    return max(kl_sum / max(n, 1.0), 0.0)


def rrhf_loss(avg_logps: torch.Tensor, scores: torch.Tensor, groups: list[int],
              rank_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RRHF (Yuan et al. 2023, eqs. 2-4) for each prompt's scored answers:
    L_rank = sum over pairs with score_i < score_j of max(0, p_i - p_j), p the length-averaged
    log-prob; L_ft = -p of the best-scored answer (the first on ties), i.e. its token-mean NLL;
    loss = rank_weight * L_rank + L_ft.

    Args:
        avg_logps: [R] length-averaged answer log-probs, every prompt's answers.
        scores: [R] the answers' scores (higher is better; equal scores are not ranked).
        groups: [R] prompt index of each row, rows of one prompt contiguous, indices 0..G-1 in order.
    Returns:
        ([G] total, [G] L_rank, [G] L_ft) per prompt.
    """
    g = torch.tensor(groups, device=avg_logps.device)
    same = same_group(groups, avg_logps.device)
    worse_than = same & (scores.unsqueeze(1) < scores.unsqueeze(0))        # [i, j]: answer i below answer j
    hinge = (avg_logps.unsqueeze(1) - avg_logps.unsqueeze(0)).clamp_min(0) * worse_than
    n_groups = int(g.max()) + 1
    rank = torch.zeros(n_groups, dtype=avg_logps.dtype, device=avg_logps.device).index_add(0, g, hinge.sum(1))
    rows = [torch.nonzero(g == k).squeeze(1) for k in range(n_groups)]
    best = torch.stack([r[scores[r].argmax()] for r in rows])   # argmax: the first of equal maxima
    ft = -avg_logps[best]
    return rank_weight * rank + ft, rank, ft


# -- PPO (names as in the PPO paper and cleanrl) ----------------------------------------------------
def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over entries where mask is 1 (all entries, or along `dim`)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp_min(1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp_min(1)


def masked_moments(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[sum, sum of squares, count] of the masked entries: partial statistics that add up over
    batches and ranks, for `whiten(..., moments=)`. [B, T], [B, T] -> [3] float64."""
    m = mask.to(torch.float64)
    x = x.to(torch.float64)
    return torch.stack([(x * m).sum(), (x * x * m).sum(), m.sum()])


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8,
           moments: torch.Tensor | None = None) -> torch.Tensor:
    """(x - mean) / std over masked entries (population variance); masked-out entries -> 0.

    With shift_mean=False the mean is added back (rewards keep their sign, as in
    DeepSpeed-Chat and TRL). `moments` ([3] from `masked_moments`, summed over more data than
    x, e.g. a round's batches on all ranks) sets the mean and std instead of x itself.
    """
    if moments is None:
        mean = masked_mean(x, mask)
        var = masked_mean((x - mean) ** 2, mask)
    else:
        s, sq, n = moments.tolist()
        n = max(n, 1.0)
        mean = s / n
        var = max(sq / n - mean * mean, 0.0)
        mean, var = torch.tensor(mean, dtype=x.dtype), torch.tensor(var, dtype=x.dtype)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def kl_penalized_rewards(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
                         end_rewards: torch.Tensor, kl_ctl: float,
                         kl_kind: str = "k1") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards r_t = -kl_ctl * kl_t on every answer token, kl_t = `kl_estimate` (k1: log pi -
    log ref), plus the sequence reward on the last answer token, as given: a group estimator's shaped
    value (an advantage) must not be clipped, so the raw reward is clipped before any shaping.

    Args:
        logprobs, ref_logprobs: [B, T] log-probs of the taken tokens (actor at sampling time, reference).
        mask: [B, T] 1 on answer tokens (each row's answer is contiguous).
        end_rewards: [B] (shaped) scalar reward per sequence.
    Returns:
        (rewards [B, T], kl [B, T]) with zeros outside the mask.
    """
    m = mask.to(logprobs.dtype)
    kl = kl_estimate(logprobs, ref_logprobs, kl_kind) * m
    rewards = -kl_ctl * kl
    last = (m * torch.arange(m.shape[1], device=m.device)).argmax(1)
    rewards = rewards.clone()
    rewards[torch.arange(m.shape[0], device=m.device), last] += end_rewards.to(rewards.dtype) * (m.sum(1) > 0)
    return rewards, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over answer tokens.

    delta_t = r_t + gamma * V_{t+1} - V_t; A_t = delta_t + gamma * lam * A_{t+1}; V after the
    last answer token is 0 (the episode ends there).

    Args: rewards, values, mask: [B, T] (mask 1 on answer tokens, contiguous per row).
    Returns: (advantages [B, T], returns = advantages + values [B, T]); zeros outside the mask.
    """
    m = mask.to(values.dtype)
    values = values * m
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_adv = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        a = delta + gamma * lam * next_adv
        adv[:, t] = a * m[:, t]
        # outside the answer the recursion restarts (nothing flows across padding)
        next_value = values[:, t] * m[:, t]
        next_adv = adv[:, t]
    return adv, (adv + values) * m


def aggregation_count(mask: torch.Tensor, mode: str = "token-mean") -> torch.Tensor:
    """What `aggregate_loss` divides by: the loss tokens (token-mean) or the rows with any loss token
    (seq-mean-*; a row left out of the loss counts in no mean). Known before the forward, and additive
    over micro-batches and ranks, so an optimizer step divides by the count of all its rows.

    Args: mask: [B, T]. Returns: [] float.
    """
    m = mask.float()
    if mode == "token-mean":
        return m.sum()
    if mode not in ("seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"):
        raise ValueError(f"unknown loss aggregation {mode!r}")
    return (m.sum(-1) > 0).float().sum()


def aggregate_loss_sum(loss: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean",
                       horizon: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token losses as (sum, count), the reduced loss being sum / count (verl's names for the modes):

    mode                     sum                             count
    token-mean               sum_bt l * m                    sum_bt m          every token weighs the same (PPO, DAPO)
    seq-mean-token-mean      sum_b (sum_t l * m / sum_t m)   rows that train   every sequence weighs the same (GRPO)
    seq-mean-token-sum       sum_b sum_t l * m               rows that train   long answers weigh more
    seq-mean-token-sum-norm  sum_b (sum_t l * m) / horizon   rows that train   Dr. GRPO: a constant, not the length

    Sums and counts add up over micro-batches and ranks: an accumulation window divides the sum of its
    sums by the sum of its counts and equals one batch of all its rows.

    Args: loss, mask: [B, T]; horizon: the constant of the last mode (the answer budget).
    Returns: (sum [], count []).
    """
    m = mask.to(loss.dtype)
    count = aggregation_count(mask, mode)
    if mode == "token-mean":
        return (loss * m).sum(), count
    per_seq = (loss * m).sum(-1)
    if mode == "seq-mean-token-mean":
        per_seq = per_seq / m.sum(-1).clamp_min(1)
    elif mode == "seq-mean-token-sum-norm":
        if not horizon:
            raise ValueError("seq-mean-token-sum-norm needs a horizon")
        per_seq = per_seq / horizon
    return per_seq.sum(), count


def aggregate_loss(loss: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean",
                   horizon: int | None = None) -> torch.Tensor:
    """Per-token losses [B, T] reduced to one number [] by `aggregate_loss_sum`'s mode: its sum / count."""
    total, count = aggregate_loss_sum(loss, mask, mode, horizon)
    return total / count.clamp_min(1)


def ppo_policy_loss_sum(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, cliprange: float, cliprange_high: float | None = None,
                        agg_mode: str = "token-mean", horizon: int | None = None,
                        weights: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate objective (Schulman et al. 2017, eq. 7), as a loss to minimise, in sum form.

    l_t = w_t * max(-A_t * ratio_t, -A_t * clip(ratio_t, 1-eps_low, 1+eps_high)), ratio = exp(logp - old_logp);
    eps_low = cliprange, eps_high = cliprange_high (default: cliprange; DAPO raises it, "clip-higher");
    w_t = `weights` (e.g. truncated importance-sampling ratios; no gradient; default 1).
    Args: [B, T] tensors; mask 1 on the tokens in the loss; agg_mode, horizon: as `aggregate_loss_sum`.
    Returns: (pg_sum [], count [], token sums {"clipfrac", "approx_kl", "ratio"} []) where pg_loss =
    pg_sum / count and each statistic's mean is its sum / mask.sum(); approx_kl sums (ratio - 1) - log ratio.
    """
    high = cliprange if cliprange_high is None else cliprange_high
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    pg_losses = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + high)
    per_token = torch.max(pg_losses, pg_losses2)
    if weights is not None:
        per_token = per_token * weights.detach()
    pg_sum, count = aggregate_loss_sum(per_token, mask, agg_mode, horizon)
    with torch.no_grad():
        m = mask.to(ratio.dtype)
        stats = {
            "clipfrac": ((pg_losses2 > pg_losses).to(m.dtype) * m).sum(),
            "approx_kl": (((ratio - 1) - log_ratio) * m).sum(),
            "ratio": (ratio * m).sum(),
        }
    return pg_sum, count, stats


def ppo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, cliprange: float, cliprange_high: float | None = None,
                    agg_mode: str = "token-mean", horizon: int | None = None,
                    weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`ppo_policy_loss_sum` of one batch, reduced: (pg_loss [], {"clipfrac", "approx_kl", "ratio"} token means)."""
    pg_sum, count, sums = ppo_policy_loss_sum(logprobs, old_logprobs, advantages, mask, cliprange, cliprange_high,
                                              agg_mode, horizon, weights)
    n = mask.float().sum().clamp_min(1)
    return pg_sum / count.clamp_min(1), {k: v / n for k, v in sums.items()}


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) from the sampled token's log-probs (Schulman 2020,
    "Approximating KL divergence"), with d = log ref - log pi:

    k1 = -d                   unbiased, can be negative (the reward penalty's form)
    k2 = d^2 / 2              biased, low variance
    k3 = exp(d) - d - 1       unbiased, >= 0, low variance (GRPO's KL loss)

    Args: logprobs, ref_logprobs: [B, T]. Returns: [B, T].
    """
    d = ref_logprobs - logprobs
    if kind == "k1":
        return -d
    if kind == "k2":
        return 0.5 * d ** 2
    if kind == "k3":
        return torch.exp(d) - d - 1
    raise ValueError(f"unknown KL estimator {kind!r}")


def ppo_value_loss_sum(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       cliprange_value: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clipped value loss in sum form: 0.5 * max((V - R)^2, (clip(V, V_old +- eps) - R)^2) summed over the
    masked tokens.

    Args: [B, T] tensors. Returns: (vf_sum [], clipped tokens [] (no gradient), tokens []); the token
    mean vf_loss is vf_sum / tokens.
    """
    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    l1, l2 = (values - returns) ** 2, (clipped - returns) ** 2
    m = mask.to(values.dtype)
    vf_sum = 0.5 * (torch.max(l1, l2) * m).sum()
    return vf_sum, ((l2 > l1).to(m.dtype) * m).sum().detach(), m.sum()


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                   cliprange_value: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss: 0.5 * mean max((V - R)^2, (clip(V, V_old +- eps) - R)^2).

    Args: [B, T] tensors. Returns: (vf_loss [], vf_clipfrac []).
    """
    vf_sum, clipped, n = ppo_value_loss_sum(values, old_values, returns, mask, cliprange_value)
    n = n.clamp_min(1)
    return vf_sum / n, clipped / n


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy of the next-token distribution. [B, T, V] -> [B, T]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def log_collision(logits: torch.Tensor) -> torch.Tensor:
    """log sum_v p(v)^2 of each next-token distribution p = softmax(logits): the log of the
    probability the distribution gives its own draw, E_{v~p}[p(v)]. [..., V] -> [...]."""
    return torch.logsumexp(2 * torch.log_softmax(logits.float(), dim=-1), dim=-1)


def adaptive_kl_coef(kl_ctl: float, kl: float, target: float, n: int, horizon: int) -> float:
    """Ziegler et al. 2019's proportional controller of the KL coefficient.

    kl_ctl * (1 + clip(kl / target - 1, -0.2, 0.2) * n / horizon), where kl is the mean
    per-sequence KL of the n sequences just sampled.
    """
    error = max(min(kl / target - 1, 0.2), -0.2)
    return kl_ctl * (1 + error * n / horizon)


def standardize(rewards: torch.Tensor, reference: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(rewards - mean(reference)) / (std(reference) + eps), population std. [N], [M] -> [N]."""
    reference = reference.to(rewards.dtype)
    return (rewards - reference.mean()) / (reference.std(unbiased=False) + eps)


def same_group(groups: list[int], device=None) -> torch.Tensor:
    """[N, N] bool, True where samples i and j answer the same prompt (the diagonal included)."""
    g = torch.tensor(groups, device=device)
    return g[:, None] == g[None, :]


def group_baseline(rewards: torch.Tensor, groups: list[int], fallback: float) -> torch.Tensor:
    """Leave-one-out baseline from the other samples of the same prompt (Kool et al. 2019).

    b_i = mean_{j != i, g_j = g_i} r_j when the prompt has at least two samples, else `fallback`.
    Args: rewards [N]; groups: N prompt ids. Returns: b [N].
    """
    same = same_group(groups, rewards.device).to(rewards.dtype)
    n = same.sum(1)
    loo = (same @ rewards - rewards) / (n - 1).clamp_min(1)
    return torch.where(n > 1, loo, torch.full_like(rewards, fallback))


def grpo_advantages(rewards: torch.Tensor, groups: list[int], scale_by_std: bool = True,
                    eps: float = 1e-6, fallback: float | None = None) -> torch.Tensor:
    """GRPO's group-normalised sequence advantage (Shao et al. 2024, eq. 3):
    A_i = (r_i - mean_g r) / (std_g r + eps) over the samples of i's prompt, with the unbiased (Bessel,
    n - 1) std as TRL, verl and OpenRLHF compute it;
    scale_by_std=False leaves out the division (Dr. GRPO, Liu et al. 2025). A group of one has no
    mean to compare with: its advantage is r_i - fallback (0 without one), as in `group_baseline`.

    Args: rewards [N]; groups: N prompt ids. Returns: [N].
    """
    same = same_group(groups, rewards.device).to(rewards.dtype)
    n = same.sum(1)
    mean = same @ rewards / n
    centred = rewards - mean
    if scale_by_std:
        var = (same * (rewards[None, :] - mean[:, None]) ** 2).sum(1) / (n - 1).clamp_min(1)
        centred = centred / (var.sqrt() + eps)
    lone = torch.zeros_like(rewards) if fallback is None else rewards - fallback
    return torch.where(n > 1, centred, lone)


def uniform_groups(rewards: torch.Tensor, groups: list[int]) -> torch.Tensor:
    """True for samples whose prompt has two or more samples, all with the same reward: such a
    group carries no preference (DAPO's dynamic sampling drops it). [N], N ids -> [N] bool."""
    same = same_group(groups, rewards.device)
    differ = same & (rewards[:, None] != rewards[None, :])
    return (same.sum(1) > 1) & ~differ.any(1)


def reward_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """G_t = sum_{t' >= t} gamma^(t'-t) r_t' within each row's answer (REINFORCE's return).

    Args: rewards, mask: [B, T]. Returns: [B, T], zeros outside the mask.
    """
    out, _ = gae(rewards, torch.zeros_like(rewards), mask, gamma, 1.0)
    return out


def truncated_is_weights(old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance weights min(pi_old / pi_rollout, cap) per token (Yao et al. 2025, "Your
    efficient RL framework secretly brings you off-policy RL training"): what corrects the policy
    gradient for a sampler whose distribution differs from the recomputed one. No gradient.

    Args: old_logprobs, rollout_logprobs: [B, T]. Returns: [B, T].
    """
    return torch.exp(old_logprobs - rollout_logprobs).clamp(max=cap).detach()
