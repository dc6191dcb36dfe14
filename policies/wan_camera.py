"""The camera-conditioned Wan2.1 video DiT as a lyra-rl policy (ReCamMaster / Astra-style conditioning).

Architecture: diffusers' ``WanTransformer3DModel`` and ``AutoencoderKLWan``, plus camera modules in one of
two checkpoint layouts (``camera_layout``):
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
these initialisations the camera modules leave the base model's output unchanged. In the ``recammaster``
layout the conditioning image enters as the clean first latent frame (its tokens get timestep 0, as
Wan2.2's TI2V does); the policy generates the remaining latent frames.

Convention:
    Videos ``(B, T, 3, H, W)`` in ``[0, 1]`` with ``T = 4k + 1``; generated latents ``(B, C, k, H/8, W/8)``
    (the first latent frame is the conditioning image's and is not part of the policy's sample);
    flow-matching ``t`` in ``[0, 1]`` maps to the DiT's timestep ``1000 t``.
"""

from __future__ import annotations

import copy
import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.utils.checkpoint
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from diffusers.loaders import WanLoraLoaderMixin
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.distributed.fsdp import fully_shard
from transformers import UMT5Config, UMT5EncoderModel

from lyra_rl.camera import Cameras, invert_pose, relative_pose, relative_to_first

from .prompts import ByteTokenizer, embed_prompts

CAMERA_LAYOUTS = {"recammaster": 12, "astra": 13}  # layout -> per-latent-frame camera feature size
ASTRA_UNIFIED_DIM = 25
ASTRA_HISTORY_INDEX = 19
"""RoPE frame index of Astra's clean history latents when one image is given: its FramePack context holds
1 start + 16 (4x) + 2 (2x) + 1 (1x) latent slots, the image fills the start and 1x slots, and the chunk's
generated latents follow at 20, 21, ..."""

# Named architectures. "wan2.1-1.3b" are the published Wan2.1-T2V-1.3B shapes.
TRANSFORMER_CONFIGS = {
    "tiny": dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
        text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=64,
    ),
    "wan2.1-1.3b": dict(
        patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
        text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6,
    ),
}
VAE_CONFIGS = {
    "tiny": dict(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, latents_mean=[0.0] * 4, latents_std=[1.0] * 4),
    "wan2.1-1.3b": dict(),  # diffusers' defaults are Wan2.1's VAE
}
TEXT_CONFIGS = {
    "tiny": dict(vocab_size=260, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu", dropout_rate=0.0),
    "wan2.1-1.3b": dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                        feed_forward_proj="gated-gelu", relative_attention_num_buckets=32),
}
DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2")
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' file name of a LoRA
CAMERA_WEIGHTS = "camera_modules.safetensors"


@dataclass
class WanCondition:
    """Conditioning of a batch.

    Attributes:
        text: prompt embeddings ``(B, L, text_dim)``.
        camera: per-latent-frame camera features ``(B, F, 12 or 13)`` (``F`` latent frames including the first;
            see :func:`camera_features`).
        image_latents: the conditioning image's latent frame ``(B, C, 1, h, w)``.
    """

    text: Tensor
    camera: Tensor
    image_latents: Tensor

    def repeat(self, times: int) -> WanCondition:
        """Each condition repeated ``times`` times in a row (a GRPO group)."""
        return WanCondition(*(x.repeat_interleave(times, dim=0) for x in (self.text, self.camera, self.image_latents)))

    def __getitem__(self, index: slice) -> WanCondition:
        """The conditions of a sub-batch (a micro-batch of the update)."""
        return WanCondition(self.text[index], self.camera[index], self.image_latents[index])


