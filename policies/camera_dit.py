"""The Wan2.1 DiT with its camera conditioning, in one of three layouts (``camera_layout``).

Two are checkpoint layouts of per-block camera modules:
    - ``"recammaster"`` (ReCamMaster): per block ``blocks.i.cam_encoder = Linear(12 -> dim)``, zero-initialised,
      embedding the per-latent-frame camera (3x4 camera-to-world pose relative to frame 0, flattened);
    - ``"astra"`` (Astra's mixture-of-experts layout): a shared ``sekai_processor.projector.0 =
      Linear(13 -> 25)`` lifts the per-latent-frame action (the 3x4 ``next_from_this`` relative pose, flattened,
      plus a flag that is 1 on the given first frame) and per block ``blocks.i.moe.experts.e.0 =
      Linear(25 -> dim)`` (zero-initialised; expert ``e`` is chosen by data domain, 0 = Astra's default);
      the given image enters as Astra's clean history (``clean_x_embedder.proj``, see
      :meth:`CameraConditionedWan.forward_with_history`);
and in both ``blocks.i.projector = Linear(dim -> dim)``, identity-initialised. The camera embedding is
broadcast over the frame's tokens and added to the self-attention input after ``norm1`` and the timestep
modulation; the projector maps the self-attention output, before the gate (as both models do). With
these initialisations the camera modules leave the base model's output unchanged.

The third, ``"dense"``, has no per-block camera modules: the conditioning enters as input channels concatenated to
the noisy latents before the patch embedding (as Wan I2V concatenates its image latents; see
:mod:`policies.dense_camera`). Per generated latent frame, in this order: the noisy latents (``C``), the
conditioning frame's latents (``C``), the conditioning frame warped into the frame's commanded camera by a plane
homography and encoded (``C``), and the Plücker rays of its pixels in the first camera's frame (6), so the DiT's
``in_channels`` is ``3 C + 6`` and its ``out_channels`` ``C``.

Convention:
    Cameras: docs/conventions.md; per-latent-frame features of latent frame ``f`` are those of video frame
    ``temporal_stride * f``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.utils.checkpoint
from diffusers import WanTransformer3DModel
from torch import Tensor, nn

from lyra_rl.camera import Cameras, invert_pose, relative_pose, relative_to_first

from .dense_camera import PLUCKER_CHANNELS, dense_in_channels

# layout -> per-latent-frame camera feature size (dense: Plücker channels per pixel, beside the warped image's)
CAMERA_LAYOUTS = {"recammaster": 12, "astra": 13, "dense": PLUCKER_CHANNELS}
ASTRA_UNIFIED_DIM = 25
ASTRA_HISTORY_INDEX = 19
"""RoPE frame index of Astra's clean history latents when one image is given: its FramePack context holds
1 start + 16 (4x) + 2 (2x) + 1 (1x) latent slots, the image fills the start and 1x slots, and the chunk's
generated latents follow at 20, 21, ..."""


def camera_features(
    cameras: Cameras, num_latent_frames: int, layout: str = "recammaster", temporal_stride: int = 4
) -> Tensor:
    """Per-latent-frame camera features ``(B, F, 12)`` (``recammaster``) or ``(B, F, 13)`` (``astra``).

    Latent frame ``f`` carries the camera of video frame ``temporal_stride * f`` (the VAE's 4x temporal
    compression), as ReCamMaster and Astra sample them.
        - ``recammaster``: the 3x4 camera-to-world pose relative to frame 0, flattened.
        - ``astra``: the 3x4 relative pose ``next_from_this = E[f + 1] E[f]^-1`` of the world-to-camera
          extrinsics (Astra's ``compute_relative_pose``; the last latent frame repeats the previous motion),
          flattened, then a flag that is 1 on the given first frame and 0 on generated ones.
    """
    if layout not in CAMERA_LAYOUTS:
        raise ValueError(f"unknown camera layout {layout!r}; known: {sorted(CAMERA_LAYOUTS)}")
    if layout == "dense":
        raise ValueError(
            "the dense layout's cameras enter per pixel (policies.dense_camera), not as per-frame features"
        )
    frames = torch.arange(num_latent_frames) * temporal_stride
    if frames[-1] >= cameras.num_frames:
        raise ValueError(
            f"{num_latent_frames} latent frames need {frames[-1] + 1} camera frames, got {cameras.num_frames}"
        )
    cam_from_world = relative_to_first(cameras.cam_from_world.double())[:, frames]
    if layout == "recammaster":
        return invert_pose(cam_from_world)[..., :3, :].flatten(-2).float()
    if num_latent_frames < 2:
        raise ValueError("the astra layout's relative motion needs at least 2 latent frames")
    motion = relative_pose(cam_from_world[:, :-1], cam_from_world[:, 1:])
    motion = torch.cat([motion, motion[:, -1:]], dim=1)
    flag = torch.zeros(*motion.shape[:2], 1, dtype=motion.dtype)
    flag[:, 0] = 1
    return torch.cat([motion[..., :3, :].flatten(-2), flag], dim=-1).float()


class ModalityProcessor(nn.Module):
    """Astra's ``<domain>_processor``: lifts a per-frame action vector to the experts' input size."""

    def __init__(self, in_features: int, unified_dim: int = ASTRA_UNIFIED_DIM):
        super().__init__()
        self.projector = nn.Sequential(nn.Linear(in_features, unified_dim))

    def forward(self, action: Tensor) -> Tensor:
        return self.projector(action)


class CameraExperts(nn.Module):
    """Astra's per-block ``moe``: one ``Linear(unified_dim -> dim)`` expert per data domain, hard-routed."""

    def __init__(self, dim: int, num_experts: int, unified_dim: int = ASTRA_UNIFIED_DIM):
        super().__init__()
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(unified_dim, dim)) for _ in range(num_experts))
        for expert in self.experts:
            nn.init.zeros_(expert[0].weight)
            nn.init.zeros_(expert[0].bias)


