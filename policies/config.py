"""The policy's config (trl's ``ModelConfig`` counterpart) and the one function that builds a policy from it."""

from __future__ import annotations

from dataclasses import dataclass, field

from accelerate import Accelerator

from lyra_rl.training import weight_dtype

from .loading import load_pretrained
from .prompts import load_prompt_embeddings
from .wan_camera import DEFAULT_LORA_TARGETS, TRANSFORMER_CONFIGS, WanCameraPolicy, default_camera_layout


@dataclass
class PolicyConfig:
    """The camera-conditioned Wan policy: architecture, weights, adapters and memory settings.

    > Model: policy, camera_layout, num_experts, expert, wan_model_path, dit_path, prompt_embeddings.
    > Adapters: lora_r, lora_alpha, lora_target_modules, train_camera_modules, train_transformer.
    > Memory: gradient_checkpointing, offload_vae.
    """

    policy: str = field(
        default="tiny",
        metadata={
            "help": "Policy architecture: 'tiny', 'wan2.1-1.3b' or 'embedded' (the small world model: "
            "space-to-depth codec, dense cameras)."
        },
    )
    camera_layout: str | None = field(
        default=None,
        metadata={
            "help": "Camera conditioning: 'recammaster' (per-block cam_encoder), 'astra' (Astra's mixture of "
            "experts; its --dit_path needs it) or 'dense' (per-pixel input channels, no camera modules); default: "
            "the policy's (dense for embedded, else recammaster)."
        },
    )
    num_experts: int = field(default=3, metadata={"help": "Camera experts per block (astra layout)."})
    expert: int = field(
        default=0, metadata={"help": "The expert routed to (astra layout; 0 = Astra's camera-control default)."}
    )
    wan_model_path: str | None = field(
        default=None, metadata={"help": "Wan2.1 weights folder (diffusers or original layout)."}
    )
    dit_path: str | None = field(
        default=None,
        metadata={
            "help": "Fine-tuned DiT with camera modules (.safetensors/.ckpt, or a checkpoint folder), e.g. Astra's; "
            "'embedded': the world model that ships with the package (policy: embedded)."
        },
    )
    prompt_embeddings: str | None = field(
        default=None,
        metadata={
            "help": "Precomputed prompt embeddings (recipes/encode_prompts.py); the text encoder is then not loaded."
        },
    )
    lora_r: int = field(
        default=8,
        metadata={"help": "LoRA rank; 0: no LoRA (full fine-tuning with train_transformer, or camera modules only)."},
    )
    lora_alpha: float = field(default=8.0, metadata={"help": "LoRA alpha."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(DEFAULT_LORA_TARGETS), metadata={"help": "Module names that get LoRA adapters."}
    )
    train_camera_modules: bool = field(
        default=True,
        metadata={
            "help": "Also train the camera modules (encoders or Astra's processor and routed expert, projectors; "
            "the dense layout has none)."
        },
    )
    train_transformer: bool = field(
        default=False,
        metadata={
            "help": "Train every DiT weight (full fine-tuning, e.g. the embedded world model from scratch; needs "
            "lora_r: 0). Checkpoints then hold diffusion_pytorch_model.safetensors, and there is no reference model "
            "for a KL term."
        },
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "Recompute the DiT blocks' activations in the backward pass (less memory, about 1/3 more update "
            "time)."
        },
    )
    offload_vae: bool = field(
        default=False,
        metadata={
            "help": "Keep the VAE on the CPU between encode/decode calls (frees accelerator memory for the update)."
        },
    )

    def __post_init__(self) -> None:
        if self.policy not in TRANSFORMER_CONFIGS:
            raise ValueError(f"unknown policy {self.policy!r}; known: {sorted(TRANSFORMER_CONFIGS)}")
        self.camera_layout = self.camera_layout or default_camera_layout(self.policy)
        if self.lora_r < 0:
            raise ValueError(f"lora_r must be >= 0 (0: no LoRA), got {self.lora_r}")
        if self.train_transformer and self.lora_r:
            raise ValueError(
                "train_transformer trains every DiT weight, so LoRA adapters have nothing to add: "
                f"set lora_r: 0 (got {self.lora_r})"
            )
        if not (
            self.train_transformer or self.lora_r or (self.train_camera_modules and self.camera_layout != "dense")
        ):
            raise ValueError(
                "nothing to train: set lora_r > 0, train_transformer, or train_camera_modules with a layout "
                "that has camera modules"
            )


def build_policy(config: PolicyConfig, seed: int = 0, accelerator: Accelerator | None = None) -> WanCameraPolicy:
    """The policy of ``config``: the named architecture (initialised from ``seed``), its pretrained weights,
    precomputed prompt embeddings, LoRA adapters (or the whole DiT trained, or only its camera modules), placed
    on the accelerator's device in the precision of its launch (CPU and float32 without one)."""
    device, precision = (accelerator.device, accelerator.mixed_precision) if accelerator else ("cpu", "no")
    dtype = weight_dtype(precision)  # before anything is built
    policy = WanCameraPolicy.from_config(config.policy, seed, config.camera_layout, config.num_experts, config.expert)
    load_pretrained(policy, config.wan_model_path, config.dit_path, text_encoder=config.prompt_embeddings is None)
    if config.prompt_embeddings is not None:
        policy.add_prompt_embeddings(load_prompt_embeddings(config.prompt_embeddings))
    if config.train_transformer:
        policy.train_transformer()
    elif config.lora_r:
        policy.add_lora(config.lora_r, config.lora_alpha, config.lora_target_modules, config.train_camera_modules)
    else:
        policy.freeze(config.train_camera_modules)
    if config.gradient_checkpointing:
        policy.dit.enable_gradient_checkpointing()
    return policy.place(device, dtype, config.offload_vae)
