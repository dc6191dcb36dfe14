"""The camera-conditioned Wan2.1 video DiT as a lyra-rl policy (ReCamMaster / Astra-style conditioning).

Architecture: diffusers' ``WanTransformer3DModel`` and ``AutoencoderKLWan``, plus per block
    - ``blocks.i.cam_encoder``: ``Linear(12 -> dim)``, zero-initialised, embedding the per-latent-frame
      relative camera (flattened 3x4 camera-to-world pose relative to frame 0); its output is broadcast
      over the frame's tokens and added to the input of the self-attention branch (``norm1``);
    - ``blocks.i.projector``: ``Linear(dim -> dim)``, identity-initialised, applied to the self-attention
      output.
With these initialisations the model's output equals the base model's. The conditioning image enters
as the clean first latent frame (its tokens get timestep 0, as Wan2.2's TI2V does); the policy generates
the remaining latent frames.

Convention:
    Videos ``(B, T, 3, H, W)`` in ``[0, 1]`` with ``T = 4k + 1``; generated latents ``(B, C, k, H/8, W/8)``
    (the first latent frame is the conditioning image's and is not part of the policy's sample);
    flow-matching ``t`` in ``[0, 1]`` maps to the DiT's timestep ``1000 t``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from peft import LoraConfig
from torch import Tensor, nn
from transformers import UMT5Config, UMT5EncoderModel

from lyra_rl.camera import Cameras, invert_pose, relative_to_first

CAMERA_DIM = 12

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


@dataclass
class WanCondition:
    """Conditioning of a batch.

    Attributes:
        text: prompt embeddings ``(B, L, text_dim)``.
        camera: per-latent-frame relative camera ``(B, F, 12)`` (``F`` latent frames including the first).
        image_latents: the conditioning image's latent frame ``(B, C, 1, h, w)``.
    """

    text: Tensor
    camera: Tensor
    image_latents: Tensor

    def repeat(self, times: int) -> WanCondition:
        """Each condition repeated ``times`` times in a row (a GRPO group)."""
        return WanCondition(*(x.repeat_interleave(times, dim=0) for x in (self.text, self.camera, self.image_latents)))


def camera_features(cameras: Cameras, num_latent_frames: int, temporal_stride: int = 4) -> Tensor:
    """Per-latent-frame camera features ``(B, F, 12)``: camera-to-world poses relative to frame 0, 3x4 flattened.

    Latent frame ``f`` carries the camera of video frame ``temporal_stride * f`` (the VAE's 4x temporal
    compression), as ReCamMaster samples them.
    """
    frames = torch.arange(num_latent_frames) * temporal_stride
    if frames[-1] >= cameras.num_frames:
        raise ValueError(f"{num_latent_frames} latent frames need {frames[-1] + 1} camera frames, got {cameras.num_frames}")
    world_from_cam = invert_pose(relative_to_first(cameras.cam_from_world.double()))
    return world_from_cam[:, frames, :3, :].flatten(-2).float()


class ByteTokenizer:
    """UTF-8 bytes as token ids (+3 for pad/eos/unk), for the tiny text encoder that ships no vocabulary."""

    def __init__(self, max_length: int = 32):
        self.max_length = max_length

    def __call__(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        ids = torch.zeros(len(prompts), self.max_length, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, prompt in enumerate(prompts):
            tokens = [x + 3 for x in prompt.encode()[: self.max_length - 1]] + [1]
            ids[b, : len(tokens)] = torch.tensor(tokens)
            mask[b, : len(tokens)] = 1
        return ids, mask


def _add_camera_tokens(norm1: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook on ``block.norm1``: the self-attention branch sees ``x + cam_encoder(camera)``."""
    block = norm1._lyra_block
    camera = block.cam_encoder(block._lyra_camera.to(block.cam_encoder.weight.dtype))
    return (args[0] + camera.to(args[0].dtype),) + args[1:]


