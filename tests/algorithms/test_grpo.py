import pytest
import torch

from lyra_rl.algorithms.grpo import group_advantages, grpo_loss, sde_step_mask, select_timesteps


class TestGroupAdvantages:
    def test_known_values(self):
        rewards = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 5.0])
        group_ids = torch.tensor([0, 0, 0, 7, 7, 3])
        eps = 1e-4
        # group 0: mean 2, unbiased std 1; group 7: std 0 -> 0; group 3 has one member -> 0
        expected = torch.tensor([-1 / (1 + eps), 0.0, 1 / (1 + eps), 0.0, 0.0, 0.0])
        advantages = group_advantages(rewards, group_ids, eps=eps)
        assert advantages.shape == (6,)
        assert advantages.dtype == torch.float32
        torch.testing.assert_close(advantages, expected)

    def test_matches_per_group_torch_std(self):
        generator = torch.Generator().manual_seed(0)
        rewards = torch.rand(24, generator=generator, dtype=torch.float64)
        group_ids = torch.randperm(24, generator=generator) % 4
        advantages = group_advantages(rewards, group_ids, clip=None)
        for group in range(4):
            members = group_ids == group
            r = rewards[members]
            torch.testing.assert_close(advantages[members], (r - r.mean()) / (r.std() + 1e-4))

    def test_no_scale_only_centres(self):
        rewards = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 5.0])
        group_ids = torch.tensor([0, 0, 0, 7, 7, 3])
        advantages = group_advantages(rewards, group_ids, scale="none")
        torch.testing.assert_close(advantages, torch.tensor([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0]))

    def test_batch_scale_divides_by_the_batch_std(self):
        rewards = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 5.0])
        group_ids = torch.tensor([0, 0, 0, 7, 7, 3])
        advantages = group_advantages(rewards, group_ids, scale="batch", clip=None)
        expected = torch.tensor([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0]) / (rewards.std() + 1e-4)
        torch.testing.assert_close(advantages, expected)

    def test_groups_of_size_one_give_zero(self):
        advantages = group_advantages(torch.tensor([3.0, -7.0, 100.0]), torch.tensor([0, 1, 2]))
        assert torch.equal(advantages, torch.zeros(3))

    def test_clip(self):
        # 49 zeros and one 1 in a group: the outlier's z-score is about 6.93
        rewards = torch.zeros(50)
        rewards[0] = 1.0
        group_ids = torch.zeros(50, dtype=torch.long)
        assert group_advantages(rewards, group_ids, clip=None)[0].item() == pytest.approx(6.93, abs=0.01)
        clipped = group_advantages(rewards, group_ids, clip=5.0)
        assert clipped[0].item() == 5.0
        assert clipped[1].item() == pytest.approx(-0.1414, abs=1e-3)
        assert group_advantages(rewards, group_ids, scale="none", clip=0.5)[0].item() == 0.5

    def test_integer_labels_need_not_be_contiguous(self):
        rewards = torch.tensor([1.0, 3.0, 1.0, 3.0])
        a = group_advantages(rewards, torch.tensor([5, 5, -2, -2]))
        b = group_advantages(rewards, torch.tensor([0, 0, 1, 1]))
        assert torch.equal(a, b)

    @pytest.mark.parametrize(
        ("rewards", "group_ids", "kwargs"),
        [
            (torch.zeros(4), torch.zeros(3, dtype=torch.long), {}),
            (torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long), {}),
            (torch.zeros(2), torch.zeros(2, dtype=torch.long), {"scale": True}),
            (torch.zeros(4), torch.zeros(4), {}),
            (torch.zeros(4), torch.zeros(4, dtype=torch.long), {"eps": 0.0}),
            (torch.zeros(4), torch.zeros(4, dtype=torch.long), {"clip": 0.0}),
        ],
    )
    def test_errors(self, rewards, group_ids, kwargs):
        with pytest.raises(ValueError):
            group_advantages(rewards, group_ids, **kwargs)


