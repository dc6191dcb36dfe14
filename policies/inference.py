"""Generating with the camera-conditioned Wan policy from the command line: the seed's ``infer_demo.py``,
argument for argument, plus LoRA adapters at a scale (``recipes/infer.py``, ``lyra-rl infer``).

python recipes/infer.py --dit_path ../models/Astra/checkpoints/diffusion_pytorch_model.ckpt \\
    --wan_model_path ../models/Wan-AI/Wan2.1-T2V-1.3B \\
    --condition_image garden_1.png --direction forward_left --prompt "A sunlit European street ..." \\
    --output_path output.mp4 [--lora outputs/grpo/checkpoint-100:0.8 ...] [--score true]
lyra-rl infer --config embedded --condition_image room.png --direction left --prompt "a room"

One video: the first frame (resized to the video's size), the prompt and the commanded camera path (a preset or
a trajectory file, intrinsics of a 70° horizontal field of view) -> the Euler ODE from seeded noise
(:func:`~lyra_rl.rollout.ode_sample`, classifier-free guidance when ``guidance_scale != 1``) -> the mp4 at
``output_path`` and the commanded path drawn from above beside it (``<stem>_camera.png``); ``--score`` prints the
reward table of the result as ``lyra-rl score`` does. Every input (files, direction, video size, adapters) is
checked before any weight is loaded.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers.loaders import WanLoraLoaderMixin
from peft import LoraConfig
from peft.utils import CONFIG_NAME as PEFT_CONFIG
from peft.utils import SAFETENSORS_WEIGHTS_NAME as PEFT_WEIGHTS
from safetensors import safe_open
from trl import TrlParser

from lyra_rl.cli import DEFAULT_REWARDS, print_reward_table, reward_rows
from lyra_rl.data.conditions import ConditionEntry, direction_problem, image_problem, user_conditions
from lyra_rl.errors import WeightsError
from lyra_rl.export import PEFT_PREFIX
from lyra_rl.reward import RewardSet, resolve_reward_class
from lyra_rl.rollout import ode_sample
from lyra_rl.training import latest_checkpoint
from lyra_rl.training.trainer import policy_conditions
from lyra_rl.video import plot_trajectories, write_video

from .loading import camera_layout_of, load_pretrained, read_state_dict
from .training import exit_with_error
from .wan_camera import CAMERA_WEIGHTS, DIT_WEIGHTS, LORA_WEIGHTS, TRANSFORMER_CONFIGS, WanCameraPolicy

#: What a named model generates unless told otherwise: the seed's 832x480 and Wan2.1's 81 frames, 50 steps, flow
#: shift 5 and guidance 5 for ``wan2.1-1.3b``; the sizes and sampler the small models were trained and tuned with.
MODEL_DEFAULTS = {
    "wan2.1-1.3b": dict(num_frames=81, height=480, width=832, num_inference_steps=50, shift=5.0, guidance_scale=5.0),
    "embedded": dict(num_frames=9, height=64, width=96, num_inference_steps=10, shift=3.0, guidance_scale=1.0),
    "tiny": dict(num_frames=17, height=64, width=96, num_inference_steps=16, shift=5.0, guidance_scale=1.0),
}


@dataclass
class InferConfig:
    """One generated video: the model, its adapters, the condition and the sampler.

    > Model: policy (or ``--config NAME``; ``--config FILE`` is a YAML of these flags), camera_layout,
    > wan_model_path, dit_path, prompt_embeddings, lora.
    > Condition: condition_image, prompt, direction or trajectory.
    > Video and sampler (default: the model's, MODEL_DEFAULTS): num_frames, height, width, num_inference_steps,
    > shift, guidance_scale, negative_prompt, seed, fps.
    > Output: output_path, score, rewards.
    """

    condition_image: str = field(default="", metadata={"help": "The first frame (PNG, JPEG...), resized."})
    prompt: str = field(default="", metadata={"help": "What the video shows."})
    direction: str | None = field(
        default=None, metadata={"help": "A preset camera path (forward, left, forward_left...); default forward."}
    )
    trajectory: str | None = field(
        default=None, metadata={"help": "A trajectory file instead of --direction (docs/conventions.md), resampled."}
    )
    output_path: str = field(default="output.mp4", metadata={"help": "The mp4; its path plot goes beside it."})
    policy: str = field(
        default="wan2.1-1.3b",
        metadata={
            "help": "Model (also --config NAME): 'wan2.1-1.3b' (needs --wan_model_path or --dit_path), 'embedded' "
            "(the world model that ships with the package) or 'tiny' (random weights, for trying the command)."
        },
    )
    camera_layout: str | None = field(
        default=None,
        metadata={"help": "Camera conditioning: 'recammaster', 'astra' (Astra's) or 'dense' (default: the model's)."},
    )
    wan_model_path: str | None = field(default=None, metadata={"help": "Wan2.1 weights folder (either layout)."})
    dit_path: str | None = field(
        default=None,
        metadata={"help": "Fine-tuned DiT with camera modules (e.g. Astra's .ckpt); the embedded model's by default."},
    )
    prompt_embeddings: str | None = field(
        default=None, metadata={"help": "Precomputed prompt embeddings (recipes/encode_prompts.py): no text encoder."}
    )
    lora: list[str] = field(
        default_factory=list,
        metadata={
            "help": "LoRA adapters after one --lora, PATH[:SCALE] each (scale 1 by default; camera modules beside a "
            "LoRA load whole, unscaled): a training checkpoint or run folder, an exported folder, or a .safetensors "
            "file in diffusers' or Wan's key names."
        },
    )
    num_frames: int | None = field(default=None, metadata={"help": "Frames (4k+1 with Wan's VAE)."})
    height: int | None = field(default=None, metadata={"help": "Video height (480 for wan2.1-1.3b)."})
    width: int | None = field(default=None, metadata={"help": "Video width (832 for wan2.1-1.3b)."})
    num_inference_steps: int | None = field(default=None, metadata={"help": "Euler ODE steps."})
    shift: float | None = field(default=None, metadata={"help": "Flow shift of the timestep schedule."})
    guidance_scale: float | None = field(default=None, metadata={"help": "Classifier-free guidance (1: none)."})
    negative_prompt: str = field(default="", metadata={"help": "The negative prompt of guidance."})
    seed: int = field(default=0, metadata={"help": "Seed of the initial noise."})
    fps: float = field(default=16.0, metadata={"help": "Frame rate of the mp4."})
    device: str = field(
        default="auto",
        metadata={"help": "Where to generate: 'auto' (cuda if there is one, with bf16 DiT weights), 'cuda', 'cpu'."},
    )
    score: bool = field(default=False, metadata={"help": "Print the reward table of the generated video."})
    rewards: list[str] = field(
        default_factory=lambda: list(DEFAULT_REWARDS), metadata={"help": "The rewards --score prints."}
    )

    def __post_init__(self) -> None:
        if self.policy not in TRANSFORMER_CONFIGS:
            raise ValueError(f"unknown model {self.policy!r}; known: {sorted(TRANSFORMER_CONFIGS)}")
        for name, value in MODEL_DEFAULTS[self.policy].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.policy == "embedded" and self.dit_path is None:
            self.dit_path = "embedded"

    @property
    def resolved_device(self) -> str:
        """``device``, ``auto`` resolved."""
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    @property
    def commanded_path(self) -> str:
        """The trajectory file, else the preset (``forward`` by default)."""
        return self.trajectory or self.direction or "forward"

    @property
    def path_plot(self) -> Path:
        """Where the commanded path is drawn: ``<output stem>_camera.png`` beside the mp4."""
        output = Path(self.output_path)
        return output.with_name(f"{output.stem}_camera.png")


def parse_lora(spec: str) -> tuple[Path, float]:
    """``PATH[:SCALE]`` -> the path and its scale (1 without one)."""
    path, _, scale = spec.rpartition(":")
    if path:
        try:
            return Path(path), float(scale)
        except ValueError:
            pass
    return Path(spec), 1.0


#: What the keys of a LoRA file hold, in diffusers', peft's and Wan's original key names.
LORA_KEY_PARTS = (".lora_A.", ".lora_B.", ".lora_down.", ".lora_up.")


def lora_files(path: Path) -> tuple[Path | None, Path | None]:
    """The LoRA file and camera-module file of a ``--lora`` path (either may be ``None``, not both): a
    ``.safetensors`` file, or a folder holding :data:`LORA_WEIGHTS` / :data:`CAMERA_WEIGHTS` (a training
    checkpoint or an export), a peft adapter folder, or a run folder (its last checkpoint)."""
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(f"--lora {path}: expected a .safetensors LoRA file or a folder")
        try:
            with safe_open(path, "pt") as file:
                keys = list(file.keys())
        except Exception as error:
            raise WeightsError(f"--lora {path}: does not load ({type(error).__name__}: {error})") from error
        if not any(part in key for key in keys for part in LORA_KEY_PARTS):
            raise ValueError(f"--lora {path}: holds no LoRA weights (a whole DiT? pass it as --dit_path)")
        return path, None
    if not path.is_dir():
        raise FileNotFoundError(f"--lora {path}: no such file or folder")
    folder = latest_checkpoint(path) or path
    if (folder / DIT_WEIGHTS).is_file():
        raise ValueError(f"--lora {path}: {folder / DIT_WEIGHTS} is a whole fine-tuned DiT; pass it as --dit_path")
    lora = folder / (PEFT_WEIGHTS if (folder / PEFT_CONFIG).is_file() else LORA_WEIGHTS)  # peft's folder, or ours
    camera = folder / CAMERA_WEIGHTS
    lora, camera = (lora if lora.is_file() else None), (camera if camera.is_file() else None)
    if lora is None and camera is None:
        raise FileNotFoundError(f"--lora {path}: no {LORA_WEIGHTS} or {CAMERA_WEIGHTS} in {folder}")
    return lora, camera


def check_inputs(config: InferConfig) -> list[tuple[Path, float]]:
    """Everything the command points at, checked before any weight is loaded (``ValueError`` or
    ``FileNotFoundError`` naming the flag); returns the adapters as (path, scale)."""
    problem = image_problem(Path(config.condition_image)) if config.condition_image else "is required"
    if problem:
        raise FileNotFoundError(f"--condition_image: {problem}")
    if config.direction is not None and config.trajectory is not None:
        raise ValueError("give --direction (a preset) or --trajectory (a file), not both")
    if config.direction is not None and Path(config.direction).suffix and not Path(config.direction).is_file():
        raise FileNotFoundError(f"--direction {config.direction}: no such trajectory file")
    problem = direction_problem(config.commanded_path)
    if problem:
        raise ValueError(f"--{'trajectory' if config.trajectory else 'direction'}: {problem}")
    try:
        WanCameraPolicy.check_video_size(config.num_frames, config.height, config.width, config.policy)
    except ValueError as error:
        raise ValueError(f"--num_frames {config.num_frames} --height {config.height} --width {config.width}: {error}")
    if config.device not in ("auto", "cpu") and not (config.device.startswith("cuda") and torch.cuda.is_available()):
        raise ValueError(f"--device {config.device}: expected auto, cpu or cuda[:N] on a machine with a GPU")
    if config.num_inference_steps < 1:
        raise ValueError(f"--num_inference_steps must be >= 1, got {config.num_inference_steps}")
    if config.policy == "wan2.1-1.3b" and config.wan_model_path is None and config.dit_path is None:
        raise ValueError("wan2.1-1.3b needs weights: --wan_model_path (Wan2.1-T2V-1.3B) and/or --dit_path")
    for flag in ("wan_model_path", "prompt_embeddings"):
        value = getattr(config, flag)
        if value is not None and not Path(value).exists():
            raise FileNotFoundError(f"--{flag} {value}: no such file or folder")
    if config.dit_path not in (None, "embedded") and not Path(config.dit_path).exists():
        raise FileNotFoundError(f"--dit_path {config.dit_path}: no such file")
    if config.score:
        for name in config.rewards:
            resolve_reward_class(name)
    loras = [parse_lora(spec) for spec in config.lora]
    for path, _ in loras:
        lora_files(path)
    return loras


def read_lora(file: Path) -> tuple[dict, dict | None]:
    """A LoRA file's state dict keyed ``transformer.`` + diffusers' names and its rank/alpha metadata: peft's
    ``adapter_model.safetensors`` (its ``adapter_config.json`` beside it), else by diffusers' own loader (its
    layout, or Wan's original names converted)."""
    config = file.with_name(PEFT_CONFIG)
    if file.name == PEFT_WEIGHTS and config.is_file():
        state = {f"transformer.{k.removeprefix(PEFT_PREFIX)}": v for k, v in read_state_dict(file).items()}
        metadata = {f"transformer.{k}": v for k, v in LoraConfig.from_pretrained(file.parent).to_dict().items()}
        return state, metadata
    return WanLoraLoaderMixin.lora_state_dict(str(file), return_lora_metadata=True)


def load_adapters(policy: WanCameraPolicy, loras: list[tuple[Path, float]]) -> None:
    """Adds each LoRA (diffusers' or Wan's original key names, converted by diffusers' own loader) as an adapter
    at its scale, and loads the camera modules found beside one (at most one may carry them)."""
    names, scales, camera_source = [], [], None
    for index, (path, scale) in enumerate(loras):
        lora, camera = lora_files(path)
        if lora is not None:
            state, metadata = read_lora(lora)
            name = f"lora_{index}"
            policy.transformer.load_lora_adapter(state, prefix="transformer", adapter_name=name, metadata=metadata)
            names.append(name)
            scales.append(scale)
        if camera is not None:
            if camera_source is not None:
                raise ValueError(f"--lora {camera_source} and {path} both carry camera modules; give one of them")
            camera_source = path
            state = {key.removeprefix("transformer."): value for key, value in read_state_dict(camera).items()}
            unexpected = policy.transformer.load_state_dict(state, strict=False).unexpected_keys
            if unexpected:
                raise ValueError(f"--lora {path}: camera modules the model does not have, e.g. {unexpected[0]}")
    if names:
        policy.transformer.set_adapters(names, scales)


def build_inference_policy(config: InferConfig, loras: list[tuple[Path, float]]) -> WanCameraPolicy:
    """The named model with its weights, prompt embeddings and adapters, frozen, in evaluation mode."""
    layout = config.camera_layout
    if layout is None and config.dit_path not in (None, "embedded"):
        layout = camera_layout_of(config.dit_path)  # Astra's checkpoint is built as Astra, as the seed does
    policy = WanCameraPolicy.from_config(config.policy, config.seed, layout)
    if config.policy == "tiny" and config.dit_path is None:
        print("infer: the tiny model has random weights (it shows that the command runs)", file=sys.stderr)
    load_pretrained(policy, config.wan_model_path, config.dit_path, text_encoder=config.prompt_embeddings is None)
    if config.prompt_embeddings is not None:
        from .prompts import load_prompt_embeddings

        policy.add_prompt_embeddings(load_prompt_embeddings(config.prompt_embeddings))
    load_adapters(policy, loras)
    policy.requires_grad_(False)
    device = torch.device(config.resolved_device)
    return policy.place(device, torch.bfloat16 if device.type == "cuda" else torch.float32).eval()


@torch.no_grad()
def generate(policy: WanCameraPolicy, config: InferConfig):
    """The video ``(T, 3, H, W)`` in [0, 1] of ``config``'s condition and its commanded cameras."""
    entry = ConditionEntry(Path(config.condition_image), config.prompt, config.commanded_path)
    batch = user_conditions([entry], [0], config.num_frames, config.height, config.width)
    cond, uncond = policy_conditions(policy, batch, config.guidance_scale, config.negative_prompt)
    shape = policy.latent_shape(config.num_frames, config.height, config.width)
    device = next(policy.parameters()).device
    noise = torch.randn((1, *shape), generator=torch.Generator().manual_seed(config.seed)).to(device)
    with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
        latents = ode_sample(
            policy, cond, noise, config.num_inference_steps, config.shift, uncond, config.guidance_scale
        )
    return policy.decode(latents, cond)[0].float().cpu(), batch.cameras


def infer(config: InferConfig) -> Path:
    """Checks, builds, generates and writes (see the module); returns the mp4's path."""
    loras = check_inputs(config)
    policy = build_inference_policy(config, loras)
    video, cameras = generate(policy, config)
    output = write_video(config.output_path, video, config.fps)
    plot_trajectories(
        {"commanded": cameras.cam_from_world[0]}, config.path_plot, f"{config.commanded_path} (top view)"
    )
    print(f"Wrote {output} ({config.num_frames} frames, {config.width}x{config.height}) and {config.path_plot}")
    if config.score:
        with RewardSet.from_names(config.rewards) as reward_set:
            out = reward_set(video[None], cameras, [config.prompt])
        print_reward_table(reward_rows(out), float(out.total[0]))
    return output


def named_model_argument(args: list[str]) -> list[str]:
    """``--config NAME`` (a model name rather than a YAML file) as ``--policy NAME``."""
    args = list(args)
    for index, arg in enumerate(args[:-1]):
        if arg == "--config" and args[index + 1] in TRANSFORMER_CONFIGS and not Path(args[index + 1]).is_file():
            args[index] = "--policy"
    return args


def main(args: list[str] | None = None) -> Path:
    """The command line (``args``, default ``sys.argv[1:]``): bad input (a flag, a file, weights that do not load
    or fit, a prompt without an embedding) exits with status 2 and one line ``PROG: error: ...``."""
    try:
        (config,) = TrlParser((InferConfig,)).parse_args_and_config(
            named_model_argument(sys.argv[1:] if args is None else args)
        )
        return infer(config)
    except (ValueError, FileNotFoundError) as error:
        exit_with_error(error)