def _project_attention(attn1: nn.Module, args: tuple, output: Tensor) -> Tensor:
    """Forward hook on ``block.attn1``: the self-attention output goes through ``projector``."""
    return attn1._lyra_block.projector(output)


class CameraConditionedWan(nn.Module):
    """``WanTransformer3DModel`` with ReCamMaster-style camera modules attached to every block.

    The camera modules are registered inside the diffusers blocks (``blocks.i.cam_encoder``,
    ``blocks.i.projector``), so state-dict keys match Astra/ReCamMaster checkpoints, and act through
    forward hooks on ``norm1`` (add the camera tokens to the self-attention input) and ``attn1``
    (project the self-attention output); the diffusers forward is used as is. The hooks find their
    block through a plain (unregistered) attribute, so ``copy.deepcopy`` gives an independent model.
    """

    def __init__(self, transformer: WanTransformer3DModel):
        super().__init__()
        self.transformer = transformer
        dim = transformer.config.num_attention_heads * transformer.config.attention_head_dim
        for block in transformer.blocks:
            block.cam_encoder = nn.Linear(CAMERA_DIM, dim)
            block.projector = nn.Linear(dim, dim)
            nn.init.zeros_(block.cam_encoder.weight)
            nn.init.zeros_(block.cam_encoder.bias)
            nn.init.eye_(block.projector.weight)
            nn.init.zeros_(block.projector.bias)
            for module in (block.norm1, block.attn1):
                object.__setattr__(module, "_lyra_block", block)  # not a submodule: no cycle in the state dict
            block.norm1.register_forward_pre_hook(_add_camera_tokens)
            block.attn1.register_forward_hook(_project_attention)

    def camera_parameters(self) -> Iterator[nn.Parameter]:
        for block in self.transformer.blocks:
            yield from block.cam_encoder.parameters()
            yield from block.projector.parameters()

    def forward(self, latents: Tensor, timestep: Tensor, text: Tensor, camera: Tensor) -> Tensor:
        """Velocity ``(B, C, F, h, w)`` for latents ``(B, C, F, h, w)``, per-token timesteps ``(B, F*h*w/4)``,
        text ``(B, L, D)`` and cameras ``(B, F, 12)``."""
        _, p_h, p_w = self.transformer.config.patch_size
        tokens_per_frame = (latents.shape[-2] // p_h) * (latents.shape[-1] // p_w)
        tokens = camera.repeat_interleave(tokens_per_frame, dim=1)
        for block in self.transformer.blocks:
            block._lyra_camera = tokens
        try:
            return self.transformer(latents, timestep, text, return_dict=False)[0]
        finally:
            for block in self.transformer.blocks:
                block._lyra_camera = None


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

    @classmethod
    def from_config(cls, name: str = "tiny", seed: int = 0) -> WanCameraPolicy:
        """Randomly initialised weights of a named architecture (``tiny`` or ``wan2.1-1.3b``)."""
        if name not in TRANSFORMER_CONFIGS:
            raise ValueError(f"unknown policy config {name!r}; known: {sorted(TRANSFORMER_CONFIGS)}")
        torch.manual_seed(seed)
        transformer = WanTransformer3DModel(**TRANSFORMER_CONFIGS[name])
        vae = AutoencoderKLWan(**VAE_CONFIGS[name])
        text_encoder = UMT5EncoderModel(UMT5Config(**TEXT_CONFIGS[name])) if name == "tiny" else None
        return cls(CameraConditionedWan(transformer), vae.eval(), text_encoder, ByteTokenizer() if name == "tiny" else None)

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

    @contextmanager
    def adapters_disabled(self) -> Iterator[None]:
        """The reference model: the same weights with the LoRA adapters switched off."""
        self.transformer.disable_adapters()
        try:
            yield
        finally:
            self.transformer.enable_adapters()

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Tensor:
        """Prompt embeddings ``(B, L, text_dim)``, computed once per distinct prompt and cached."""
        missing = sorted({p for p in prompts if p not in self._text_cache})
        if missing:
            if self.text_encoder is None:
                raise ValueError(f"no text encoder loaded and no cached embedding for {len(missing)} prompt(s)")
            ids, mask = self.tokenizer(missing)
            device = next(self.text_encoder.parameters()).device
            hidden = self.text_encoder(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            hidden = hidden * mask.to(device)[..., None]  # Wan zeroes the padding positions
            self._text_cache.update(zip(missing, hidden.cpu()))
        return torch.stack([self._text_cache[p] for p in prompts])

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(C, k, H/8, W/8)`` of the generated latents of a ``4k + 1``-frame video."""
        if (num_frames - 1) % 4 or num_frames < 5 or height % 16 or width % 16:
            raise ValueError(f"videos need 4k+1 frames (k >= 1) and sides divisible by 16, got {num_frames}x{height}x{width}")
        return (self.transformer.config.in_channels, (num_frames - 1) // 4, height // 8, width // 8)

    def _normalize(self, z: Tensor, inverse: bool = False) -> Tensor:
        mean = torch.tensor(self.vae.config.latents_mean, dtype=z.dtype, device=z.device).view(1, -1, 1, 1, 1)
        std = torch.tensor(self.vae.config.latents_std, dtype=z.dtype, device=z.device).view(1, -1, 1, 1, 1)
        return z * std + mean if inverse else (z - mean) / std

    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        """Videos ``(B, T, 3, H, W)`` in [0, 1] to normalised latents ``(B, C, T', H/8, W/8)`` (posterior mode)."""
        pixels = video.permute(0, 2, 1, 3, 4).to(self.vae.dtype) * 2 - 1
        return self._normalize(self.vae.encode(pixels).latent_dist.mode())

    def condition(self, images: Tensor, prompts: Sequence[str], cameras: Cameras) -> WanCondition:
        """Conditions for conditioning images ``(B, 3, H, W)`` in [0, 1], prompts and ``T = 4k + 1``-frame cameras."""
        if (cameras.num_frames - 1) % 4:
            raise ValueError(f"camera trajectories need 4k+1 frames, got {cameras.num_frames}")
        device = next(self.dit.parameters()).device
        num_latent_frames = (cameras.num_frames - 1) // 4 + 1
        return WanCondition(
            text=self.encode_prompts(prompts).to(device),
            camera=camera_features(cameras, num_latent_frames).to(device),
            image_latents=self.encode(images[:, None].to(device)),
        )

    def velocity(self, latents: Tensor, t: Tensor, cond: WanCondition) -> Tensor:
        """``v(x_t, t)`` of the generated latents ``(B, C, k, h, w)`` at flow times ``t (B,)``."""
        full = torch.cat([cond.image_latents.to(latents.dtype), latents], dim=2)
        _, p_h, p_w = self.transformer.config.patch_size
        tokens_per_frame = (latents.shape[-2] // p_h) * (latents.shape[-1] // p_w)
        timestep = (t.float() * 1000)[:, None].expand(-1, full.shape[2] * tokens_per_frame).clone()
        timestep[:, :tokens_per_frame] = 0  # the conditioning frame is clean
        return self.dit(full, timestep, cond.text, cond.camera)[:, :, 1:]

    @torch.no_grad()
    def decode(self, latents: Tensor, cond: WanCondition) -> Tensor:
        """Generated latents ``(B, C, k, h, w)`` to videos ``(B, 4k + 1, 3, H, W)`` in [0, 1]."""
        full = torch.cat([cond.image_latents.to(latents.dtype), latents], dim=2)
        pixels = self.vae.decode(self._normalize(full, inverse=True).to(self.vae.dtype)).sample
        return ((pixels.float() + 1) / 2).clamp(0, 1).permute(0, 2, 1, 3, 4)