def _add_camera_embedding(attn1: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook on ``block.attn1``: its input (``norm1`` output after the timestep modulation) gets the
    block's camera embedding, per latent frame broadcast over the frame's tokens."""
    block = attn1._lyra_block
    camera = block._lyra_camera
    encoder = block.moe.experts[block._lyra_expert] if hasattr(block, "moe") else block.cam_encoder
    embedding = encoder(camera.to(args[0].dtype)).repeat_interleave(block._lyra_tokens_per_frame, dim=1)
    return (args[0] + embedding,) + args[1:]


def _project_attention(attn1: nn.Module, args: tuple, output: Tensor) -> Tensor:
    """Forward hook on ``block.attn1``: the self-attention output goes through ``projector``."""
    return attn1._lyra_block.projector(output)


def _checkpoint_block_with_its_camera(block: nn.Module, *args) -> Tensor:
    """Gradient checkpointing of one block that recomputes it, in the backward pass, with the camera of the
    forward pass it belongs to (not whatever forward ran last)."""
    camera, tokens_per_frame = block._lyra_camera, block._lyra_tokens_per_frame

    def run(*inputs):
        current = block._lyra_camera, block._lyra_tokens_per_frame
        block._lyra_camera, block._lyra_tokens_per_frame = camera, tokens_per_frame
        try:
            return block(*inputs)
        finally:
            block._lyra_camera, block._lyra_tokens_per_frame = current

    return torch.utils.checkpoint.checkpoint(run, *args, use_reentrant=False)


def astra_frame_indices(num_generated: int) -> Tensor:
    """RoPE frame indices of Astra's tokens after one given image: the two history slots, then the chunk."""
    return torch.cat([torch.full((2,), ASTRA_HISTORY_INDEX), ASTRA_HISTORY_INDEX + 1 + torch.arange(num_generated)])


def rope_at_frames(rope: nn.Module, frames: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """diffusers' Wan RoPE ``(cos, sin)``, each ``(1, F*height*width, 1, head_dim)``, for token grids at the
    given frame indices ``frames (F,)`` (diffusers' own ``rope`` module numbers frames 0, 1, ...)."""
    sizes = [rope.t_dim, rope.h_dim, rope.w_dim]
    count = len(frames)

    def grid(table: Tensor) -> Tensor:
        t, h, w = table.split(sizes, dim=1)
        return torch.cat(
            [
                t[frames].view(count, 1, 1, -1).expand(count, height, width, -1),
                h[:height].view(1, height, 1, -1).expand(count, height, width, -1),
                w[:width].view(1, 1, width, -1).expand(count, height, width, -1),
            ],
            dim=-1,
        ).reshape(1, count * height * width, 1, -1)

    return grid(rope.freqs_cos), grid(rope.freqs_sin)


class CameraConditionedWan(nn.Module):
    """``WanTransformer3DModel`` with camera modules attached to every block, or (``dense`` layout) none: its
    cameras are input channels (see the module docstring).

    The camera modules are registered inside the diffusers model (``blocks.i.cam_encoder`` or
    ``blocks.i.moe``, ``blocks.i.projector``, Astra's ``sekai_processor`` and ``clean_x_embedder``), so
    state-dict keys match ReCamMaster / Astra checkpoints, and act through forward hooks on ``attn1``.
    :meth:`forward` is diffusers' forward as is; :meth:`forward_with_history` is Astra's token layout built
    from the same diffusers modules. The hooks find their block through a plain (unregistered) attribute, so
    ``copy.deepcopy`` gives an independent model.

    Args:
        transformer: the base DiT (dense layout: with ``in_channels = 3 * out_channels + 6``).
        layout: ``"recammaster"``, ``"astra"`` or ``"dense"``.
        num_experts: Astra's experts per block.
        expert: the expert Astra routes to (0: its default camera-control domain).
    """

    def __init__(
        self, transformer: WanTransformer3DModel, layout: str = "recammaster", num_experts: int = 3, expert: int = 0
    ):
        super().__init__()
        if layout not in CAMERA_LAYOUTS:
            raise ValueError(f"unknown camera layout {layout!r}; known: {sorted(CAMERA_LAYOUTS)}")
        if not 0 <= expert < num_experts:
            raise ValueError(f"expert must be in [0, {num_experts}), got {expert}")
        self.transformer, self.layout = transformer, layout
        if layout == "dense":
            expected = dense_in_channels(transformer.config.out_channels)
            if transformer.config.in_channels != expected:
                raise ValueError(
                    f"the dense layout needs in_channels = 3 * out_channels + {PLUCKER_CHANNELS} = {expected}, "
                    f"got {transformer.config.in_channels}"
                )
            return
        dim = transformer.config.num_attention_heads * transformer.config.attention_head_dim
        if layout == "astra":
            transformer.sekai_processor = ModalityProcessor(CAMERA_LAYOUTS["astra"])
            transformer.clean_x_embedder = nn.Module()  # Astra's embedder of clean history latents (1x scale)
            transformer.clean_x_embedder.proj = copy.deepcopy(transformer.patch_embedding)
        for block in transformer.blocks:
            if layout == "astra":
                block.moe = CameraExperts(dim, num_experts)
                block._lyra_expert = expert
            else:
                block.cam_encoder = nn.Linear(CAMERA_LAYOUTS["recammaster"], dim)
                nn.init.zeros_(block.cam_encoder.weight)
                nn.init.zeros_(block.cam_encoder.bias)
            block.projector = nn.Linear(dim, dim)
            nn.init.eye_(block.projector.weight)
            nn.init.zeros_(block.projector.bias)
            object.__setattr__(block.attn1, "_lyra_block", block)  # not a submodule: no cycle in the state dict
            block.attn1.register_forward_pre_hook(_add_camera_embedding)
            block.attn1.register_forward_hook(_project_attention)

    def reset_history_embedder(self) -> None:
        """Astra layout: the clean-history embedder starts as a copy of the DiT's patch embedding (called again
        after base weights are loaded into a model whose camera modules are not trained yet)."""
        self.transformer.clean_x_embedder.proj.load_state_dict(self.transformer.patch_embedding.state_dict())

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each block's activations in the backward pass (camera modules included)."""
        if self.layout == "dense":
            self.transformer.enable_gradient_checkpointing()
        else:
            self.transformer.enable_gradient_checkpointing(_checkpoint_block_with_its_camera)

    def camera_parameters(self) -> Iterator[nn.Parameter]:
        """The camera modules that act: encoders (astra: the processor and the routed expert only), projectors and
        Astra's clean-history embedder (the modules Lyra trains; dense layout: none)."""
        if self.layout == "dense":
            return
        if self.layout == "astra":
            yield from self.transformer.sekai_processor.parameters()
            yield from self.transformer.clean_x_embedder.proj.parameters()
        for block in self.transformer.blocks:
            yield from (
                block.moe.experts[block._lyra_expert] if self.layout == "astra" else block.cam_encoder
            ).parameters()
            yield from block.projector.parameters()

    @contextmanager
    def _cameras(self, camera: Tensor, tokens_per_frame: int) -> Iterator[None]:
        """Hands the per-frame camera features ``(B, F, 12 or 13)`` to the blocks' hooks for one forward pass."""
        if camera.shape[-1] != CAMERA_LAYOUTS[self.layout]:
            raise ValueError(f"camera features {tuple(camera.shape)} do not fit the {self.layout} layout")
        if self.layout == "astra":
            processor = self.transformer.sekai_processor
            camera = processor(camera.to(processor.projector[0].weight.dtype))
        for block in self.transformer.blocks:
            block._lyra_camera, block._lyra_tokens_per_frame = camera, tokens_per_frame
        try:
            yield
        finally:
            for block in self.transformer.blocks:
                block._lyra_camera = None

    def _tokens_per_frame(self, latents: Tensor) -> int:
        _, p_h, p_w = self.transformer.config.patch_size
        return (latents.shape[-2] // p_h) * (latents.shape[-1] // p_w)

    def forward(self, latents: Tensor, timestep: Tensor, text: Tensor, camera: Tensor) -> Tensor:
        """Velocity ``(B, C, F, h, w)`` for latents ``(B, C, F, h, w)``, per-token timesteps ``(B, F*h*w/4)``,
        text ``(B, L, D)`` and per-latent-frame camera features ``(B, F, 12 or 13)`` (:func:`camera_features`):
        diffusers' forward, frames at RoPE indices 0, 1, ...

        Dense layout: ``camera`` is the per-pixel conditioning ``(B, 2 C + 6, F, h, w)`` (see the module docstring),
        concatenated to the latents as input channels; timesteps may also be ``(B,)``.
        """
        if self.layout == "dense":
            if camera.shape[2:] != latents.shape[2:]:
                raise ValueError(
                    f"dense conditioning {tuple(camera.shape)} does not fit latents {tuple(latents.shape)}"
                )
            return self.transformer(
                torch.cat([latents, camera.to(latents.dtype)], dim=1), timestep, text, return_dict=False
            )[0]
        if camera.shape[1] != latents.shape[2]:
            raise ValueError(f"{camera.shape[1]} camera features for {latents.shape[2]} latent frames")
        with self._cameras(camera, self._tokens_per_frame(latents)):
            return self.transformer(latents, timestep, text, return_dict=False)[0]

    def forward_with_history(
        self, latents: Tensor, timestep: Tensor, text: Tensor, camera: Tensor, history: Tensor
    ) -> Tensor:
        """Astra's forward for one chunk after one given image: velocity ``(B, C, f, h, w)`` of the generated
        latents ``(B, C, f, h, w)`` at timesteps ``(B,)`` (one per sample, 0-1000).

        The image's clean latent ``history (B, C, 1, h, w)`` fills Astra's start and latest-history slots: both
        are embedded by ``clean_x_embedder.proj`` and put before the generated tokens at RoPE frame index
        :data:`ASTRA_HISTORY_INDEX` (the generated ones follow), with the cameras Astra gives them: features
        0 and 1 for the two history frames, 1..f for the generated ones (``camera (B, 1 + f, 13)``). Every
        token gets the sample's timestep; only the generated tokens reach the output head.
        """
        transformer = self.transformer
        batch, channels, frames, height, width = latents.shape
        if camera.shape[1] != 1 + frames:
            raise ValueError(f"{camera.shape[1]} camera features for 1 given and {frames} generated latent frames")
        _, p_h, p_w = transformer.config.patch_size
        grid_h, grid_w = height // p_h, width // p_w
        per_frame = grid_h * grid_w

        def embed(projection: nn.Module, x: Tensor) -> Tensor:
            return projection(x.to(projection.weight.dtype)).flatten(2).transpose(1, 2)

        hidden = torch.cat(
            [
                embed(transformer.clean_x_embedder.proj, torch.cat([history, history], dim=2)),
                embed(transformer.patch_embedding, latents),
            ],
            dim=1,
        ).contiguous()
        frame_index = astra_frame_indices(frames).to(transformer.rope.freqs_cos.device)
        rotary = rope_at_frames(transformer.rope, frame_index, grid_h, grid_w)
        temb, timestep_proj, text, _ = transformer.condition_embedder(timestep, text, None)
        timestep_proj = timestep_proj.unflatten(1, (6, -1))
        checkpointing = torch.is_grad_enabled() and transformer.gradient_checkpointing
        with self._cameras(torch.cat([camera[:, :2], camera[:, 1:]], dim=1), per_frame):
            for block in transformer.blocks:
                if checkpointing:
                    hidden = transformer._gradient_checkpointing_func(block, hidden, text, timestep_proj, rotary)
                else:
                    hidden = block(hidden, text, timestep_proj, rotary)
        hidden = hidden[:, -frames * per_frame :]
        shift, scale = (transformer.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
        hidden = transformer.proj_out((transformer.norm_out(hidden.float()) * (1 + scale) + shift).type_as(hidden))
        hidden = hidden.reshape(batch, frames, grid_h, grid_w, 1, p_h, p_w, channels)
        return hidden.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)
