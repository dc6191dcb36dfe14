import math

import pytest
import torch

from lyra_rl.algorithms.dpo import candidate_pairs, flow_dpo_loss, preference_pairs, velocity_errors


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(0)
    target_w, target_l = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    reference_w, reference_l = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    return target_w, target_l, reference_w, reference_l


def dpo(policy_w, policy_l, pair, beta):
    target_w, target_l, reference_w, reference_l = pair
    return flow_dpo_loss(
        velocity_errors(policy_w, target_w),
        velocity_errors(policy_l, target_l),
        velocity_errors(reference_w, target_w),
        velocity_errors(reference_l, target_l),
        beta,
    )


def test_loss_is_log_2_at_the_reference(pair):
    loss, margin = dpo(pair[2], pair[3], pair, beta=100.0)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-12)
    assert torch.equal(margin, torch.zeros(3, dtype=torch.float64))


def test_gradient_step_fits_the_winner_and_leaves_the_loser(pair):
    target_w, target_l, reference_w, reference_l = pair
    policy_w, policy_l = reference_w.clone().requires_grad_(), reference_l.clone().requires_grad_()
    loss, _ = dpo(policy_w, policy_l, pair, beta=10.0)
    loss.backward()
    with torch.no_grad():
        stepped_w, stepped_l = policy_w - 0.01 * policy_w.grad, policy_l - 0.01 * policy_l.grad
    assert (velocity_errors(stepped_w, target_w) < velocity_errors(reference_w, target_w)).all()
    assert (velocity_errors(stepped_l, target_l) > velocity_errors(reference_l, target_l)).all()
    assert dpo(stepped_w, stepped_l, pair, beta=10.0)[0] < math.log(2)


def test_gradient_matches_finite_differences(pair):
    g = torch.Generator().manual_seed(1)
    policy_w = (pair[2] + 0.3 * torch.randn(pair[2].shape, generator=g, dtype=torch.float64)).requires_grad_()
    policy_l = (pair[3] + 0.3 * torch.randn(pair[3].shape, generator=g, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda winner, loser: dpo(winner, loser, pair, beta=3.0)[0], (policy_w, policy_l))


def test_beta_limits(pair):
    g = torch.Generator().manual_seed(2)
    policy_w = (pair[2] + 0.5 * torch.randn(pair[2].shape, generator=g, dtype=torch.float64)).requires_grad_()
    policy_l = pair[3].clone().requires_grad_()
    # beta -> 0: the loss tends to log 2 and its gradient vanishes linearly in beta
    small, _ = dpo(policy_w, policy_l, pair, beta=1e-6)
    (grad,) = torch.autograd.grad(small, policy_w)
    assert small.item() == pytest.approx(math.log(2), abs=1e-5)
    assert grad.abs().max() < 1e-6
    # beta -> infinity: the loss is the hinge -margin where the margin is negative, 0 where positive
    loss, margin = dpo(policy_w, policy_l, pair, beta=1e6)
    assert loss.item() == pytest.approx(torch.relu(-margin).mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="beta must be positive"):
        dpo(policy_w, policy_l, pair, beta=0.0)


def test_preference_pairs():
    rewards = torch.tensor([0.2, 0.9, 0.1, 0.5, 0.3, 0.3, float("nan"), 0.31])
    assert preference_pairs(rewards, 4).tolist() == [[1, 2], [7, 4]]
    assert preference_pairs(rewards, 4, min_margin=0.05).tolist() == [[1, 2]]
    everything = preference_pairs(rewards[:4], 4, all_pairs=True).tolist()
    assert sorted(everything) == [[0, 2], [1, 0], [1, 2], [1, 3], [3, 0], [3, 2]]
    assert preference_pairs(torch.full((4,), 0.5), 4).shape == (0, 2)
    with pytest.raises(ValueError, match="groups of 3"):
        preference_pairs(rewards, 3)


def test_candidate_pairs_are_a_fixed_number_per_group():
    rewards = torch.tensor([0.2, 0.9, 0.1, 0.5, 0.3, 0.3, float("nan"), 0.3])
    pairs, margins = candidate_pairs(rewards, 4)
    assert pairs.tolist() == [[1, 2], [4, 4]]  # a group of ties (and NaN) pairs its first rollout with itself
    assert margins.tolist() == pytest.approx([0.8, 0.0])  # which is never kept
    everything, margins = candidate_pairs(rewards, 4, all_pairs=True)
    assert everything.shape == (12, 2) and (margins[:6] > 0).all()  # every two rollouts, the better one first
    assert margins[6:].isnan().sum() == 3 and (margins[6:].nan_to_num(0.0) == 0).all()
    assert torch.equal(preference_pairs(rewards, 4, all_pairs=True), everything[margins > 0])


def test_weights_leave_pairs_out(pair):
    target_w, target_l, reference_w, reference_l = pair
    policy_w = reference_w + 0.1
    errors = [velocity_errors(v, target) for v, target in ((policy_w, target_w), (reference_l, target_l))]
    reference = [velocity_errors(reference_w, target_w), velocity_errors(reference_l, target_l)]
    mean, _ = flow_dpo_loss(*errors, *reference, beta=10.0)
    weighted, _ = flow_dpo_loss(*errors, *reference, beta=10.0, weights=torch.tensor([0.5, 0.5, 0.0]))
    first_two, _ = flow_dpo_loss(*(e[:2] for e in errors), *(e[:2] for e in reference), beta=10.0)
    assert weighted.item() == pytest.approx(first_two.item(), rel=1e-12) and mean.item() != weighted.item()
    with pytest.raises(ValueError, match="weights"):
        flow_dpo_loss(*errors, *reference, beta=10.0, weights=torch.ones(2))
