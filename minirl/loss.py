"""GRPO's pieces: advantages, the clipped policy loss, KL to the reference, loss aggregation.

Every function works on plain tensors so each can be checked against hand-computed values.
Shapes: rewards (G, n) for G prompts with n samples each; per-token tensors (B, T) with a
0/1 `mask` marking response tokens (B = G * n flattened group-major).

Aggregation takes the *global* denominators (token and sequence counts summed over every
data-parallel and sequence-parallel rank) as arguments, so the loss each rank computes is its
exact share of one global loss and the summed gradient does not depend on how the batch was
split across ranks or micro-batches (the bug where each micro-batch is averaged separately).
"""

import torch

EPS = 1e-6


def grpo_advantages(rewards: torch.Tensor, scale: str = "group", eps: float = EPS) -> torch.Tensor:
    """(G, n) rewards -> (G * n,) advantages: reward minus its group mean, divided by a std.

    scale = "group": the group's std (GRPO); "batch": the std of all rewards (more stable when
    groups are tiny); "none": no division (Dr. GRPO: the std division biases toward easy and
    hard questions). A group whose rewards are all equal gets exactly zero advantage, never NaN.
    """
    centered = rewards - rewards.mean(dim=1, keepdim=True)
    if scale == "group":
        std = rewards.std(dim=1, keepdim=True, unbiased=True) if rewards.shape[1] > 1 else torch.zeros_like(
            rewards[:, :1])
        centered = centered / (std + eps)
    elif scale == "batch":
        centered = centered / (rewards.std() + eps) if rewards.numel() > 1 else centered
    elif scale != "none":
        raise ValueError(f"advantage scale must be 'group', 'batch' or 'none', got {scale!r}")
    return centered.flatten()


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """(G, n) -> (G * n,): reward minus the mean of the *other* n - 1 samples (leave-one-out)."""
    n = rewards.shape[1]
    if n < 2:
        raise ValueError("RLOO needs at least 2 samples per prompt (rollout.n >= 2)")
    others = (rewards.sum(dim=1, keepdim=True) - rewards) / (n - 1)
    return (rewards - others).flatten()


def compute_advantages(rewards: torch.Tensor, estimator: str = "grpo", scale: str = "group") -> torch.Tensor:
    if estimator == "grpo":
        return grpo_advantages(rewards, scale)
    if estimator == "rloo":
        return rloo_advantages(rewards)
    raise ValueError(f"advantage estimator must be 'grpo' or 'rloo', got {estimator!r}")


def policy_loss(logp, old_logp, advantages, clip_low: float = 0.2, clip_high: float = 0.28,
                dual_clip: float | None = None):
    """PPO-clip per token, with DAPO's clip-higher (separate low/high ranges) and optional dual clip.

    logp, old_logp: (B, T); advantages: (B,) broadcast over tokens. Returns the per-token loss
    (B, T) and masks of where the low / high clip was active (for clip-fraction metrics).
    Dual clip (Ye et al. 2020) bounds the loss of a negative-advantage token by dual_clip * |A|.
    """
    adv = advantages[:, None]
    ratio = torch.exp(logp - old_logp)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    clipped_high = (ratio > 1.0 + clip_high) & (adv > 0)
    clipped_low = (ratio < 1.0 - clip_low) & (adv < 0)
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * dual_clip), loss)
    return loss, clipped_low, clipped_high


def kl_penalty(logp, ref_logp, kind: str = "k3"):
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman's k1 / k2 / k3).

    k1 = log r, k2 = (log r)^2 / 2, k3 = exp(-log r) - 1 + log r with log r = logp - ref_logp.
    k3 is unbiased and always >= 0 (low variance); it is the GRPO default.
    """
    log_ratio = logp - ref_logp
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio.square()
    if kind == "k3":
        return torch.exp(-log_ratio) - 1.0 + log_ratio
    raise ValueError(f"kl estimator must be 'k1', 'k2' or 'k3', got {kind!r}")


def aggregate(token_values, mask, mode: str, global_tokens: float, global_seqs: float,
              max_response_len: int | None = None):
    """Reduce (B, T) per-token values to this rank's share of the global scalar loss.

    token-mean:               sum over all tokens / global token count           (DAPO)
    seq-mean-token-mean:      mean over tokens within a sequence, then over sequences (GRPO)
    seq-mean-token-sum-norm:  sum over tokens / (global sequences * max_response_len) (Dr. GRPO)
    """
    mask = mask.to(token_values.dtype)
    if mode == "token-mean":
        return (token_values * mask).sum() / max(global_tokens, 1.0)
    if mode == "seq-mean-token-mean":
        per_seq = (token_values * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return per_seq.sum() / max(global_seqs, 1.0)
    if mode == "seq-mean-token-sum-norm":
        if not max_response_len:
            raise ValueError("seq-mean-token-sum-norm needs max_response_len (rollout.max_new_tokens)")
        return (token_values * mask).sum() / (max(global_seqs, 1.0) * max_response_len)
    raise ValueError(
        f"loss aggregation must be 'token-mean', 'seq-mean-token-mean' or 'seq-mean-token-sum-norm', got {mode!r}"
    )


def grpo_loss(logp, old_logp, advantages, mask, *, ref_logp=None, kl_coef: float = 0.0, kl_kind: str = "k3",
              clip_low: float = 0.2, clip_high: float = 0.28, dual_clip: float | None = None,
              agg: str = "token-mean", global_tokens: float, global_seqs: float,
              max_response_len: int | None = None):
    """The GRPO objective for one micro-batch; returns (loss, metrics as a dict of token sums).

    Metrics are sums over this micro-batch's response tokens (plus the token count), so the
    caller can add them across micro-batches and ranks and divide once.
    """
    token_loss, low, high = policy_loss(logp, old_logp, advantages, clip_low, clip_high, dual_clip)
    pg_loss = aggregate(token_loss, mask, agg, global_tokens, global_seqs, max_response_len)
    loss = pg_loss
    m = mask.bool()
    logp_d = logp.detach()
    metrics = {
        "tokens": float(m.sum()),
        "clipfrac_low": float(low[m].sum()),
        "clipfrac_high": float(high[m].sum()),
        "approx_kl": float((0.5 * (logp_d - old_logp).square())[m].sum()),
        "pg_loss": float(pg_loss.detach()),
    }
    if kl_coef > 0.0:
        if ref_logp is None:
            raise ValueError("kl_coef > 0 needs reference log-probs")
        kl = kl_penalty(logp, ref_logp, kl_kind)
        kl_loss = aggregate(kl, mask, agg, global_tokens, global_seqs, max_response_len)
        loss = loss + kl_coef * kl_loss
        metrics["kl_loss"] = float(kl_loss.detach())
        metrics["kl"] = float(kl.detach()[m].sum())
    return loss, metrics
