"""Loading real Wan2.1 / camera-DiT weights into :class:`~policies.wan_camera.WanCameraPolicy`.

Layouts users have:
    - diffusers (``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``): ``transformer/*.safetensors`` and ``vae/*.safetensors``;
    - the original / DiffSynth one (``Wan-AI/Wan2.1-T2V-1.3B``): ``diffusion_pytorch_model*.safetensors``
      with the original key names (``blocks.N.self_attn.q``, ``head.head``, ...) and ``Wan2.1_VAE.pth``;
    - a fine-tuned DiT checkpoint given as ``--dit_path`` (``.safetensors`` or ``.ckpt``/``.pth``), in either
      key layout, carrying the camera modules: ReCamMaster's (``blocks.N.cam_encoder``, ``blocks.N.projector``)
      or Astra's mixture of experts (``blocks.N.moe.experts.E.0``, ``sekai_processor``, ``blocks.N.projector``;
      the policy must be built with ``camera_layout="astra"``).
Original key names are converted with diffusers' own converters. Pickles are read with
``torch.load(weights_only=True)`` only. A missing or unexpected key is one clear error that names it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers, convert_wan_vae_to_diffusers
from safetensors.torch import load_file
from torch import Tensor, nn

CAMERA_KEYS = (".cam_encoder.", ".projector.", ".moe.experts.", "sekai_processor.")
# Modules of Astra's checkpoints that its camera-control forward does not use: the FramePack history
# embedder (lyra-rl generates one chunk without history), the processors and router of other data
# domains, and the per-block fallback ``cam_encoder`` that the experts replace.
ASTRA_UNUSED_KEYS = ("clean_x_embedder.", "nuscenes_processor.", "openx_processor.", "global_router.", ".cam_encoder.")

logger = logging.getLogger(__name__)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A state dict from one ``.safetensors`` file, a ``.ckpt``/``.pth``/``.bin`` pickle (tensors only),
    or every ``*.safetensors`` shard in a folder. Nested ``state_dict``/``module`` wrappers are unwrapped."""
    path = Path(path)
    if path.is_dir():
        shards = sorted(path.glob("*.safetensors"))
        if not shards:
            raise FileNotFoundError(f"no .safetensors files in {path}")
        state: dict[str, Tensor] = {}
        for shard in shards:
            state.update(load_file(shard))
        return state
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.suffix == ".safetensors":
        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "module"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    return state


def to_diffusers_transformer_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Transformer keys in diffusers' layout (original / DiffSynth names are converted; camera keys kept)."""
    if any(".self_attn." in k or k.startswith("head.") for k in state):
        return convert_wan_transformer_to_diffusers(dict(state))
    return dict(state)


def load_strict(module: nn.Module, state: dict[str, Tensor], what: str, allow_missing: tuple[str, ...] = ()) -> None:
    """Loads ``state`` into ``module``; any unexpected key, or missing key not matching ``allow_missing``,
    is one ``KeyError`` naming them (and the shape mismatches, if any)."""
    expected = module.state_dict()
    missing = sorted(k for k in expected if k not in state and not any(p in k for p in allow_missing))
    unexpected = sorted(k for k in state if k not in expected)
    mismatched = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items() if k in state and state[k].shape != v.shape)
    if missing or unexpected or mismatched:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        problems = [f"missing keys: {show(missing)}" if missing else "", f"unexpected keys: {show(unexpected)}" if unexpected else "",
                    f"shape mismatches: {show(mismatched)}" if mismatched else ""]
        raise KeyError(f"{what} does not match the model: " + "; ".join(p for p in problems if p))
    module.load_state_dict(state, strict=False)


def load_transformer(policy, path: str | Path, with_camera: bool) -> None:
    """Loads DiT weights (any layout) into ``policy``'s transformer.

    Args:
        with_camera: the checkpoint must carry the camera modules (a fine-tuned ``--dit_path``); base Wan
            weights do not, and the camera modules keep their output-preserving initialisation.
    """
    state = to_diffusers_transformer_keys(read_state_dict(path))
    if any(".moe.experts." in k for k in state):
        if policy.dit.layout != "astra":
            raise ValueError(f"{path} is an Astra mixture-of-experts checkpoint: build the policy with camera_layout='astra'")
        skipped = sorted({p.strip(".") for p in ASTRA_UNUSED_KEYS if any(p in k for k in state)})
        logger.info("%s: skipping Astra modules the single-chunk camera forward does not use: %s", path, ", ".join(skipped))
        state = {k: v for k, v in state.items() if not any(p in k for p in ASTRA_UNUSED_KEYS)}
    load_strict(policy.transformer, state, f"DiT weights {path}", allow_missing=() if with_camera else CAMERA_KEYS)


def load_vae(policy, path: str | Path) -> None:
    """Loads Wan VAE weights: a diffusers ``vae/`` folder or file, or the original ``Wan2.1_VAE.pth``."""
    state = read_state_dict(path)
    if any(k.startswith(("encoder.downsamples", "decoder.upsamples", "conv1.")) for k in state):
        state = convert_wan_vae_to_diffusers(dict(state))
    load_strict(policy.vae, state, f"VAE weights {path}")


def load_pretrained(policy, wan_model_path: str | Path | None = None, dit_path: str | Path | None = None) -> None:
    """Loads a Wan2.1 folder (either layout) and optionally a fine-tuned DiT with camera modules on top.

    The seed's arguments map directly: ``--wan_model_path models/Wan-AI/Wan2.1-T2V-1.3B`` and
    ``--dit_path models/Astra/checkpoints/diffusion_pytorch_model.ckpt``.
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
    if dit_path is not None:
        load_transformer(policy, dit_path, with_camera=True)
