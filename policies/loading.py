"""Loading real Wan2.1 / camera-DiT weights into :class:`~policies.wan_camera.WanCameraPolicy`.

Layouts users have:
    - diffusers (``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``): ``transformer/*.safetensors`` and ``vae/*.safetensors``;
    - the original / DiffSynth one (``Wan-AI/Wan2.1-T2V-1.3B``): ``diffusion_pytorch_model*.safetensors``
      with the original key names (``blocks.N.self_attn.q``, ``head.head``, ...) and ``Wan2.1_VAE.pth``;
    - a fine-tuned DiT checkpoint given as ``--dit_path`` (``.safetensors`` or ``.ckpt``/``.pth``), in either
      key layout, carrying the camera modules: ReCamMaster's (``blocks.N.cam_encoder``, ``blocks.N.projector``)
      or Astra's mixture of experts (``blocks.N.moe.experts.E.0``, ``sekai_processor``, ``clean_x_embedder.proj``,
      ``blocks.N.projector``; the policy must be built with ``camera_layout="astra"``).
    - the text encoder: the original ``models_t5_umt5-xxl-enc-bf16.pth`` (Wan's module names, converted to
      transformers' ``UMT5EncoderModel``) with ``google/umt5-xxl/``, or diffusers' ``text_encoder/`` with
      ``tokenizer/``.
Original DiT and VAE key names are converted with diffusers' own converters. Pickles are read with
``torch.load(weights_only=True)`` only. A missing or unexpected key is one clear error that names it.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers, convert_wan_vae_to_diffusers
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn
from transformers import UMT5Config, UMT5EncoderModel

from lyra_rl.errors import WeightsError

from .prompts import WanTokenizer

WAN_T5_CHECKPOINT = "models_t5_umt5-xxl-enc-bf16.pth"
WAN_T5_TOKENIZER = "google/umt5-xxl"
CAMERA_KEYS = (".cam_encoder.", ".projector.", ".moe.experts.", "sekai_processor.", "clean_x_embedder.proj.")
# Modules of Astra's checkpoints that its single-image, single-chunk camera-control forward does not use: the
# 2x and 4x embedders of a longer history, the processors and router of other data domains, and the
# per-block fallback ``cam_encoder`` that the experts replace.
ASTRA_UNUSED_KEYS = (
    "clean_x_embedder.proj_2x.",
    "clean_x_embedder.proj_4x.",
    "nuscenes_processor.",
    "openx_processor.",
    "global_router.",
    ".cam_encoder.",
)

logger = logging.getLogger(__name__)

SHIPPED_DITS = {"embedded": Path(__file__).parent / "embedded" / "diffusion_pytorch_model.safetensors"}
"""DiT weights that ship with the package, by the name ``--dit_path`` accepts for them (model cards beside them)."""


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A state dict from one ``.safetensors`` file, a ``.ckpt``/``.pth``/``.bin`` pickle (tensors only),
    or every ``*.safetensors`` shard in a folder. Nested ``state_dict``/``module`` wrappers are unwrapped.

    Raises:
        FileNotFoundError: no such file, or a folder without shards.
        WeightsError: a file that does not load (empty, truncated, not the format its suffix says, a pickle
            of code) or holds no mapping of names to tensors; the message names the file.
    """
    path = Path(path)
    if path.is_dir():
        shards = sorted(path.glob("*.safetensors"))
        if not shards:
            raise FileNotFoundError(f"no .safetensors files in {path}")
        state: dict[str, Tensor] = {}
        for shard in shards:
            state.update(read_state_dict(shard))
        return state
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path}: does not load (an empty file)")
    try:
        state = load_file(path) if path.suffix == ".safetensors" else torch.load(path, "cpu", weights_only=True)
    except Exception as error:
        detail = " ".join(str(error).split()[:30])
        raise WeightsError(f"{path}: does not load ({type(error).__name__}: {detail})") from error
    for wrapper in ("state_dict", "module"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not any(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"{path}: holds a {type(state).__name__}, not a mapping of names to tensors")
    return state


def checkpoint_keys(path: str | Path) -> list[str]:
    """The tensor names of a weights file without reading its tensors (safetensors' header; a pickle memory-mapped)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        with safe_open(path, "pt") as file:
            return list(file.keys())
    state = torch.load(path, "cpu", weights_only=True, mmap=True)
    for wrapper in ("state_dict", "module"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    return list(state) if isinstance(state, dict) else []


def camera_layout_of(path: str | Path) -> str | None:
    """The camera layout a fine-tuned DiT file was trained in: ``astra`` (its mixture of experts), ``recammaster``
    (per-block ``cam_encoder``), or ``None`` (neither: no camera modules, or a file that does not load)."""
    try:
        keys = checkpoint_keys(path)
    except Exception:
        return None  # load_pretrained names what is wrong with the file
    if any(".moe.experts." in key for key in keys):
        return "astra"
    return "recammaster" if any(".cam_encoder." in key for key in keys) else None


def to_diffusers_transformer_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Transformer keys in diffusers' layout (original / DiffSynth names are converted; camera keys kept)."""
    if any(".self_attn." in k or k.startswith("head.") for k in state):
        return convert_wan_transformer_to_diffusers(dict(state))
    return dict(state)


def load_strict(
    module: nn.Module, state: dict[str, Tensor], what: str, allow_missing: tuple[str, ...] = (), assign: bool = False
) -> None:
    """Loads ``state`` into ``module``; any unexpected key, or missing key not matching ``allow_missing``,
    is one :class:`~lyra_rl.errors.WeightsError` naming them (and the shape mismatches, if any). ``assign``
    takes the tensors as they are (for a module built on the meta device)."""
    expected = module.state_dict()
    missing = sorted(k for k in expected if k not in state and not any(p in k for p in allow_missing))
    unexpected = sorted(k for k in state if k not in expected)
    mismatched = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    )
    if missing or unexpected or mismatched:

        def show(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        problems = [
            f"missing keys: {show(missing)}" if missing else "",
            f"unexpected keys: {show(unexpected)}" if unexpected else "",
            f"shape mismatches: {show(mismatched)}" if mismatched else "",
        ]
        raise WeightsError(f"{what} does not match the model: " + "; ".join(p for p in problems if p))
    module.load_state_dict(state, strict=False, assign=assign)


def load_transformer(policy, path: str | Path, with_camera: bool) -> None:
    """Loads DiT weights (any layout) into ``policy``'s transformer.

    Args:
        with_camera: the checkpoint must carry the camera modules (a fine-tuned ``--dit_path``); base Wan
            weights do not, and the camera modules keep their output-preserving initialisation.
    """
    state = to_diffusers_transformer_keys(read_state_dict(path))
    if any(".moe.experts." in k for k in state):
        if policy.dit.layout != "astra":
            raise ValueError(
                f"{path} is an Astra mixture-of-experts checkpoint: build the policy with camera_layout='astra'"
            )
        skipped = sorted({p.strip(".") for p in ASTRA_UNUSED_KEYS if any(p in k for k in state)})
        logger.info(
            "%s: skipping Astra modules the single-chunk camera forward does not use: %s", path, ", ".join(skipped)
        )
        state = {k: v for k, v in state.items() if not any(p in k for p in ASTRA_UNUSED_KEYS)}
    load_strict(policy.transformer, state, f"DiT weights {path}", allow_missing=() if with_camera else CAMERA_KEYS)
    if not with_camera and policy.dit.layout == "astra":
        policy.dit.reset_history_embedder()


def load_vae(policy, path: str | Path) -> None:
    """Loads Wan VAE weights: a diffusers ``vae/`` folder or file, or the original ``Wan2.1_VAE.pth``."""
    state = read_state_dict(path)
    if any(k.startswith(("encoder.downsamples", "decoder.upsamples", "conv1.")) for k in state):
        state = convert_wan_vae_to_diffusers(dict(state))
    load_strict(policy.vae, state, f"VAE weights {path}")


def load_pretrained(
    policy, wan_model_path: str | Path | None = None, dit_path: str | Path | None = None, text_encoder: bool = False
) -> None:
    """Loads a Wan2.1 folder (either layout) and optionally a fine-tuned DiT with camera modules on top.

    With ``text_encoder``, also the UMT5 text encoder and tokenizer (bf16, kept on the CPU: only prompts that
    are not cached yet pass through it); without, prompts must come from precomputed embeddings.

    The seed's arguments map directly: ``--wan_model_path models/Wan-AI/Wan2.1-T2V-1.3B`` and
    ``--dit_path models/Astra/checkpoints/diffusion_pytorch_model.ckpt``; ``dit_path`` may also name weights
    that ship with the package (:data:`SHIPPED_DITS`: ``embedded``).
    """
    if wan_model_path is not None:
        root = Path(wan_model_path)
        if (root / "transformer").is_dir():
            load_transformer(policy, root / "transformer", with_camera=False)
            load_vae(policy, root / "vae")
        elif any(root.glob("diffusion_pytorch_model*.safetensors")) and (root / "Wan2.1_VAE.pth").is_file():
            load_transformer(policy, root, with_camera=False)
            load_vae(policy, root / "Wan2.1_VAE.pth")
        else:
            raise FileNotFoundError(
                f"{root} is neither a diffusers folder (transformer/, vae/) nor an original Wan2.1 folder "
                "(diffusion_pytorch_model*.safetensors, Wan2.1_VAE.pth)"
            )
        if text_encoder:
            policy.text_encoder, policy.tokenizer = load_text_encoder(root)
    if dit_path is not None:
        load_transformer(policy, SHIPPED_DITS.get(str(dit_path), dit_path), with_camera=True)


# Wan's T5 module names -> transformers' UMT5EncoderModel names (per block N). Wan's feed-forward is
# ``fc2(fc1(x) * gelu(gate(x)))``; transformers' is ``wo(wi_1(x) * gelu(wi_0(x)))``.
_T5_BLOCK_KEYS = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}


