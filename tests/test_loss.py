"""loss.py against hand-computed values."""

import math

import pytest
import torch

from minirl.loss import aggregate, compute_advantages, grpo_advantages, grpo_loss, kl_penalty, policy_loss


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