class TestGrpoLoss:
    def test_ratio_one_on_first_epoch(self):
        log_prob = torch.randn(8)
        advantages = torch.randn(8)
        loss, metrics = grpo_loss(log_prob, log_prob.clone(), advantages, clip_range=1e-4)
        assert metrics["ratio_mean"].item() == metrics["ratio_min"].item() == metrics["ratio_max"].item() == 1.0
        assert metrics["clip_fraction"].item() == 0.0
        torch.testing.assert_close(loss, -advantages.mean())
        torch.testing.assert_close(metrics["policy_loss"], -advantages.mean())
        assert metrics["kl"].item() == 0.0
        assert loss.shape == ()

    def test_kl_term(self):
        log_prob, advantages, kl = torch.randn(8), torch.randn(8), torch.rand(8)
        loss, metrics = grpo_loss(log_prob, log_prob, advantages, clip_range=1e-4, kl=kl, beta=0.004)
        torch.testing.assert_close(loss, -advantages.mean() + 0.004 * kl.mean())
        torch.testing.assert_close(metrics["kl"], kl.mean())

    def test_metrics_known_values(self):
        old = torch.zeros(4)
        log_prob = torch.log(torch.tensor([0.5, 1.0, 1.05, 2.0]))
        _, metrics = grpo_loss(log_prob, old, torch.ones(4), clip_range=0.1)
        assert metrics["ratio_min"].item() == pytest.approx(0.5)
        assert metrics["ratio_max"].item() == pytest.approx(2.0)
        assert metrics["ratio_mean"].item() == pytest.approx(4.55 / 4)
        assert metrics["clip_fraction"].item() == pytest.approx(0.5)
        assert all(not value.requires_grad for value in metrics.values())

    def test_gradient_inside_clip_range(self):
        old = torch.randn(6, dtype=torch.float64)
        log_prob = (old + torch.linspace(-0.05, 0.05, 6, dtype=torch.float64)).requires_grad_()
        advantages = torch.randn(6, dtype=torch.float64)
        loss, _ = grpo_loss(log_prob, old, advantages, clip_range=0.2)
        (grad,) = torch.autograd.grad(loss, log_prob)
        ratio = torch.exp(log_prob.detach() - old)
        torch.testing.assert_close(grad, -advantages * ratio / 6)

    def test_gradcheck(self):
        old = torch.randn(8, dtype=torch.float64)
        # ratios inside and well outside the clip range, away from the kinks at 1 +- clip_range
        offsets = torch.tensor([-0.5, -0.05, 0.0, 0.05, 0.5, -0.5, 0.5, 0.01], dtype=torch.float64)
        log_prob = (old + offsets).requires_grad_()
        advantages = torch.tensor([1.0, -1.0, 0.5, 2.0, 1.0, -1.0, -0.3, 0.7], dtype=torch.float64)
        kl = torch.rand(8, dtype=torch.float64, requires_grad=True)

        def fn(lp, k):
            return grpo_loss(lp, old, advantages, clip_range=0.2, kl=k, beta=0.1)[0]

        assert torch.autograd.gradcheck(fn, (log_prob, kl))

    def test_clipping_zeroes_gradient_in_the_advantage_direction(self):
        old = torch.zeros(4, dtype=torch.float64)
        # ratio e^0.5 > 1 + eps and e^-0.5 < 1 - eps
        log_prob = torch.tensor([0.5, -0.5, 0.5, -0.5], dtype=torch.float64, requires_grad=True)
        advantages = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64)
        loss, metrics = grpo_loss(log_prob, old, advantages, clip_range=0.2)
        (grad,) = torch.autograd.grad(loss, log_prob)
        # pushed further in the advantage's direction: clipped, no gradient
        assert grad[0].item() == 0.0 and grad[1].item() == 0.0
        # moved against the advantage: the unclipped term wins and keeps its gradient
        ratio = torch.exp(log_prob.detach())
        torch.testing.assert_close(grad[2:], -advantages[2:] * ratio[2:] / 4)
        assert metrics["clip_fraction"].item() == 1.0

    def test_old_log_prob_and_advantages_are_constants(self):
        log_prob = torch.randn(4, requires_grad=True)
        old = torch.randn(4, requires_grad=True)
        advantages = torch.randn(4, requires_grad=True)
        loss, _ = grpo_loss(log_prob, old, advantages, clip_range=0.2)
        loss.backward()
        assert old.grad is None and advantages.grad is None
        assert log_prob.grad is not None

    def test_errors(self):
        x = torch.zeros(4)
        with pytest.raises(ValueError):
            grpo_loss(torch.zeros(2, 2), torch.zeros(2, 2), torch.zeros(2, 2), clip_range=0.1)
        with pytest.raises(ValueError):
            grpo_loss(x, torch.zeros(3), x, clip_range=0.1)
        with pytest.raises(ValueError):
            grpo_loss(x, x, torch.zeros(5), clip_range=0.1)
        with pytest.raises(ValueError):
            grpo_loss(x, x, x, clip_range=0.1, kl=torch.zeros(3), beta=0.1)
        with pytest.raises(ValueError):
            grpo_loss(x, x, x, clip_range=0.0)
        with pytest.raises(ValueError):
            grpo_loss(x, x, x, clip_range=0.1, kl=x, beta=-1.0)
        with pytest.raises(ValueError):
            grpo_loss(x, x, x, clip_range=0.1, beta=0.1)


