"""The policy's config (trl's ``ModelConfig`` counterpart) and the one function that builds a policy from it."""

from __future__ import annotations

from dataclasses import dataclass, field

from accelerate import Accelerator

from lyra_rl.training import weight_dtype

from .loading import load_pretrained
from .prompts import load_prompt_embeddings
from .wan_camera import DEFAULT_LORA_TARGETS, WanCameraPolicy


@dataclass
class PolicyConfig:
    """The camera-conditioned Wan policy: architecture, weights, adapters and memory settings.

    > Model: policy, camera_layout, num_experts, expert, wan_model_path, dit_path, prompt_embeddings.
    > Adapters: lora_r, lora_alpha, lora_target_modules, train_camera_modules.
    > Memory: gradient_checkpointing, offload_vae.
    """

    policy: str = field(default="tiny", metadata={"help": "Policy architecture: 'tiny' or 'wan2.1-1.3b'."})
    camera_layout: str = field(default="recammaster", metadata={"help": "Camera modules: 'recammaster' (per-block cam_encoder) or 'astra' (Astra's mixture of experts; its --dit_path needs it)."})
    num_experts: int = field(default=3, metadata={"help": "Camera experts per block (astra layout)."})
    expert: int = field(default=0, metadata={"help": "The expert routed to (astra layout; 0 = Astra's camera-control default)."})
    wan_model_path: str | None = field(default=None, metadata={"help": "Wan2.1 weights folder (diffusers or original layout)."})
    dit_path: str | None = field(default=None, metadata={"help": "Fine-tuned DiT with camera modules (.safetensors/.ckpt), e.g. Astra's."})
    prompt_embeddings: str | None = field(default=None, metadata={"help": "Precomputed prompt embeddings (recipes/encode_prompts.py); the text encoder is then not loaded."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: float = field(default=8.0, metadata={"help": "LoRA alpha."})
    lora_target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS), metadata={"help": "Module names that get LoRA adapters."})
    train_camera_modules: bool = field(default=True, metadata={"help": "Also train the camera modules (encoders or Astra's processor and routed expert, projectors)."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute the DiT blocks' activations in the backward pass (less memory, about 1/3 more update time)."})
    offload_vae: bool = field(default=False, metadata={"help": "Keep the VAE on the CPU between encode/decode calls (frees accelerator memory for the update)."})


def build_policy(config: PolicyConfig, seed: int = 0, accelerator: Accelerator | None = None) -> WanCameraPolicy:
    """The policy of ``config``: the named architecture (initialised from ``seed``), its pretrained weights,
    precomputed prompt embeddings, LoRA adapters, placed on the accelerator's device in the precision of its
    launch (CPU and float32 without one)."""
    device, precision = (accelerator.device, accelerator.mixed_precision) if accelerator else ("cpu", "no")
    dtype = weight_dtype(precision)  # before anything is built
    policy = WanCameraPolicy.from_config(config.policy, seed, config.camera_layout, config.num_experts, config.expert)
    load_pretrained(policy, config.wan_model_path, config.dit_path, text_encoder=config.prompt_embeddings is None)
    if config.prompt_embeddings is not None:
        policy.add_prompt_embeddings(load_prompt_embeddings(config.prompt_embeddings))
    policy.add_lora(config.lora_r, config.lora_alpha, config.lora_target_modules, config.train_camera_modules)
    if config.gradient_checkpointing:
        policy.dit.enable_gradient_checkpointing()
    return policy.place(device, dtype, config.offload_vae)