def camera_features(cameras: Cameras, num_latent_frames: int, layout: str = "recammaster", temporal_stride: int = 4) -> Tensor:
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
    frames = torch.arange(num_latent_frames) * temporal_stride
    if frames[-1] >= cameras.num_frames:
        raise ValueError(f"{num_latent_frames} latent frames need {frames[-1] + 1} camera frames, got {cameras.num_frames}")
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
        return torch.cat([
            t[frames].view(count, 1, 1, -1).expand(count, height, width, -1),
            h[:height].view(1, height, 1, -1).expand(count, height, width, -1),
            w[:width].view(1, 1, width, -1).expand(count, height, width, -1),
        ], dim=-1).reshape(1, count * height * width, 1, -1)

    return grid(rope.freqs_cos), grid(rope.freqs_sin)


class CameraConditionedWan(nn.Module):
    """``WanTransformer3DModel`` with camera modules attached to every block (see the module docstring).

    The camera modules are registered inside the diffusers model (``blocks.i.cam_encoder`` or
    ``blocks.i.moe``, ``blocks.i.projector``, Astra's ``sekai_processor`` and ``clean_x_embedder``), so
    state-dict keys match ReCamMaster / Astra checkpoints, and act through forward hooks on ``attn1``.
    :meth:`forward` is diffusers' forward as is; :meth:`forward_with_history` is Astra's token layout built
    from the same diffusers modules. The hooks find their block through a plain (unregistered) attribute, so
    ``copy.deepcopy`` gives an independent model.

    Args:
        transformer: the base DiT.
        layout: ``"recammaster"`` or ``"astra"``.
        num_experts: Astra's experts per block.
        expert: the expert Astra routes to (0: its default camera-control domain).
    """

    def __init__(self, transformer: WanTransformer3DModel, layout: str = "recammaster", num_experts: int = 3, expert: int = 0):
        super().__init__()
        if layout not in CAMERA_LAYOUTS:
            raise ValueError(f"unknown camera layout {layout!r}; known: {sorted(CAMERA_LAYOUTS)}")
        if not 0 <= expert < num_experts:
            raise ValueError(f"expert must be in [0, {num_experts}), got {expert}")
        self.transformer, self.layout = transformer, layout
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
        self.transformer.enable_gradient_checkpointing(_checkpoint_block_with_its_camera)

    def camera_parameters(self) -> Iterator[nn.Parameter]:
        """The camera modules that act: encoders (astra: the processor and the routed expert only) and projectors."""
        if self.layout == "astra":
            yield from self.transformer.sekai_processor.parameters()
        for block in self.transformer.blocks:
            yield from (block.moe.experts[block._lyra_expert] if self.layout == "astra" else block.cam_encoder).parameters()
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
        diffusers' forward, frames at RoPE indices 0, 1, ..."""
        if camera.shape[1] != latents.shape[2]:
            raise ValueError(f"{camera.shape[1]} camera features for {latents.shape[2]} latent frames")
        with self._cameras(camera, self._tokens_per_frame(latents)):
            return self.transformer(latents, timestep, text, return_dict=False)[0]

    def forward_with_history(self, latents: Tensor, timestep: Tensor, text: Tensor, camera: Tensor, history: Tensor) -> Tensor:
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

        hidden = torch.cat([
            embed(transformer.clean_x_embedder.proj, torch.cat([history, history], dim=2)),
            embed(transformer.patch_embedding, latents),
        ], dim=1).contiguous()
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