class TestSelectTimesteps:
    def test_all_steps_by_default(self):
        assert torch.equal(select_timesteps(5), torch.arange(5))

    @pytest.mark.parametrize(("fraction", "size"), [(0.6, 6), (0.7, 7), (0.05, 1), (0.11, 2), (1.0, 10)])
    def test_fraction_sizes(self, fraction, size):
        steps = select_timesteps(10, fraction=fraction, generator=torch.Generator().manual_seed(0))
        assert steps.shape == (size,)
        assert steps.dtype == torch.long
        assert (steps[1:] > steps[:-1]).all()
        assert steps.min() >= 0 and steps.max() < 10

    def test_fraction_deterministic_with_seed(self):
        a = select_timesteps(20, fraction=0.6, generator=torch.Generator().manual_seed(3))
        b = select_timesteps(20, fraction=0.6, generator=torch.Generator().manual_seed(3))
        assert torch.equal(a, b)
        draws = {
            tuple(select_timesteps(20, fraction=0.6, generator=torch.Generator().manual_seed(seed)).tolist())
            for seed in range(5)
        }
        assert len(draws) > 1

    def test_window(self):
        assert torch.equal(select_timesteps(10, window=(2, 3)), torch.tensor([2, 3, 4]))
        assert torch.equal(select_timesteps(10, window=(7, 3)), torch.tensor([7, 8, 9]))

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"num_steps": 0},
            {"num_steps": 10, "fraction": 0.0},
            {"num_steps": 10, "fraction": 1.5},
            {"num_steps": 10, "window": (8, 3)},
            {"num_steps": 10, "window": (-1, 2)},
            {"num_steps": 10, "window": (2, 0)},
            {"num_steps": 10, "fraction": 0.5, "window": (0, 2)},
        ],
    )
    def test_errors(self, kwargs):
        with pytest.raises(ValueError):
            select_timesteps(**kwargs)


class TestSdeStepMask:
    def test_known_values(self):
        mask = sde_step_mask(6, torch.tensor([1, 4]))
        assert mask.dtype == torch.bool
        assert mask.tolist() == [False, True, False, False, True, False]
        assert sde_step_mask(3, [0, 1, 2]).all()
        assert not sde_step_mask(3, []).any()

    def test_from_selected_steps(self):
        steps = select_timesteps(20, fraction=0.3, generator=torch.Generator().manual_seed(0))
        mask = sde_step_mask(20, steps)
        assert mask.sum().item() == 6
        assert torch.equal(mask.nonzero().squeeze(1), steps)

    @pytest.mark.parametrize(
        ("num_steps", "train_steps"),
        [(0, []), (5, [5]), (5, [-1]), (5, torch.tensor([[1, 2]])), (5, torch.tensor([1.0]))],
    )
    def test_errors(self, num_steps, train_steps):
        with pytest.raises(ValueError):
            sde_step_mask(num_steps, train_steps)
