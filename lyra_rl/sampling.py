"""Flow-matching schedules and denoising steps: the Euler ODE step and Flow-GRPO's SDE step.

Convention (``docs/conventions.md#timesteps``): flow-matching time ``t`` (called ``sigma`` here) lies in
``[0, 1]``, ``t = 1`` is pure noise, ``x_t = (1 - t) x0 + t eps`` and the velocity is
``v = eps - x0``. Sampling runs from ``sigma = 1`` down to ``sigma = 0``, so every step has
``dt = sigma_next - sigma <= 0``.

The SDE step (Flow-GRPO, Liu et al. 2025, "Flow-GRPO: Training Flow Matching Models via
Online RL", Eq. 9) replaces the ODE ``dx = v dt`` by

.. math::

    dx = \\Big[v + \\frac{g^2}{2\\sigma}\\big(x + (1 - \\sigma) v\\big)\\Big] dt + g\\, dW,
    \\qquad g = a \\sqrt{\\sigma / (1 - \\sigma)},

which has the same marginals as the ODE for any noise level ``a`` (the drift correction is
the score term ``-g^2/2 \\nabla \\log p_t``, written with the velocity). Its Euler-Maruyama
discretisation makes every denoising step a Gaussian policy
``x_next ~ N(mean, std^2)`` whose log-density is what GRPO optimises.

All functions are pure: tensors in, tensors out. They compute in float32 (float64 inputs
stay float64, so gradcheck works) and return samples in the input dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

SIGMA_EPS = 1e-4
"""Guard for ``sigma`` inside the SDE's ``sigma / (1 - sigma)`` ratio: clamped to ``[SIGMA_EPS, 1 - SIGMA_EPS]``."""

TIMESTEP_SCALE = 1000.0
"""The DiT's timestep embedding takes ``t * 1000`` (Wan / diffusers ``FlowMatchEulerDiscreteScheduler``)."""


