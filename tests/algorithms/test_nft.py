import pytest
import torch

from lyra_rl.algorithms.nft import nft_loss, optimality


def toy(seed=0, batch=3):
    g = torch.Generator().manual_seed(seed)
    x0, eps, old = torch.randn(3, batch, 2, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0.9, 0.5, 0.2], dtype=torch.float64)[:batch]
    x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps
    return x0, eps, old, t, x_t


def test_optimality_maps_clipped_advantages_to_the_unit_interval():
    r = optimality(torch.tensor([-3.0, -0.5, 0.0, 0.5, 3.0]), clip=1.0)
    assert r.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    with pytest.raises(ValueError, match="clip"):
        optimality(torch.zeros(2), clip=0.0)


@pytest.mark.parametrize("r_value,beta", [(1.0, 1.0), (0.8, 1.0), (0.5, 2.0), (0.1, 0.5)])
def test_unweighted_minimum_is_the_closed_form(r_value, beta):
    x0, eps, old, t, x_t = toy()
    r = torch.full((3,), r_value, dtype=torch.float64)
    velocity = old.clone().requires_grad_()
    optimizer = torch.optim.LBFGS([velocity], lr=1, max_iter=100, tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure():
        optimizer.zero_grad()
        loss = nft_loss(velocity, old, x_t, x0, t, r, beta, adaptive=False)
        loss.backward()
        return loss

    optimizer.step(closure)
    expected = old + (2 * r_value - 1) * (eps - x0 - old) / beta
    torch.testing.assert_close(velocity.detach(), expected, rtol=1e-6, atol=1e-6)


def test_adaptive_loss_keeps_the_extremes():
    """With the adaptive weights the positive sample's optimum is still its target, a neutral one's is v_old."""
    x0, eps, old, t, x_t = toy(seed=1)
    for r_value, expected in ((1.0, eps - x0), (0.5, old)):
        velocity = expected.clone().requires_grad_()
        loss = nft_loss(velocity, old, x_t, x0, t, torch.full((3,), r_value, dtype=torch.float64))
        (grad,) = torch.autograd.grad(loss, velocity)
        assert grad.abs().max() < 1e-9


def test_gradient_matches_finite_differences_and_skips_the_old_policy():
    x0, eps, old, t, x_t = toy(seed=2)
    r = torch.tensor([0.9, 0.2, 0.6], dtype=torch.float64)
    velocity = (old + 0.1).requires_grad_()
    # the adaptive weights are detached (their derivative is not part of the gradient): check the plain loss
    assert torch.autograd.gradcheck(lambda v: nft_loss(v, old, x_t, x0, t, r, 1.0, adaptive=False), (velocity,))
    old_leaf = old.clone().requires_grad_()
    nft_loss(velocity, old_leaf, x_t, x0, t, r).backward()
    assert old_leaf.grad is None


def test_good_samples_pull_and_bad_samples_push():
    """One gradient step from v_old moves v_theta towards a good sample's target and away from a bad one's."""
    x0, eps, old, t, x_t = toy(seed=3, batch=2)
    target = eps - x0
    velocity = old.clone().requires_grad_()
    nft_loss(velocity, old, x_t, x0, t, torch.tensor([1.0, 0.0], dtype=torch.float64)).backward()
    stepped = velocity.detach() - 0.05 * velocity.grad
    distance = (stepped - target).flatten(1).norm(dim=1)
    before = (old - target).flatten(1).norm(dim=1)
    assert distance[0] < before[0] and distance[1] > before[1]