def convert_wan_t5_to_umt5(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Renames an original Wan T5 encoder state dict to ``UMT5EncoderModel`` keys (no copies).

    Raises:
        KeyError: naming the keys that are not Wan T5 encoder keys.
    """
    converted, unknown = {}, []
    for key, value in state.items():
        if key == "token_embedding.weight":
            converted["shared.weight"] = converted["encoder.embed_tokens.weight"] = value
        elif key == "norm.weight":
            converted["encoder.final_layer_norm.weight"] = value
        elif (match := re.fullmatch(r"blocks\.(\d+)\.(.+)", key)) and match.group(2) in _T5_BLOCK_KEYS:
            converted[f"encoder.block.{match.group(1)}.{_T5_BLOCK_KEYS[match.group(2)]}"] = value
        else:
            unknown.append(key)
    if unknown:
        more = f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""
        raise KeyError(f"not Wan T5 encoder keys: {', '.join(sorted(unknown)[:5])}{more}")
    return converted


def umt5_config_from_wan_state(state: dict[str, Tensor]) -> UMT5Config:
    """The ``UMT5Config`` of a Wan T5 encoder state dict, read off its shapes (umt5-xxl: 24 layers, 4096, 64 heads)."""
    vocab_size, d_model = state["token_embedding.weight"].shape
    num_layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    num_buckets, num_heads = state["blocks.0.pos_embedding.embedding.weight"].shape
    return UMT5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=state["blocks.0.attn.q.weight"].shape[0] // num_heads,
        d_ff=state["blocks.0.ffn.fc1.weight"].shape[0],
        num_layers=num_layers,
        num_heads=num_heads,
        relative_attention_num_buckets=num_buckets,
        relative_attention_max_distance=128,
        layer_norm_epsilon=1e-6,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
    )


def load_text_encoder(
    folder: str | Path, dtype: torch.dtype = torch.bfloat16
) -> tuple[UMT5EncoderModel, WanTokenizer]:
    """Wan2.1's text encoder (frozen, eval mode) and tokenizer from an original or diffusers Wan2.1 folder, in
    ``dtype`` on the CPU.

    The original checkpoint is memory-mapped and the model built on the meta device, so no float32 copy of
    the 5.7B parameters is ever made.

    Raises:
        FileNotFoundError: if the folder holds neither layout.
    """
    root = Path(folder)
    if (root / WAN_T5_CHECKPOINT).is_file() and (root / WAN_T5_TOKENIZER).is_dir():
        state = torch.load(root / WAN_T5_CHECKPOINT, map_location="cpu", weights_only=True, mmap=True)
        with torch.device("meta"):
            encoder = UMT5EncoderModel(umt5_config_from_wan_state(state))
        converted = {k: v.to(dtype) for k, v in convert_wan_t5_to_umt5(state).items()}
        load_strict(encoder, converted, f"text encoder {root / WAN_T5_CHECKPOINT}", assign=True)
        return encoder.requires_grad_(False).eval(), WanTokenizer.from_pretrained(root / WAN_T5_TOKENIZER)
    if (root / "text_encoder").is_dir() and (root / "tokenizer").is_dir():
        encoder = UMT5EncoderModel.from_pretrained(str(root / "text_encoder"), dtype=dtype)
        return encoder.requires_grad_(False).eval(), WanTokenizer.from_pretrained(root / "tokenizer")
    raise FileNotFoundError(
        f"no Wan2.1 text encoder in {root}: expected {WAN_T5_CHECKPOINT} with {WAN_T5_TOKENIZER}/, or text_encoder/ "
        "with tokenizer/"
    )