def shifted_sigmas(num_steps: int, shift: float = 5.0, sigma_min: float = 0.0) -> Tensor:
    """Wan's shifted flow-matching schedule, descending from 1 to ``sigma_min``.

    ``sigma = shift * s / (1 + (shift - 1) * s)`` for ``s`` evenly spaced from 1 to ``s_min``,
    where ``s_min`` is the unshifted value that maps to ``sigma_min`` (``s_min = 0`` when
    ``sigma_min = 0``). ``shift > 1`` spends more steps at high noise; ``shift = 1`` gives
    ``linspace(1, sigma_min, num_steps + 1)``.

    Args:
        num_steps: number of denoising steps, at least 1.
        shift: schedule shift, positive (Wan2.1 uses 5.0 at 480p).
        sigma_min: the last sigma, in ``[0, 1)``.

    Returns:
        float32 sigmas with shape :math:`(num\\_steps + 1,)`; ``sigmas[0] = 1``,
        ``sigmas[-1] = sigma_min``, strictly decreasing. Step ``i`` goes from ``sigmas[i]``
        to ``sigmas[i + 1]``.

    Raises:
        ValueError: if ``num_steps < 1``, ``shift <= 0`` or ``sigma_min`` is not in ``[0, 1)``.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    if not shift > 0:
        raise ValueError(f"shift must be positive, got {shift}")
    if not 0.0 <= sigma_min < 1.0:
        raise ValueError(f"sigma_min must be in [0, 1), got {sigma_min}")
    s_min = sigma_min / (shift - (shift - 1.0) * sigma_min)
    s = torch.linspace(1.0, s_min, num_steps + 1, dtype=torch.float64)
    sigmas = shift * s / (1.0 + (shift - 1.0) * s)
    sigmas[0], sigmas[-1] = 1.0, sigma_min
    return sigmas.float()


def timesteps_from_sigmas(sigmas: Tensor) -> Tensor:
    """The DiT's timesteps for the steps of a schedule: ``sigmas[:-1] * 1000``.

    Args:
        sigmas: a schedule from :func:`shifted_sigmas` with shape :math:`(N + 1,)`.

    Returns:
        timesteps with shape :math:`(N,)`, the model input of step ``i`` being ``timesteps[i]``.

    Raises:
        ValueError: if ``sigmas`` is not 1-D with at least two entries.
    """
    if sigmas.ndim != 1 or sigmas.shape[0] < 2:
        raise ValueError(f"sigmas must have shape (N + 1,) with N >= 1, got {tuple(sigmas.shape)}")
    return sigmas[:-1] * TIMESTEP_SCALE


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def _as_batch_scalar(value: float | Tensor, like: Tensor, dtype: torch.dtype, name: str) -> Tensor:
    """Turns a python float, a 0-d tensor or a ``(B,)`` tensor into a tensor broadcastable to ``like``."""
    value = torch.as_tensor(value, dtype=dtype, device=like.device)
    if value.ndim == 0:
        return value
    if value.ndim == 1 and value.shape[0] in (1, like.shape[0]):
        return value.view(-1, *([1] * (like.ndim - 1)))
    raise ValueError(
        f"{name} must be a float, a 0-d tensor or have shape (B,) = ({like.shape[0]},), got {tuple(value.shape)}"
    )


def _check_same_shape(x: Tensor, other: Tensor, name: str) -> None:
    if other.shape != x.shape:
        raise ValueError(f"{name} must have the shape of x {tuple(x.shape)}, got {tuple(other.shape)}")


def _mean_over_non_batch(values: Tensor) -> Tensor:
    return values.reshape(values.shape[0], -1).mean(dim=1)


def ode_step(x: Tensor, v: Tensor, sigma: float | Tensor, sigma_next: float | Tensor) -> Tensor:
    """One Euler step of the flow ODE: ``x + (sigma_next - sigma) * v``.

    Args:
        x: current sample ``x_sigma`` with shape :math:`(B, *)`.
        v: predicted velocity ``eps - x0`` with shape :math:`(B, *)`.
        sigma: current time, a float or a tensor with shape :math:`()` or :math:`(B,)`.
        sigma_next: next (smaller) time, same forms as ``sigma``.

    Returns:
        the next sample with shape :math:`(B, *)` in the dtype of ``x``.

    Raises:
        ValueError: if shapes do not match.
    """
    _check_same_shape(x, v, "v")
    dtype = _compute_dtype(x)
    sigma_t = _as_batch_scalar(sigma, x, dtype, "sigma")
    sigma_next_t = _as_batch_scalar(sigma_next, x, dtype, "sigma_next")
    dt = sigma_next_t - sigma_t
    return (x.to(dtype) + dt * v.to(dtype)).to(x.dtype)


@dataclass
class StepOutput:
    """The result of one SDE step, a Gaussian policy ``prev_sample ~ N(mean, std^2)``.

    Attributes:
        prev_sample: the next (less noisy) sample with shape :math:`(B, *)`, dtype of the input.
        mean: the Gaussian mean with shape :math:`(B, *)`, float32 (float64 for float64 input).
        std: the Gaussian standard deviation, broadcastable to ``mean``: shape :math:`()` or
            :math:`(B, 1, ..., 1)`, same dtype as ``mean``.
        log_prob: log-density of ``prev_sample`` averaged over all non-batch elements, with
            shape :math:`(B,)`, same dtype as ``mean``.
    """

    prev_sample: Tensor
    mean: Tensor
    std: Tensor
    log_prob: Tensor


def sde_step(
    x: Tensor,
    v: Tensor,
    sigma: float | Tensor,
    sigma_next: float | Tensor,
    noise_level: float,
    generator: torch.Generator | None = None,
    prev_sample: Tensor | None = None,
    noise: Tensor | None = None,
) -> StepOutput:
    """One Euler-Maruyama step of Flow-GRPO's marginal-preserving SDE, with its log-prob.

    With ``dt = sigma_next - sigma`` (``<= 0``) and noise level ``a``:

    .. math::

        g = a \\sqrt{\\sigma / (1 - \\sigma)},\\quad
        \\mu = x \\big(1 + \\tfrac{g^2 dt}{2 \\sigma}\\big)
              + v \\big(1 + \\tfrac{g^2 (1 - \\sigma)}{2 \\sigma}\\big) dt,\\quad
        s = g \\sqrt{-dt}.

    Guards: in the ratio ``sigma / (1 - sigma)`` the denominator's sigma is replaced by
    ``sigma_next`` where ``sigma > 1 - SIGMA_EPS`` (the first step from pure noise; this is
    Flow-GRPO's ``sigma_max = sigmas[1]`` rule, and keeps ``g^2 |dt|`` of order ``a^2``
    whatever the step size), and both sigmas of the ratio are clamped to
    ``[SIGMA_EPS, 1 - SIGMA_EPS]``. ``noise_level = 0`` gives ``std = 0`` and
    ``mean = x + dt * v``, the :func:`ode_step` exactly.

    Accuracy: the continuous SDE keeps the ODE's marginals exactly, its discretisation does
    not near ``sigma = 1``: there ``g^2 |dt|`` is of order ``a^2`` on the first few steps
    whatever the number of steps, and for ``a = 0.7`` the marginal std comes out up to about
    5 % too large around ``sigma = 0.95``. The SDE's drift pulls it back towards the exact
    marginal as sampling proceeds (measured on 1-D Gaussian data in ``tests/test_sampling.py``).

    One function serves rollout and replay: without ``prev_sample`` it draws
    ``prev_sample = mean + std * noise``; with ``prev_sample`` (a sample stored at rollout) it
    only scores it. The drawn sample is cast to the dtype of ``x`` *before* it is scored, so
    replaying the stored sample with the same weights gives the same ``log_prob`` bit for bit
    (the "ratio is exactly 1" check). ``prev_sample`` is detached in the log-density: the
    gradient flows through ``mean`` (and so through ``v``) only.

    Where ``std = 0`` (``noise_level = 0`` or ``dt = 0``) the step is deterministic: a drawn
    ``prev_sample`` equals ``mean`` and ``log_prob`` is 0.

    Args:
        x: current sample with shape :math:`(B, *)`.
        v: predicted velocity with shape :math:`(B, *)`.
        sigma: current time in ``[0, 1]``, a float or a tensor with shape :math:`()` or :math:`(B,)`.
        sigma_next: next time, ``<= sigma``, same forms as ``sigma``.
        noise_level: the SDE's noise level ``a >= 0`` (Flow-GRPO uses 0.7).
        generator: random generator for the noise when ``prev_sample`` and ``noise`` are None.
        prev_sample: a sample to score instead of drawing one, shape :math:`(B, *)`.
        noise: standard normal noise to use instead of drawing it, shape :math:`(B, *)`.

    Returns:
        a :class:`StepOutput` with ``prev_sample`` :math:`(B, *)`, ``mean`` :math:`(B, *)`,
        ``std`` broadcastable to :math:`(B, *)` and ``log_prob`` :math:`(B,)`.

    Raises:
        ValueError: on mismatched shapes, ``noise_level < 0``, ``sigma_next > sigma``, or both
            ``prev_sample`` and ``noise`` given.
    """
    _check_same_shape(x, v, "v")
    if noise_level < 0:
        raise ValueError(f"noise_level must be non-negative, got {noise_level}")
    if prev_sample is not None and noise is not None:
        raise ValueError("give at most one of prev_sample (to score) and noise (to draw with)")
    dtype = _compute_dtype(x)
    sigma_t = _as_batch_scalar(sigma, x, dtype, "sigma")
    sigma_next_t = _as_batch_scalar(sigma_next, x, dtype, "sigma_next")
    dt = sigma_next_t - sigma_t
    if bool((dt > 0).any()):
        raise ValueError("sigma_next must not exceed sigma: sampling runs from sigma = 1 to 0")

    x32 = x.to(dtype)
    v32 = v.to(dtype)
    sigma_den = torch.where(sigma_t > 1.0 - SIGMA_EPS, sigma_next_t, sigma_t).clamp(SIGMA_EPS, 1.0 - SIGMA_EPS)
    sigma_num = sigma_t.clamp(SIGMA_EPS, 1.0 - SIGMA_EPS)
    g2 = noise_level**2 * sigma_num / (1.0 - sigma_den)
    mean = x32 * (1.0 + g2 * dt / (2.0 * sigma_num)) + v32 * (1.0 + g2 * (1.0 - sigma_t) / (2.0 * sigma_num)) * dt
    std = torch.sqrt(g2 * -dt)

    if prev_sample is None:
        if noise is None:
            noise = torch.randn(
                x.shape,
                generator=generator,
                device=generator.device if generator is not None else x.device,
                dtype=dtype,
            ).to(x.device)
        _check_same_shape(x, noise, "noise")
        prev_sample = (mean + std * noise.to(dtype)).to(x.dtype)
    _check_same_shape(x, prev_sample, "prev_sample")

    stochastic = std > 0
    safe_std = torch.where(stochastic, std, torch.ones_like(std))
    log_density = (
        -((prev_sample.detach().to(dtype) - mean) ** 2) / (2.0 * safe_std**2)
        - torch.log(safe_std)
        - 0.5 * math.log(2.0 * math.pi)
    )
    log_density = torch.where(stochastic, log_density, torch.zeros_like(log_density))
    return StepOutput(prev_sample=prev_sample, mean=mean, std=std, log_prob=_mean_over_non_batch(log_density))


def gaussian_kl(mean: Tensor, mean_ref: Tensor, std: float | Tensor) -> Tensor:
    """KL between two Gaussians with the same std: ``||mean - mean_ref||^2 / (2 std^2)``, averaged.

    This is ``KL(N(mean, std^2) || N(mean_ref, std^2))`` per element, averaged over all
    non-batch elements (Flow-GRPO's KL to the reference policy). Elements with ``std = 0``
    contribute 0 (a deterministic step carries no KL term).

    Args:
        mean: policy mean with shape :math:`(B, *)`.
        mean_ref: reference mean with shape :math:`(B, *)`.
        std: shared std, a float or a tensor broadcastable to :math:`(B, *)` (e.g.
            :attr:`StepOutput.std`).

    Returns:
        the KL with shape :math:`(B,)`, float32 (float64 for float64 input).

    Raises:
        ValueError: if ``mean`` and ``mean_ref`` shapes differ or ``std`` does not broadcast.
    """
    _check_same_shape(mean, mean_ref, "mean_ref")
    dtype = _compute_dtype(mean)
    std = torch.as_tensor(std, dtype=dtype, device=mean.device)
    try:
        std = std.expand_as(mean)
    except RuntimeError as error:
        raise ValueError(f"std with shape {tuple(std.shape)} does not broadcast to {tuple(mean.shape)}") from error
    positive = std > 0
    safe_std = torch.where(positive, std, torch.ones_like(std))
    kl = (mean.to(dtype) - mean_ref.to(dtype)) ** 2 / (2.0 * safe_std**2)
    return _mean_over_non_batch(torch.where(positive, kl, torch.zeros_like(kl)))


def classifier_free_guidance(v_cond: Tensor, v_uncond: Tensor, guidance_scale: float) -> Tensor:
    """Classifier-free guidance: ``v_uncond + w (v_cond - v_uncond)``.

    ``w = 1`` returns ``v_cond``; ``w = 0`` returns ``v_uncond``. With guidance, every denoising
    step of a rollout *and* of the GRPO update uses the guided velocity, so the SDE step's
    log-prob is that of the guided policy (Flow-GRPO's Wan and SD3 recipes train this way).

    Args:
        v_cond: velocity given the condition, shape :math:`(B, *)`.
        v_uncond: velocity given the unconditional / negative prompt, same shape.
        guidance_scale: the weight ``w``.
    """
    _check_same_shape(v_cond, v_uncond, "v_uncond")
    return v_uncond + guidance_scale * (v_cond - v_uncond)
