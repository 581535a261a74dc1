"""loss.py against hand-computed values."""

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from minirl.loss import aggregate, compute_advantages, grpo_advantages, grpo_loss, kl_penalty, policy_loss

# our own reward levels (0.1 format, 0.9 accuracy), thirds, and extremes
REWARD_LEVELS = [0.0, 0.1, 0.9, 1.0, 1 / 3, 2 / 3, -0.9, 1e-30, 1e-8, 1e8, 3e30]


def test_grpo_advantages_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]])
    adv = grpo_advantages(rewards, "group")
    std = math.sqrt(1 / 3)  # unbiased std of [1, 0, 0, 1]
    expected = torch.tensor([0.5, -0.5, -0.5, 0.5]) / (std + 1e-6)
    assert torch.allclose(adv[:4], expected)
    assert torch.equal(adv[4:], torch.zeros(4))  # equal rewards: zero, not NaN


def test_advantage_scales_and_rloo():
    rewards = torch.tensor([[3.0, 1.0], [2.0, 2.0]])
    assert torch.allclose(grpo_advantages(rewards, "none"), torch.tensor([1.0, -1.0, 0.0, 0.0]))
    batch_std = torch.tensor([3.0, 1.0, 2.0, 2.0]).std()
    assert torch.allclose(grpo_advantages(rewards, "batch"), torch.tensor([1.0, -1.0, 0, 0]) / (batch_std + 1e-6))
    rewards = torch.tensor([[1.0, 0.0, 0.0]])
    assert torch.allclose(compute_advantages(rewards, "rloo"), torch.tensor([1.0, -0.5, -0.5]))
    assert not torch.isnan(grpo_advantages(torch.ones(3, 1))).any()
    with pytest.raises(ValueError, match="scale"):
        grpo_advantages(rewards, "median")


@settings(max_examples=300, deadline=None, database=None)
@example(value=0.9, n=8, estimator="grpo", scale="group", mixed=False)  # was +0.056 for every sample
@example(value=0.9, n=3, estimator="rloo", scale="group", mixed=False)
@example(value=1 / 3, n=7, estimator="grpo", scale="none", mixed=True)
@given(value=st.one_of(st.sampled_from(REWARD_LEVELS), st.floats(-1e6, 1e6, width=32)), n=st.integers(1, 64),
       estimator=st.sampled_from(["grpo", "rloo"]), scale=st.sampled_from(["group", "batch", "none"]),
       mixed=st.booleans())
def test_all_equal_group_gets_exactly_zero_advantage(value, n, estimator, scale, mixed):
    """A group whose samples all scored the same carries no signal: exactly 0.0, never the float32
    rounding of its mean divided by a std of that same rounding."""
    rewards = torch.full((1, n), value)
    if mixed:  # beside a group with spread, so "batch" divides by a real std
        rewards = torch.cat([rewards, torch.linspace(0.0, 1.0, n)[None]])
    if estimator == "rloo" and n < 2:
        with pytest.raises(ValueError, match="RLOO"):
            compute_advantages(rewards, estimator, scale)
        return
    assert torch.equal(compute_advantages(rewards, estimator, scale)[:n], torch.zeros(n))


def test_policy_loss_clip_higher_by_hand():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.1, 1.5, 0.5, 0.7]]))
    pos = torch.tensor([2.0])
    loss, low, high = policy_loss(logp, old, pos, clip_low=0.2, clip_high=0.28)
    # A > 0: min(r, clip(r)) * A -> ratio 1.5 clipped to 1.28; ratio 0.5 not clipped (pessimistic)
    assert torch.allclose(loss, -2.0 * torch.tensor([[1.1, 1.28, 0.5, 0.7]]))
    assert high.tolist() == [[False, True, False, False]] and not low.any()
    loss, low, high = policy_loss(logp, old, -pos, clip_low=0.2, clip_high=0.28)
    # A < 0: max(-A r, -A clip(r)) -> ratio 0.5 clipped up to 0.8; 1.5 stays (pessimistic)
    assert torch.allclose(loss, 2.0 * torch.tensor([[1.1, 1.5, 0.8, 0.8]]))
    assert low.tolist() == [[False, False, True, True]]


def test_dual_clip_bounds_negative_advantage_loss():
    logp = torch.log(torch.tensor([[10.0]]))
    loss, _, _ = policy_loss(logp, torch.zeros(1, 1), torch.tensor([-1.0]), dual_clip=3.0)
    assert loss.item() == pytest.approx(3.0)


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    lr = math.log(2.0)
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(lr)
    assert kl_penalty(logp, ref, "k2").item() == pytest.approx(0.5 * lr**2)
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(0.5 - 1 + lr)
    assert (kl_penalty(torch.randn(100), torch.randn(100), "k3") >= 0).all()


