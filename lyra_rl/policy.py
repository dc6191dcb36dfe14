"""The ``VideoPolicy`` protocol every policy implements.

Convention:
    - Videos ``(B, T, 3, H, W)`` in ``[0, 1]``; latents ``(B, C, T', H', W')`` inside the policy.
    - Flow matching: ``t`` in ``[0, 1]``, ``t = 1`` is noise, ``x_t = (1 - t) x0 + t eps``, velocity
      ``v = eps - x0``. The conversion to a model's own timestep scale happens inside the policy.
    - The reference model is the policy with its adapters disabled (:meth:`adapters_disabled`), never a copy.
    - Sharded training (accelerate's FSDP configs) also needs ``shard(reshard_after_forward: bool)``, which
      shards the policy's big modules with FSDP2 (see ``lyra_rl.training.fsdp``).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from torch import Tensor
from torch.nn import Parameter

from .camera import Cameras


@runtime_checkable
class VideoPolicy(Protocol):
    def condition(self, images: Tensor, prompts: Sequence[str], cameras: Cameras) -> Any:
        """Embeddings of the conditioning images ``(B, 3, H, W)``, prompts and commanded cameras: an object with
        ``repeat(n)`` (each condition ``n`` times in a row), slicing ``cond[a:b]`` (a sub-batch) and indexing by a
        1-D tensor of rows ``cond[rows]`` (DPO's pairs)."""

    def with_prompts(self, cond: Any, prompts: Sequence[str]) -> Any:
        """``cond`` with other prompts (the negative prompt of classifier-free guidance), the rest reused."""

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(C, T', H', W')`` of a video of that size; a ``ValueError`` for a size the policy cannot generate."""

    def generated_latents(self, videos: Tensor) -> Tensor:
        """The latents ``(B, C, T', H', W')`` the policy would generate for videos ``(B, T, 3, H, W)`` (SFT's
        targets)."""

    def velocity(self, latents: Tensor, t: Tensor, cond: Any) -> Tensor:
        """``v_theta(x_t, t | cond)`` for latents ``(B, C, T', H', W')`` and times ``t (B,)``."""

    def decode(self, latents: Tensor, cond: Any) -> Tensor:
        """Generated latents (of a rollout with conditions ``cond``) to videos ``(B, T, 3, H, W)`` in ``[0, 1]``."""

    def adapters_disabled(self) -> AbstractContextManager:
        """Context in which :meth:`velocity` is the frozen reference model."""

    def trained_parameters(self) -> dict[str, Parameter]:
        """The trained weights by the keys checkpoints store them under."""

    def save_trained_weights(self, directory: str | Path, state: dict[str, Tensor]) -> None:
        """Writes whole trained weights (keyed as :meth:`trained_parameters`) into ``directory``, in the format
        the model's users load (e.g. diffusers' LoRA file)."""

    def read_trained_weights(self, directory: str | Path) -> dict[str, Tensor]:
        """What :meth:`save_trained_weights` wrote."""
