"""The camera-conditioned Wan2.1 video DiT as a lyra-rl policy (ReCamMaster / Astra-style or dense conditioning).

Architecture: the camera-conditioned ``WanTransformer3DModel`` (:mod:`policies.camera_dit`: the three camera
layouts), a video codec (``AutoencoderKLWan``, or the lossless :class:`~policies.codecs.SpaceToDepthCodec` of the
small ``embedded`` world model) and a UMT5 text encoder. In the ``recammaster`` layout the conditioning image
enters as the clean first latent frame (its tokens get timestep 0, as Wan2.2's TI2V does), in the ``astra``
layout as Astra's clean history, in the ``dense`` layout as input channels of every generated frame; the
policy generates the remaining latent frames.

Convention:
    Videos ``(B, T, 3, H, W)`` in ``[0, 1]``; with Wan's VAE ``T = 4k + 1`` and generated latents
    ``(B, C, k, H/8, W/8)``, with the space-to-depth codec any ``T >= 2`` and generated latents
    ``(B, 3 f^2, T - 1, H/f, W/f)`` (the first latent frame is the conditioning image's and is not part of the
    policy's sample); flow-matching ``t`` in ``[0, 1]`` maps to the DiT's timestep ``1000 t``.
    Cameras: docs/conventions.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from diffusers.loaders import WanLoraLoaderMixin
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.distributed.fsdp import fully_shard
from transformers import UMT5Config, UMT5EncoderModel

from lyra_rl.camera import Cameras, relative_to_first

from .camera_dit import CAMERA_LAYOUTS, CameraConditionedWan, camera_features
from .codecs import WAN_VAE_STRIDES, SpaceToDepthCodec, check_wan_vae_video_size
from .dense_camera import dense_in_channels, downscale_intrinsics, plucker_rays, warp_first_frame
from .loading import read_state_dict
from .prompts import ByteTokenizer, embed_prompts

__all__ = [
    "CAMERA_LAYOUTS",
    "TRANSFORMER_CONFIGS",
    "CameraConditionedWan",
    "WanCameraPolicy",
    "WanCondition",
    "camera_features",
]

# Named architectures. "wan2.1-1.3b" are the published Wan2.1-T2V-1.3B shapes; "embedded" is the small world
# model whose weights ship with the package (space-to-depth codec, dense layout: its in_channels grow by the
# dense conditioning, see CameraConditionedWan).
# What every named architecture shares: Wan2.1's 2x2 patches and its normalisations.
WAN_BLOCKS = dict(patch_size=(1, 2, 2), cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6)
TRANSFORMER_CONFIGS = {
    "tiny": dict(
        **WAN_BLOCKS,
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=4,
        text_dim=32,
        freq_dim=32,
        ffn_dim=64,
        num_layers=2,
        rope_max_seq_len=64,
    ),
    "wan2.1-1.3b": dict(
        **WAN_BLOCKS,
        num_attention_heads=12,
        attention_head_dim=128,
        in_channels=16,
        out_channels=16,
        text_dim=4096,
        freq_dim=256,
        ffn_dim=8960,
        num_layers=30,
    ),
    "embedded": dict(
        **WAN_BLOCKS,
        num_attention_heads=3,
        attention_head_dim=64,
        in_channels=48,
        out_channels=48,
        text_dim=32,
        freq_dim=64,
        ffn_dim=768,
        num_layers=4,
        rope_max_seq_len=64,
    ),
}
DEFAULT_CAMERA_LAYOUTS = {"embedded": "dense"}  # config -> its camera layout where it is not "recammaster"
CODEC_CONFIGS = {"embedded": dict(factor=4)}  # space-to-depth codecs; the other configs use VAE_CONFIGS
# What the DiT's output is, where it is not the velocity (docs/policies.md#what-the-dit-predicts): "sample" is x0;
# "warp_residual" is x0 minus frame 0 warped into each commanded camera (the dense layout's hint), the embedded
# world model's ("sample" in the other layouts, which have no warp). The velocity is then (x_t - x0) / max(t, 0.05).
PREDICTIONS = {"embedded": "warp_residual"}
SAMPLE_PREDICTION_MIN_T = 0.05
VAE_CONFIGS = {
    "tiny": dict(
        base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, latents_mean=[0.0] * 4, latents_std=[1.0] * 4
    ),
    "wan2.1-1.3b": dict(),  # diffusers' defaults are Wan2.1's VAE
}
TINY_TEXT_CONFIG = dict(
    vocab_size=260,
    d_model=32,
    d_kv=8,
    d_ff=64,
    num_layers=2,
    num_heads=4,
    feed_forward_proj="gated-gelu",
    dropout_rate=0.0,
)
TEXT_CONFIGS = {
    "tiny": TINY_TEXT_CONFIG,
    "embedded": TINY_TEXT_CONFIG,
    "wan2.1-1.3b": dict(
        vocab_size=256384,
        d_model=4096,
        d_kv=64,
        d_ff=10240,
        num_layers=24,
        num_heads=64,
        feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=32,
    ),
}
DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2")
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' file name of a LoRA
CAMERA_WEIGHTS = "camera_modules.safetensors"
DIT_WEIGHTS = "diffusion_pytorch_model.safetensors"  # the whole DiT, keyed as diffusers' WanTransformer3DModel
BYTE_TOKENIZED = ("tiny", "embedded")  # configs whose small text encoder is built here, with the byte tokenizer


def default_camera_layout(config: str) -> str:
    """The camera layout a named config is built with unless one is asked for: ``dense`` for ``embedded``, else
    ``recammaster``."""
    return DEFAULT_CAMERA_LAYOUTS.get(config, "recammaster")


@dataclass
class WanCondition:
    """Conditioning of a batch.

    Attributes:
        text: prompt embeddings ``(B, L, text_dim)``.
        camera: per-latent-frame camera features ``(B, F, 12 or 13)`` (``F`` latent frames including the first;
            see :func:`camera_features`); in the dense layout per-pixel maps ``(B, C + 6, F, h, w)``: the warped
            conditioning frame's latents and the Plücker rays (see :meth:`WanCameraPolicy.condition`).
        image_latents: the conditioning image's latent frame ``(B, C, 1, h, w)``.
    """

    text: Tensor
    camera: Tensor
    image_latents: Tensor

    def repeat(self, times: int) -> WanCondition:
        """Each condition repeated ``times`` times in a row (a GRPO group)."""
        return WanCondition(*(x.repeat_interleave(times, dim=0) for x in (self.text, self.camera, self.image_latents)))

    def __getitem__(self, index: slice | Tensor) -> WanCondition:
        """The conditions of a sub-batch (a micro-batch of the update), a slice or a 1-D tensor of rows."""
        return WanCondition(self.text[index], self.camera[index], self.image_latents[index])


class WanCameraPolicy(nn.Module):
    """Image-to-video Wan2.1 DiT conditioned on prompts and camera trajectories, with LoRA adapters or fully
    fine-tuned (:meth:`train_transformer`).

    Args:
        dit: the camera-conditioned transformer.
        vae: the video codec (frozen): the Wan VAE, or a :class:`~policies.codecs.SpaceToDepthCodec`.
        text_encoder: UMT5 encoder used by :meth:`encode_prompts` (frozen; embeddings are cached per
            prompt so it can be dropped from accelerator memory once the prompts are known).
        tokenizer: callable ``prompts -> (ids, mask)``.
    """

    def __init__(
        self,
        dit: CameraConditionedWan,
        vae: AutoencoderKLWan | SpaceToDepthCodec,
        text_encoder: UMT5EncoderModel | None,
        tokenizer,
    ):
        super().__init__()
        self.dit = dit
        self.vae = vae.requires_grad_(False)
        self.text_encoder = text_encoder.requires_grad_(False).eval() if text_encoder is not None else None
        self.tokenizer = tokenizer
        self._text_cache: dict[str, Tensor] = {}
        self.offload_vae = False
        self._lora_layers: list[BaseTunerLayer] = []  # set by add_lora
        self._trains_transformer = False  # set by train_transformer
        self._camera_reference: list[tuple[nn.Parameter, Tensor]] = []  # set by freeze: (camera weight, its start)
        self.prediction = "velocity"  # what the DiT predicts: "velocity", "sample" or "warp_residual" (PREDICTIONS)

    @classmethod
    def from_config(
        cls, name: str = "tiny", seed: int = 0, camera_layout: str | None = None, num_experts: int = 3, expert: int = 0
    ) -> WanCameraPolicy:
        """Randomly initialised weights of a named architecture (``tiny``, ``wan2.1-1.3b`` or ``embedded``) with
        its camera conditioning in ``camera_layout`` (default: the config's, :func:`default_camera_layout`; see
        :class:`CameraConditionedWan`)."""
        if name not in TRANSFORMER_CONFIGS:
            raise ValueError(f"unknown policy config {name!r}; known: {sorted(TRANSFORMER_CONFIGS)}")
        layout = camera_layout or default_camera_layout(name)
        config = dict(TRANSFORMER_CONFIGS[name])
        if layout == "dense":
            config["in_channels"] = dense_in_channels(config["out_channels"])
        torch.manual_seed(seed)
        transformer = WanTransformer3DModel(**config)
        vae = (
            SpaceToDepthCodec(**CODEC_CONFIGS[name])
            if name in CODEC_CONFIGS
            else AutoencoderKLWan(**VAE_CONFIGS[name])
        )
        text_encoder = UMT5EncoderModel(UMT5Config(**TEXT_CONFIGS[name])) if name in BYTE_TOKENIZED else None
        dit = CameraConditionedWan(transformer, layout, num_experts, expert)
        policy = cls(dit, vae.eval(), text_encoder, ByteTokenizer() if name in BYTE_TOKENIZED else None)
        prediction = PREDICTIONS.get(name, "velocity")
        policy.prediction = "sample" if prediction == "warp_residual" and layout != "dense" else prediction  # no warp
        return policy

    @property
    def transformer(self) -> WanTransformer3DModel:
        return self.dit.transformer

    def add_lora(
        self,
        rank: int,
        alpha: float,
        target_modules: Sequence[str] = DEFAULT_LORA_TARGETS,
        train_camera: bool = True,
        adapter_name: str = "default",
    ) -> None:
        """Freezes the base model and adds LoRA adapters; camera modules stay trainable if ``train_camera``."""
        if self._trains_transformer:
            raise ValueError(
                "the whole DiT is trained (train_transformer): LoRA adapters would train a part of it twice"
            )
        self.dit.requires_grad_(False)
        self.transformer.add_adapter(  # peft freezes all but the adapters
            LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(target_modules), init_lora_weights=True),
            adapter_name=adapter_name,
        )
        for param in self.dit.camera_parameters():
            param.requires_grad_(train_camera)
        self._lora_layers = [m for m in self.transformer.modules() if isinstance(m, BaseTunerLayer)]

    def freeze(self, train_camera: bool = True) -> None:
        """Freezes the DiT except, if ``train_camera``, its camera modules (none in the dense layout): Lyra's mode.
        Their weights now are kept as the reference's (:meth:`adapters_disabled`)."""
        self.dit.requires_grad_(False)
        for param in self.dit.camera_parameters():
            param.requires_grad_(train_camera)
        self._camera_reference = (
            [(param, param.detach().clone()) for param in self.dit.camera_parameters()] if train_camera else []
        )

    def train_transformer(self) -> None:
        """Full fine-tuning: every DiT weight (camera modules included) is trained, without LoRA (the embedded
        world model is trained from scratch this way). The policy then has no reference model
        (:meth:`adapters_disabled`)."""
        if self._lora_layers:
            raise ValueError("the policy has LoRA adapters: full fine-tuning trains the DiT's own weights instead")
        self.dit.requires_grad_(True)
        self._trains_transformer = True

    def trained_parameters(self) -> dict[str, nn.Parameter]:
        """The trained weights (LoRA and trained camera modules, or the whole DiT) by their checkpoint key:
        ``transformer.`` + their name in the DiT, LoRA's without the adapter name (the keys diffusers and peft
        save a LoRA under)."""
        adapter = f".{next(iter(self.transformer.peft_config))}." if self._lora_layers else None
        return {
            f"transformer.{name.replace(adapter, '.') if adapter else name}": param
            for name, param in self.transformer.named_parameters()
            if param.requires_grad
        }

    def save_trained_weights(self, directory: str | Path, state: dict[str, Tensor]) -> None:
        """Writes whole trained weights keyed as :meth:`trained_parameters`: the LoRA as diffusers does
        (:data:`LORA_WEIGHTS` with the adapter's rank and alpha as metadata, so ``WanPipeline.load_lora_weights
        (directory)`` applies it at the trained scale) and the camera modules beside it (:data:`CAMERA_WEIGHTS`,
        keyed as ReCamMaster and Astra checkpoints are, but only the trained modules); a fully trained DiT as
        :data:`DIT_WEIGHTS`, keyed as diffusers' ``WanTransformer3DModel`` state dict (camera modules included,
        as ReCamMaster's checkpoints hold them), which ``load_pretrained(policy, dit_path=...)`` loads."""
        if self._trains_transformer:
            save_file({k.removeprefix("transformer."): v for k, v in state.items()}, Path(directory) / DIT_WEIGHTS)
            return
        if self._lora_layers:
            (config,) = self.transformer.peft_config.values()
            lora = {k.removeprefix("transformer."): v for k, v in state.items() if "lora_" in k}
            WanLoraLoaderMixin.save_lora_weights(
                directory, transformer_lora_layers=lora, transformer_lora_adapter_metadata=config.to_dict()
            )
        camera = {k: v for k, v in state.items() if "lora_" not in k}
        if camera:
            save_file(camera, Path(directory) / CAMERA_WEIGHTS)

    @staticmethod
    def read_trained_weights(directory: str | Path) -> dict[str, Tensor]:
        """What :meth:`save_trained_weights` wrote to ``directory`` (a file that does not load is a
        :class:`~lyra_rl.errors.WeightsError` naming it)."""
        directory = Path(directory)
        if (directory / DIT_WEIGHTS).is_file():
            return {f"transformer.{k}": v for k, v in read_state_dict(directory / DIT_WEIGHTS).items()}
        files = [directory / name for name in (LORA_WEIGHTS, CAMERA_WEIGHTS) if (directory / name).is_file()]
        if not files:
            raise FileNotFoundError(
                f"no trained weights in {directory}: expected {LORA_WEIGHTS}, {CAMERA_WEIGHTS} or {DIT_WEIGHTS}"
            )
        return {key: value for file in files for key, value in read_state_dict(file).items()}

    @contextmanager
    def adapters_disabled(self) -> Iterator[None]:
        """The reference model: the LoRA adapters switched off (layer by layer over the layers :meth:`add_lora`
        found: diffusers' ``disable_adapters`` walks every module, at each reference pass); camera modules trained
        beside a LoRA stay as they are (they are not adapters). In Lyra's mode (no LoRA, camera modules trained:
        :meth:`freeze`) the camera modules at the weights they had when frozen, swapped in for the block (one copy
        of the camera modules, on their device)."""
        if not (self._lora_layers or self._camera_reference):
            raise ValueError(
                "the policy has no reference model: add LoRA adapters (add_lora) or train its camera modules only "
                "(freeze(train_camera=True))"
            )
        trained = [param.data for param, _ in self._camera_reference]
        for param, start in self._camera_reference:
            param.data = start
        for layer in self._lora_layers:
            layer.enable_adapters(False)
        try:
            yield
        finally:
            for layer in self._lora_layers:
                layer.enable_adapters(True)
            for (param, _), data in zip(self._camera_reference, trained):
                param.data = data

    def place(
        self, device: torch.device | str, dtype: torch.dtype = torch.float32, offload_vae: bool = False
    ) -> WanCameraPolicy:
        """Moves the DiT and the VAE to ``device`` for mixed-precision training: the DiT's frozen weights in
        ``dtype`` (bf16 on GPUs) except the modules diffusers keeps in float32 (norms, time embedder,
        modulation tables, RoPE); trainable weights (LoRA, trained camera modules) and the VAE, whose frames
        the rewards score, in float32. With ``offload_vae`` the VAE stays on the CPU and visits ``device`` for
        each encode and decode call only. The text encoder stays on the CPU: it only embeds prompts not
        cached yet."""
        keep = set(self.transformer._keep_in_fp32_modules or ())
        self.dit.to(device)
        self._camera_reference = [(param, start.to(device)) for param, start in self._camera_reference]
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
        if self._camera_reference:
            raise ValueError(
                "Lyra's mode (camera modules trained, no LoRA) keeps its reference camera weights whole: train it "
                "with DDP (recipes/configs/accelerate_ddp.yaml), not sharded"
            )
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
                raise ValueError(
                    f"no text encoder loaded and no cached embedding for {len(missing)} prompt(s), e.g. "
                    f"{missing[0]!r}: "
                    "precompute them with recipes/encode_prompts.py"
                )
            self._text_cache.update(zip(missing, embed_prompts(self.text_encoder, self.tokenizer, missing).cpu()))
        return torch.stack([self._text_cache[p] for p in prompts])

    @staticmethod
    def check_video_size(num_frames: int, height: int, width: int, config: str = "tiny") -> None:
        """The sizes the named config generates, else a ``ValueError`` naming the size that does not fit: with Wan's
        VAE ``4k + 1`` frames (``k >= 1``) and sides divisible by 16; with a space-to-depth codec (``embedded``)
        :meth:`SpaceToDepthCodec.check_video_size`. Checked before anything is built."""
        if config not in TRANSFORMER_CONFIGS:
            raise ValueError(f"unknown policy config {config!r}; known: {sorted(TRANSFORMER_CONFIGS)}")
        if config in CODEC_CONFIGS:
            patch = TRANSFORMER_CONFIGS[config]["patch_size"][1]
            SpaceToDepthCodec(**CODEC_CONFIGS[config]).check_video_size(num_frames, height, width, patch)
        else:
            check_wan_vae_video_size(num_frames, height, width)

    def _check_video_size(self, num_frames: int, height: int, width: int) -> None:
        """:meth:`check_video_size` of this policy's codec."""
        if isinstance(self.vae, SpaceToDepthCodec):
            self.vae.check_video_size(num_frames, height, width, self.transformer.config.patch_size[1])
        else:
            check_wan_vae_video_size(num_frames, height, width)

    @property
    def strides(self) -> tuple[int, int]:
        """``(temporal, spatial)`` compression of the codec: ``(4, 8)`` (Wan's VAE) or ``(1, f)`` (space-to-depth)."""
        if isinstance(self.vae, SpaceToDepthCodec):
            return self.vae.temporal_stride, self.vae.spatial_stride
        return WAN_VAE_STRIDES

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(C, F - 1, H/s, W/s)`` of the generated latents of a ``T``-frame video, ``F = (T - 1) / stride + 1``
        latent frames in all (Wan's VAE: ``(C, k, H/8, W/8)`` for ``T = 4k + 1``; :meth:`check_video_size`)."""
        self._check_video_size(num_frames, height, width)
        temporal, spatial = self.strides
        channels = self.transformer.config.out_channels
        return (channels, (num_frames - 1) // temporal, height // spatial, width // spatial)

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
        """Videos ``(B, T, 3, H, W)`` in [0, 1] to normalised latents ``(B, C, T', H/8, W/8)`` (posterior mode), or
        with the space-to-depth codec ``(B, 3 f^2, T, H/f, W/f)``."""
        if isinstance(self.vae, SpaceToDepthCodec):
            return self.vae.encode(video)
        pixels = video.permute(0, 2, 1, 3, 4).to(self.vae.dtype) * 2 - 1
        with self._vae_on(pixels.device):
            return self._normalize(self.vae.encode(pixels).latent_dist.mode())

    def generated_latents(self, videos: Tensor) -> Tensor:
        """The latents ``(B, C, k, H/8, W/8)`` the policy generates for videos ``(B, 4k + 1, 3, H, W)`` (SFT's
        targets; :meth:`latent_shape` for the space-to-depth codec): their encoding without the first latent
        frame, which is the conditioning image's."""
        return self.encode(videos)[:, :, 1:]

    def condition(self, images: Tensor, prompts: Sequence[str], cameras: Cameras) -> WanCondition:
        """Conditions for conditioning images ``(B, 3, H, W)`` in [0, 1], prompts and ``T``-frame cameras
        (``T = 4k + 1`` with Wan's VAE; :meth:`check_video_size`)."""
        self._check_video_size(cameras.num_frames, *images.shape[-2:])
        device = next(self.dit.parameters()).device
        temporal = self.strides[0]
        num_latent_frames = (cameras.num_frames - 1) // temporal + 1
        images = images.to(device)
        camera = (
            self._dense_camera(images, cameras.to(device))
            if self.dit.layout == "dense"
            else camera_features(cameras, num_latent_frames, self.dit.layout, temporal).to(device)
        )
        return WanCondition(
            text=self.encode_prompts(prompts).to(
                device, self.transformer.condition_embedder.text_embedder.linear_1.weight.dtype
            ),
            camera=camera,
            image_latents=self.encode(images[:, None]),
        )

    def _dense_camera(self, images: Tensor, cameras: Cameras) -> Tensor:
        """The dense layout's per-pixel camera maps ``(B, C + 6, F, h, w)`` for images ``(B, 3, H, W)``: the image
        warped into every commanded camera (:func:`~policies.dense_camera.warp_first_frame`) and encoded, then the
        Plücker rays of latent frame ``f`` (video frame ``stride * f``), in the first camera's frame, at latent
        resolution."""
        temporal, spatial = self.strides
        frames = torch.arange(0, cameras.num_frames, temporal, device=images.device)
        cam_from_world = relative_to_first(cameras.cam_from_world.double())[:, frames]
        intrinsics = downscale_intrinsics(cameras.intrinsics.double()[:, frames], spatial)
        height, width = images.shape[-2] // spatial, images.shape[-1] // spatial
        rays = plucker_rays(cam_from_world, intrinsics, height, width).transpose(1, 2)
        warped = self.encode(warp_first_frame(images, cameras.cam_from_world, cameras.intrinsics))
        return torch.cat([warped, rays.to(warped.dtype)], dim=1)

    def with_prompts(self, cond: WanCondition, prompts: Sequence[str]) -> WanCondition:
        """``cond`` with other prompts (e.g. the negative prompt of classifier-free guidance), images not
        re-encoded."""
        text = self.encode_prompts(prompts).to(cond.text.device, cond.text.dtype)
        return dataclasses.replace(cond, text=text)

    def velocity(self, latents: Tensor, t: Tensor, cond: WanCondition) -> Tensor:
        """``v(x_t, t)`` of the generated latents ``(B, C, k, h, w)`` at flow times ``t (B,)``: the DiT's output, or
        ``(x_t - x0) / max(t, 0.05)`` of the ``x0`` it predicts (:data:`PREDICTIONS`)."""
        out = self._transformer_output(latents, t, cond)
        if self.prediction == "velocity":
            return out
        x0 = out + cond.camera[:, : out.shape[1], 1:].to(out.dtype) if self.prediction == "warp_residual" else out
        scale = t.to(out.dtype).clamp_min(SAMPLE_PREDICTION_MIN_T).view(-1, *([1] * (out.ndim - 1)))
        return (latents.to(out.dtype) - x0) / scale

    def _transformer_output(self, latents: Tensor, t: Tensor, cond: WanCondition) -> Tensor:
        """The DiT's prediction for the generated latents ``(B, C, k, h, w)`` at flow times ``t (B,)``.

        The ``astra`` layout conditions as Astra does (:meth:`CameraConditionedWan.forward_with_history`); the
        ``recammaster`` one puts the image first in the latent sequence with its tokens at timestep 0; the
        ``dense`` one gives every generated frame the image's latents and its frame's camera maps as channels.
        """
        if self.dit.layout == "dense":
            image = cond.image_latents.expand(-1, -1, latents.shape[2], -1, -1)
            return self.dit(latents, t.float() * 1000, cond.text, torch.cat([image, cond.camera[:, :, 1:]], dim=1))
        if self.dit.layout == "astra":
            return self.dit.forward_with_history(latents, t.float() * 1000, cond.text, cond.camera, cond.image_latents)
        full = torch.cat([cond.image_latents.to(latents.dtype), latents], dim=2)
        tokens_per_frame = self.dit._tokens_per_frame(latents)
        timestep = (t.float() * 1000)[:, None].expand(-1, full.shape[2] * tokens_per_frame).clone()
        timestep[:, :tokens_per_frame] = 0  # the conditioning frame is clean
        return self.dit(full, timestep, cond.text, cond.camera)[:, :, 1:]

    @torch.no_grad()
    def decode(self, latents: Tensor, cond: WanCondition) -> Tensor:
        """Generated latents ``(B, C, k, h, w)`` to videos ``(B, 4k + 1, 3, H, W)`` in [0, 1] (space-to-depth codec:
        ``(B, k + 1, 3, H, W)``)."""
        full = torch.cat([cond.image_latents.to(latents.dtype), latents], dim=2)
        if isinstance(self.vae, SpaceToDepthCodec):
            return self.vae.decode(full.float())
        with self._vae_on(full.device):
            pixels = self.vae.decode(self._normalize(full, inverse=True).to(self.vae.dtype)).sample
        return ((pixels.float() + 1) / 2).clamp(0, 1).permute(0, 2, 1, 3, 4)
