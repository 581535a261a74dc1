"""GRPO's pieces: advantages, the clipped policy loss, KL to the reference, loss aggregation.

Every function works on plain tensors so each can be checked against hand-computed values. Shapes: rewards
(G, n) for G prompts with n samples each; per-token tensors (B, T) with a 0/1 `mask` marking response tokens
(B = G * n flattened group-major).

Aggregation takes the *global* denominators (token and sequence counts summed over every data-parallel and
sequence-parallel rank) as arguments, so the loss each rank computes is its exact share of one global loss and
the summed gradient does not depend on how the batch was split across ranks or micro-batches (the bug where
each micro-batch is averaged separately).

Numerical safety, as veRL and NVlabs/Long-RL do it: the log-ratio is clamped to +-20 before every `exp`
(e^20 ~ 5e8 is far past any clip range, e^1e4 is inf and inf * 0 is a NaN gradient), and the k3 estimate is
clamped to 10. Inside those ranges the values and gradients are exactly the unclamped formulas; outside, the
token's gradient is zero instead of inf or NaN.
"""

import torch

EPS = 1e-6
LOG_RATIO_CLAMP = 20.0
K3_CLAMP = 10.0


def grpo_advantages(rewards: torch.Tensor, scale: str = "group", eps: float = EPS) -> torch.Tensor:
    """(G, n) rewards -> (G * n,) advantages: reward minus its group mean, divided by a std.

    scale = "group": the group's std (GRPO); "batch": the std of all rewards (more stable when groups are
    tiny); "none": no division (Dr. GRPO: the std division biases toward easy and hard questions).

    A group whose rewards are all equal gets exactly 0.0, for every scale. Arithmetic cannot promise that: eight samples
    scoring 0.9 have a float32 mean off by ~6e-8 and a std of the same ~6e-8, so (r - mean) / (std + eps) is +0.056 for
    all eight and pushes the whole group one way. Such groups are detected (max == min) and zeroed instead.
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
    return _zero_equal_groups(centered, rewards).flatten()


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """(G, n) -> (G * n,): reward minus the mean of the *other* n - 1 samples (leave-one-out). All-equal
    groups get exactly 0.0 (the rounded sum minus one sample is not n - 1 samples)."""
    n = rewards.shape[1]
    if n < 2:
        raise ValueError("RLOO needs at least 2 samples per prompt (rollout.n >= 2)")
    others = (rewards.sum(dim=1, keepdim=True) - rewards) / (n - 1)
    return _zero_equal_groups(rewards - others, rewards).flatten()


def _zero_equal_groups(advantages: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """(G, n) advantages with every row whose (G, n) rewards are all equal set to exactly 0.0."""
    equal = rewards.amax(dim=1, keepdim=True) == rewards.amin(dim=1, keepdim=True)  # (G, 1)
    return torch.where(equal, torch.zeros_like(advantages), advantages)


def compute_advantages(rewards: torch.Tensor, estimator: str = "grpo", scale: str = "group") -> torch.Tensor:
    if estimator == "grpo":
        return grpo_advantages(rewards, scale)
    if estimator == "rloo":
        return rloo_advantages(rewards)
    raise ValueError(f"advantage estimator must be 'grpo' or 'rloo', got {estimator!r}")


def policy_loss(logp, old_logp, advantages, clip_low: float = 0.2, clip_high: float = 0.28,
                dual_clip: float | None = None):
    """PPO-clip per token, with DAPO's clip-higher (separate low/high ranges) and optional dual clip.

    logp, old_logp: (B, T); advantages: (B,) broadcast over tokens. Returns the per-token loss (B, T) and
    masks of where the low / high clip was active (for clip-fraction metrics). Dual clip (Ye et al. 2020)
    bounds the loss of a negative-advantage token by dual_clip * |A|. The log-ratio is clamped to
    +-LOG_RATIO_CLAMP before `exp` (see the module docstring).
    """
    adv = advantages[:, None]
    ratio = torch.exp((logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
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

    k1 = log r, k2 = (log r)^2 / 2, k3 = exp(-log r) - 1 + log r with log r = logp - ref_logp. k3 is unbiased
    and always >= 0 (low variance); it is the GRPO default. Its log-ratio is clamped to +-LOG_RATIO_CLAMP
    before `exp` and the estimate to K3_CLAMP (veRL's low_var_kl); k1 and k2, polynomials, need no clamp.
    """
    log_ratio = logp - ref_logp
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio.square()
    if kind == "k3":
        log_ratio = log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        return (torch.exp(-log_ratio) - 1.0 + log_ratio).clamp(max=K3_CLAMP)
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
    raise ValueError(f"loss aggregation must be 'token-mean', 'seq-mean-token-mean' or 'seq-mean-token-sum-norm', "
                     f"got {mode!r}")


def grpo_loss(logp, old_logp, advantages, mask, *, ref_logp=None, kl_coef: float = 0.0, kl_kind: str = "k3",
              clip_low: float = 0.2, clip_high: float = 0.28, dual_clip: float | None = None,
              agg: str = "token-mean", global_tokens: float, global_seqs: float,
              max_response_len: int | None = None):
    """The GRPO objective for one micro-batch; returns (loss, metrics as a dict of token sums). Metrics are
    sums over this micro-batch's response tokens (plus the token count), so the caller can add them across
    micro-batches and ranks and divide once."""
    token_loss, low, high = policy_loss(logp, old_logp, advantages, clip_low, clip_high, dual_clip)
    pg_loss = aggregate(token_loss, mask, agg, global_tokens, global_seqs, max_response_len)
    loss = pg_loss
    m = mask.bool()
    logp_d = logp.detach()
    metrics = {"tokens": float(m.sum()), "clipfrac_low": float(low[m].sum()), "clipfrac_high": float(high[m].sum()),
               "approx_kl": float((0.5 * (logp_d - old_logp).square())[m].sum()), "pg_loss": float(pg_loss.detach())}
    if kl_coef > 0.0:
        if ref_logp is None:
            raise ValueError("kl_coef > 0 needs reference log-probs")
        kl = kl_penalty(logp, ref_logp, kl_kind)
        kl_loss = aggregate(kl, mask, agg, global_tokens, global_seqs, max_response_len)
        loss = loss + kl_coef * kl_loss
        metrics["kl_loss"] = float(kl_loss.detach())
        metrics["kl"] = float(kl.detach()[m].sum())
    return loss, metrics
