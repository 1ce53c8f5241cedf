"""The S-DPO loss: hand-computed values, the DPO special case, stability and gradient direction."""

import math

import pytest
import torch
import torch.nn.functional as F

from trainer.softmax_dpo_trainer import sdpo_loss


def test_hand_computed_values():
    # softplus(logsumexp_j x_j) = log(1 + sum_j exp(x_j)), with x_j = beta * (Delta_j - Delta_w).
    # Row 0: beta = 0.5, Delta_w = -1 - (-2) = 1, Delta = [(-3) - (-2), (-1) - (-2)] = [-1, 1]
    #        x = 0.5 * ([-1, 1] - 1) = [-1, 0]  ->  log(1 + e^-1 + e^0) = log(2 + e^-1)
    # Row 1: all log-ratios 0 -> x = [0, 0] -> log(3)
    policy_chosen = torch.tensor([-1.0, -4.0])
    policy_rejected = torch.tensor([[-3.0, -1.0], [-5.0, -6.0]])
    ref_chosen = torch.tensor([-2.0, -4.0])
    ref_rejected = torch.tensor([[-2.0, -2.0], [-5.0, -6.0]])
    losses, chosen_rewards, rejected_rewards = sdpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, 0.5)
    expected = torch.tensor([math.log(2 + math.exp(-1)), math.log(3)])
    torch.testing.assert_close(losses, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(chosen_rewards, torch.tensor([0.5, 0.0]))
    torch.testing.assert_close(rejected_rewards, torch.tensor([[-0.5, 0.5], [0.0, 0.0]]))
    assert not chosen_rewards.requires_grad and not rejected_rewards.requires_grad


def test_three_negatives_hand_computed():
    # beta = 2, Delta_w = 0.25, Delta = [0.25, -0.75, 1.25] -> x = 2 * (Delta - 0.25) = [0, -2, 2]
    # loss = log(1 + 1 + e^-2 + e^2)
    losses, _, _ = sdpo_loss(
        torch.tensor([0.25]), torch.tensor([[0.25, -0.75, 1.25]]), torch.zeros(1), torch.zeros(1, 3), 2.0
    )
    assert losses.item() == pytest.approx(math.log(2 + math.exp(-2) + math.exp(2)), abs=1e-6)


def test_single_negative_is_dpo():
    torch.manual_seed(0)
    pc, rc = torch.randn(8), torch.randn(8)
    pr, rr = torch.randn(8, 1), torch.randn(8, 1)
    beta = 0.1
    losses, _, _ = sdpo_loss(pc, pr, rc, rr, beta)
    dpo = -F.logsigmoid(beta * ((pc - rc) - (pr[:, 0] - rr[:, 0])))
    torch.testing.assert_close(losses, dpo, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_finite_for_extreme_rewards(scale):
    # beta * Delta of +-1e4 on chosen and rejected: exp() of these overflows in a naive implementation.
    policy_chosen = torch.tensor([scale, -scale, 0.0], requires_grad=True)
    policy_rejected = torch.tensor(
        [[-scale, scale, 0.0], [scale, scale, -scale], [scale, -scale, 0.0]], requires_grad=True
    )
    losses, _, _ = sdpo_loss(policy_chosen, policy_rejected, torch.zeros(3), torch.zeros(3, 3), 1.0)
    assert torch.isfinite(losses).all()
    losses.sum().backward()
    assert torch.isfinite(policy_chosen.grad).all() and torch.isfinite(policy_rejected.grad).all()
    # Row 1 with scale 1e4: chosen at -1e4, two negatives at +1e4 -> loss = 2e4 + log 2 (up to float32 rounding)
    if scale > 0:
        assert losses[1].item() == pytest.approx(2e4 + math.log(2), rel=1e-6)


def test_gradient_direction():
    policy_chosen = torch.tensor([-2.0], requires_grad=True)
    policy_rejected = torch.tensor([[-3.0, -1.0, -2.5]], requires_grad=True)
    losses, _, _ = sdpo_loss(policy_chosen, policy_rejected, torch.zeros(1), torch.zeros(1, 3), 1.0)
    losses.sum().backward()
    assert policy_chosen.grad.item() < 0  # gradient descent pushes the chosen log-prob up
    assert (policy_rejected.grad > 0).all()  # and every rejected one down
    # The hardest negative (highest reward, index 1) gets the largest push.
    assert policy_rejected.grad[0].argmax().item() == 1
    # The chosen gradient balances the negatives' gradients: d/dr_w = -sum_j d/dr_j.
    assert policy_chosen.grad.item() == pytest.approx(-policy_rejected.grad.sum().item(), abs=1e-6)