class WanCameraPolicy(nn.Module):
    """Image-to-video Wan2.1 DiT conditioned on prompts and camera trajectories, with LoRA adapters.

    Args:
        dit: the camera-conditioned transformer.
        vae: the Wan VAE (frozen).
        text_encoder: UMT5 encoder used by :meth:`encode_prompts` (frozen; embeddings are cached per
            prompt so it can be dropped from accelerator memory once the prompts are known).
        tokenizer: callable ``prompts -> (ids, mask)``.
    """

    def __init__(self, dit: CameraConditionedWan, vae: AutoencoderKLWan, text_encoder: UMT5EncoderModel | None, tokenizer):
        super().__init__()
        self.dit = dit
        self.vae = vae.requires_grad_(False)
        self.text_encoder = text_encoder.requires_grad_(False).eval() if text_encoder is not None else None
        self.tokenizer = tokenizer
        self._text_cache: dict[str, Tensor] = {}
        self.offload_vae = False
        self._lora_layers: list[BaseTunerLayer] = []  # set by add_lora

    @classmethod
    def from_config(cls, name: str = "tiny", seed: int = 0, camera_layout: str = "recammaster", num_experts: int = 3,
                    expert: int = 0) -> WanCameraPolicy:
        """Randomly initialised weights of a named architecture (``tiny`` or ``wan2.1-1.3b``) with camera
        modules in ``camera_layout`` (see :class:`CameraConditionedWan`)."""
        if name not in TRANSFORMER_CONFIGS:
            raise ValueError(f"unknown policy config {name!r}; known: {sorted(TRANSFORMER_CONFIGS)}")
        torch.manual_seed(seed)
        transformer = WanTransformer3DModel(**TRANSFORMER_CONFIGS[name])
        vae = AutoencoderKLWan(**VAE_CONFIGS[name])
        text_encoder = UMT5EncoderModel(UMT5Config(**TEXT_CONFIGS[name])) if name == "tiny" else None
        dit = CameraConditionedWan(transformer, camera_layout, num_experts, expert)
        return cls(dit, vae.eval(), text_encoder, ByteTokenizer() if name == "tiny" else None)

    @property
    def transformer(self) -> WanTransformer3DModel:
        return self.dit.transformer

    def add_lora(self, rank: int, alpha: float, target_modules: Sequence[str] = DEFAULT_LORA_TARGETS,
                 train_camera: bool = True, adapter_name: str = "default") -> None:
        """Freezes the base model and adds LoRA adapters; camera modules stay trainable if ``train_camera``."""
        self.dit.requires_grad_(False)
        self.transformer.add_adapter(
            LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(target_modules), init_lora_weights=True),
            adapter_name=adapter_name,
        )
        for param in self.dit.camera_parameters():
            param.requires_grad_(train_camera)
        self._lora_layers = [m for m in self.transformer.modules() if isinstance(m, BaseTunerLayer)]

    def trained_parameters(self) -> dict[str, nn.Parameter]:
        """The trained weights (LoRA and trained camera modules) by their checkpoint key: ``transformer.`` + their
        name in the DiT, LoRA's without the adapter name (the keys diffusers and peft save a LoRA under)."""
        (adapter,) = self.transformer.peft_config
        return {f"transformer.{name.replace(f'.{adapter}.', '.')}": param
                for name, param in self.transformer.named_parameters() if param.requires_grad}

    def save_trained_weights(self, directory: str | Path, state: dict[str, Tensor]) -> None:
        """Writes whole trained weights keyed as :meth:`trained_parameters`: the LoRA as diffusers does
        (:data:`LORA_WEIGHTS` with the adapter's rank and alpha as metadata, so ``WanPipeline.load_lora_weights
        (directory)`` applies it at the trained scale) and the camera modules beside it (:data:`CAMERA_WEIGHTS`,
        keyed as ReCamMaster and Astra checkpoints are, but only the trained modules)."""
        (config,) = self.transformer.peft_config.values()
        lora = {k.removeprefix("transformer."): v for k, v in state.items() if "lora_" in k}
        WanLoraLoaderMixin.save_lora_weights(directory, transformer_lora_layers=lora,
                                             transformer_lora_adapter_metadata=config.to_dict())
        camera = {k: v for k, v in state.items() if "lora_" not in k}
        if camera:
            save_file(camera, Path(directory) / CAMERA_WEIGHTS)

    @staticmethod
    def read_trained_weights(directory: str | Path) -> dict[str, Tensor]:
        """What :meth:`save_trained_weights` wrote to ``directory``."""
        state = load_file(Path(directory) / LORA_WEIGHTS)
        if (Path(directory) / CAMERA_WEIGHTS).is_file():
            state.update(load_file(Path(directory) / CAMERA_WEIGHTS))
        return state

    @contextmanager
    def adapters_disabled(self) -> Iterator[None]:
        """The reference model: the same weights with the LoRA adapters switched off (layer by layer over the
        layers :meth:`add_lora` found: diffusers' ``disable_adapters`` walks every module, at each reference pass)."""
        if not self._lora_layers:
            raise ValueError("the policy has no LoRA adapters to disable: call add_lora first")
        for layer in self._lora_layers:
            layer.enable_adapters(False)
        try:
            yield
        finally:
            for layer in self._lora_layers:
                layer.enable_adapters(True)

    def place(self, device: torch.device | str, dtype: torch.dtype = torch.float32, offload_vae: bool = False) -> WanCameraPolicy:
        """Moves the DiT and the VAE to ``device`` for mixed-precision training: the DiT's frozen weights in
        ``dtype`` (bf16 on GPUs) except the modules diffusers keeps in float32 (norms, time embedder,
        modulation tables, RoPE); trainable weights (LoRA, trained camera modules) and the VAE, whose frames
        the rewards score, in float32. With ``offload_vae`` the VAE stays on the CPU and visits ``device`` for
        each encode and decode call only. The text encoder stays on the CPU: it only embeds prompts not
        cached yet."""
        keep = set(self.transformer._keep_in_fp32_modules or ())
        self.dit.to(device)
        self.offload_vae = offload_vae
        self.vae.to("cpu" if offload_vae else device)
        for name, param in self.dit.named_parameters():
            if not param.requires_grad and not keep.intersection(name.split(".")):
                param.data = param.data.to(dtype)
        return self

    def shard(self, reshard_after_forward: bool = True) -> None:
        """Shards every DiT block (its base, LoRA and camera weights) over the processes of the default process
        group with FSDP2's ``fully_shard`` (see ``lyra_rl.training.fsdp``); embedders, head, Astra's processor and the
        VAE stay whole on every process. Call after :meth:`place` and before building the optimizer."""
        for block in self.transformer.blocks:
            fully_shard(block, reshard_after_forward=reshard_after_forward)

    def add_prompt_embeddings(self, embeddings: dict[str, Tensor]) -> None:
        """Adds precomputed prompt embeddings ``prompt -> (L, text_dim)`` (e.g. ``prompts.load_prompt_embeddings``)."""
        self._text_cache.update(embeddings)

    @property
    def prompt_embeddings(self) -> dict[str, Tensor]:
        """The cached prompt embeddings ``prompt -> (L, text_dim)``."""
        return dict(self._text_cache)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Tensor:
        """Prompt embeddings ``(B, L, text_dim)``, computed once per distinct prompt and cached."""
        missing = sorted({p for p in prompts if p not in self._text_cache})
        if missing:
            if self.text_encoder is None:
                raise ValueError(f"no text encoder loaded and no cached embedding for {len(missing)} prompt(s), e.g. {missing[0]!r}: "
                                 "precompute them with recipes/encode_prompts.py")
            self._text_cache.update(zip(missing, embed_prompts(self.text_encoder, self.tokenizer, missing).cpu()))
        return torch.stack([self._text_cache[p] for p in prompts])

    @staticmethod
    def check_video_size(num_frames: int, height: int, width: int) -> None:
        """The sizes Wan generates: ``4k + 1`` frames (``k >= 1``) and sides divisible by 16; else a ``ValueError``
        naming the size that does not fit."""
        if (num_frames - 1) % 4 or num_frames < 5:
            raise ValueError(f"num_frames must be 4k+1 with k >= 1 (the VAE compresses time 4x), got {num_frames}")
        if height % 16 or width % 16:
            raise ValueError(f"height and width must be multiples of 16 (8x VAE, 2x2 patches), got {height}x{width}")

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(C, k, H/8, W/8)`` of the generated latents of a ``4k + 1``-frame video (:meth:`check_video_size`)."""
        self.check_video_size(num_frames, height, width)
        return (self.transformer.config.in_channels, (num_frames - 1) // 4, height // 8, width // 8)

    def _normalize(self, z: Tensor, inverse: bool = False) -> Tensor:
        mean = torch.tensor(self.vae.config.latents_mean, dtype=z.dtype, device=z.device).view(1, -1, 1, 1, 1)
        std = torch.tensor(self.vae.config.latents_std, dtype=z.dtype, device=z.device).view(1, -1, 1, 1, 1)
        return z * std + mean if inverse else (z - mean) / std

    @contextmanager
    def _vae_on(self, device: torch.device) -> Iterator[None]:
        """The VAE on ``device`` for one call (back to the CPU afterwards when offloaded)."""
        if not self.offload_vae:
            yield
            return
        self.vae.to(device)
        try:
            yield
        finally:
            self.vae.to("cpu")

    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        """Videos ``(B, T, 3, H, W)`` in [0, 1] to normalised latents ``(B, C, T', H/8, W/8)`` (posterior mode)."""
        pixels = video.permute(0, 2, 1, 3, 4).to(self.vae.dtype) * 2 - 1
        with self._vae_on(pixels.device):
            return self._normalize(self.vae.encode(pixels).latent_dist.mode())

    def generated_latents(self, videos: Tensor) -> Tensor:
        """The latents ``(B, C, k, H/8, W/8)`` the policy generates for videos ``(B, 4k + 1, 3, H, W)`` (SFT's
        targets): their encoding without the first latent frame, which is the conditioning image's."""
        return self.encode(videos)[:, :, 1:]

    def condition(self, images: Tensor, prompts: Sequence[str], cameras: Cameras) -> WanCondition:
        """Conditions for conditioning images ``(B, 3, H, W)`` in [0, 1], prompts and ``T = 4k + 1``-frame cameras."""
        self.check_video_size(cameras.num_frames, *images.shape[-2:])
        device = next(self.dit.parameters()).device
        num_latent_frames = (cameras.num_frames - 1) // 4 + 1
        return WanCondition(
            text=self.encode_prompts(prompts).to(device, self.transformer.condition_embedder.text_embedder.linear_1.weight.dtype),
            camera=camera_features(cameras, num_latent_frames, self.dit.layout).to(device),
            image_latents=self.encode(images[:, None].to(device)),
        )

    def with_prompts(self, cond: WanCondition, prompts: Sequence[str]) -> WanCondition:
        """``cond`` with other prompts (e.g. the negative prompt of classifier-free guidance), images not re-encoded."""
        text = self.encode_prompts(prompts).to(cond.text.device, cond.text.dtype)
        return dataclasses.replace(cond, text=text)

    def velocity(self, latents: Tensor, t: Tensor, cond: WanCondition) -> Tensor:
        """``v(x_t, t)`` of the generated latents ``(B, C, k, h, w)`` at flow times ``t (B,)``.

        The ``astra`` layout conditions as Astra does (:meth:`CameraConditionedWan.forward_with_history`); the
        ``recammaster`` one puts the image first in the latent sequence with its tokens at timestep 0.
        """
        if self.dit.layout == "astra":
            return self.dit.forward_with_history(latents, t.float() * 1000, cond.text, cond.camera, cond.image_latents)
        full = torch.cat([cond.image_latents.to(latents.dtype), latents], dim=2)
        tokens_per_frame = self.dit._tokens_per_frame(latents)
        timestep = (t.float() * 1000)[:, None].expand(-1, full.shape[2] * tokens_per_frame).clone()
        timestep[:, :tokens_per_frame] = 0  # the conditioning frame is clean
        return self.dit(full, timestep, cond.text, cond.camera)[:, :, 1:]

    @torch.no_grad()
    def decode(self, latents: Tensor, cond: WanCondition) -> Tensor:
        """Generated latents ``(B, C, k, h, w)`` to videos ``(B, 4k + 1, 3, H, W)`` in [0, 1]."""
        full = torch.cat([cond.image_latents.to(latents.dtype), latents], dim=2)
        with self._vae_on(full.device):
            pixels = self.vae.decode(self._normalize(full, inverse=True).to(self.vae.dtype)).sample
        return ((pixels.float() + 1) / 2).clamp(0, 1).permute(0, 2, 1, 3, 4)