@pytest.mark.parametrize("log_ratio", [50.0, -50.0, 1e4, -1e4])
@pytest.mark.parametrize("kl_kind", ["k1", "k2", "k3"])
@pytest.mark.parametrize("dual_clip", [None, 3.0])
def test_extreme_log_ratios_give_finite_loss_and_gradients(log_ratio, kl_kind, dual_clip):
    """A token whose probability moved by e^1e4 (a bf16 logit blow-up) must not put inf or NaN
    into the loss or the gradient: both advantage signs, the policy and the reference ratio."""
    old = torch.zeros(4, 3)
    logp = torch.full((4, 3), log_ratio, requires_grad=True)
    adv = torch.tensor([1.0, -1.0, 2.0, -2.0])
    loss, metrics = grpo_loss(logp, old, adv, torch.ones(4, 3), ref_logp=old, kl_coef=0.1, kl_kind=kl_kind,
                              dual_clip=dual_clip, agg="token-mean", global_tokens=12, global_seqs=4)
    (grad,) = torch.autograd.grad(loss, logp)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert all(math.isfinite(v) for v in metrics.values())


def test_clamps_change_nothing_inside_their_range():
    """Inside |log-ratio| < 20 (and k3 < 10) loss and gradient are bitwise the unclamped formulas."""
    old, ref = torch.randn(64, 32) * 5, torch.randn(64, 32) * 5
    logp = (old + torch.empty(64, 32).uniform_(-19.9, 19.9)).requires_grad_()
    adv = torch.randn(64)
    ratio = torch.exp(logp - old)  # unclamped reference
    expected = torch.maximum(-adv[:, None] * ratio, -adv[:, None] * ratio.clamp(0.8, 1.28))
    loss, _, _ = policy_loss(logp, old, adv, clip_low=0.2, clip_high=0.28)
    assert torch.equal(loss, expected)
    assert torch.equal(*(torch.autograd.grad(x.sum(), logp)[0] for x in (loss, expected)))

    log_ratio = logp - ref
    expected = torch.exp(-log_ratio) - 1.0 + log_ratio
    inside = (log_ratio.abs() < 20) & (expected < 10)
    assert inside.float().mean() > 0.3
    k3 = kl_penalty(logp, ref, "k3")
    assert torch.equal(k3[inside], expected[inside])
    grads = [torch.autograd.grad(x.sum(), logp)[0][inside] for x in (k3, expected)]
    assert torch.equal(*grads)


def test_aggregations_by_hand():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert aggregate(values, mask, "token-mean", 4, 2).item() == pytest.approx(10 / 4)
    assert aggregate(values, mask, "seq-mean-token-mean", 4, 2).item() == pytest.approx((2 + 4) / 2)
    assert aggregate(values, mask, "seq-mean-token-sum-norm", 4, 2, 8).item() == pytest.approx(10 / 16)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_gradient_independent_of_micro_batch_split(agg):
    """One global batch vs the same batch in 3 micro-batches: identical summed gradient."""
    torch.manual_seed(0)
    B, T = 6, 5
    logp = torch.randn(B, T, requires_grad=True)
    old, ref = torch.randn(B, T), torch.randn(B, T)
    adv = torch.randn(B)
    mask = (torch.rand(B, T) > 0.3).long()
    mask[:, 0] = 1
    kw = dict(ref_logp=ref, kl_coef=0.1, agg=agg, global_tokens=float(mask.sum()), global_seqs=B,
              max_response_len=T)
    loss, _ = grpo_loss(logp, old, adv, mask, **kw)
    (full,) = torch.autograd.grad(loss, logp)
    parts = []
    for idx in torch.arange(B).split(2):
        kw["ref_logp"] = ref[idx]
        part, _ = grpo_loss(logp[idx], old[idx], adv[idx], mask[idx], **kw)
        parts.append(part)
    (split,) = torch.autograd.grad(sum(parts), logp)
    assert torch.allclose(full, split, atol=1e-6)
    assert torch.allclose(sum(parts), loss, atol=1e-6)


def test_on_policy_loss_is_minus_mean_advantage():
    logp = torch.randn(2, 3)
    adv = torch.tensor([1.0, -3.0])
    loss, metrics = grpo_loss(logp, logp, adv, torch.ones(2, 3), agg="token-mean", global_tokens=6,
                              global_seqs=2)
    assert loss.item() == pytest.approx(1.0)  # -(1*3 - 3*3)/6
    assert metrics["clipfrac_high"] == 0 and metrics["approx_kl"] == 0
