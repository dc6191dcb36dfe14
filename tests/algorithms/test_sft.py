import pytest
import torch

from lyra_rl.algorithms.sft import flow_matching_loss, noised_sample, shifted_timesteps
from lyra_rl.sampling import shifted_sigmas


class TestNoisedSample:
    def test_endpoints_and_target(self):
        x0, noise = torch.randn(3, 2, 4), torch.randn(3, 2, 4)
        x_t, target = noised_sample(x0, noise, torch.tensor([0.0, 1.0, 0.25]))
        torch.testing.assert_close(x_t[0], x0[0])  # t = 0: the data
        torch.testing.assert_close(x_t[1], noise[1])  # t = 1: the noise
        torch.testing.assert_close(x_t[2], 0.75 * x0[2] + 0.25 * noise[2])
        torch.testing.assert_close(target, noise - x0)

    def test_the_target_is_the_time_derivative(self):
        """d x_t / d t = eps - x0: the velocity the sampler integrates (``ode_step``)."""
        x0, noise = torch.randn(2, 5, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
        t = torch.tensor([0.3, 0.8], dtype=torch.float64)
        h = 1e-6
        finite = (noised_sample(x0, noise, t + h)[0] - noised_sample(x0, noise, t - h)[0]) / (2 * h)
        torch.testing.assert_close(finite, noised_sample(x0, noise, t)[1])

    def test_shapes_must_fit(self):
        with pytest.raises(ValueError, match="do not fit"):
            noised_sample(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2))


class TestFlowMatchingLoss:
    def test_known_value(self):
        assert float(flow_matching_loss(torch.ones(2, 3), torch.zeros(2, 3))) == pytest.approx(1.0)

    def test_gradient_matches_finite_differences(self):
        velocity = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
        target = torch.randn(2, 3, dtype=torch.float64)
        assert torch.autograd.gradcheck(lambda v: flow_matching_loss(v, target), (velocity,))
        flow_matching_loss(velocity, target).backward()
        torch.testing.assert_close(velocity.grad, 2 * (velocity - target).detach() / 6, check_dtype=False)

    def test_bf16_predictions_are_scored_in_float32(self):
        velocity = torch.full((1, 4), 1.0 + 2**-8, dtype=torch.bfloat16)  # bf16's step above 1
        assert flow_matching_loss(velocity, torch.ones(1, 4)).dtype == torch.float32

    def test_shapes_must_match(self):
        with pytest.raises(ValueError, match="differ"):
            flow_matching_loss(torch.zeros(2, 3), torch.zeros(3, 2))


class TestShiftedTimesteps:
    def test_distribution_is_the_sampler_schedule(self):
        """The fraction of draws above each of the sampler's sigmas is the fraction of its steps above it."""
        t = shifted_timesteps(200_000, shift=5.0, generator=torch.Generator().manual_seed(0))
        assert 0 < float(t.min()) and float(t.max()) < 1
        sigmas = shifted_sigmas(10, shift=5.0)
        for k in range(1, 10):
            assert float((t > sigmas[k]).float().mean()) == pytest.approx(k / 10, abs=0.005)

    def test_shift_one_is_uniform_and_shift_must_be_positive(self):
        t = shifted_timesteps(100_000, shift=1.0, generator=torch.Generator().manual_seed(1))
        assert float(t.mean()) == pytest.approx(0.5, abs=0.005)
        with pytest.raises(ValueError, match="shift"):
            shifted_timesteps(3, shift=0.0)
