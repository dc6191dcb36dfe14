"""Trained adapters in the formats people generate with: peft, diffusers, Wan's original (ComfyUI, DiffSynth-Studio)
key names, merged DiT weights, the camera modules in the seed's key names (``recipes/export_lora.py``).

Every function here works on state dicts in diffusers' ``WanTransformer3DModel`` key names without a prefix
(``blocks.0.attn1.to_q.weight``; a LoRA's ``blocks.0.attn1.to_q.lora_A.weight``, as diffusers and peft save it).
Wan's original names (``blocks.0.self_attn.q.weight``, ``head.head.weight``) are what diffusers' own converter,
``convert_wan_transformer_to_diffusers``, reads; :func:`to_wan_keys` is its inverse and checks itself against it.

Formats (the README's Export table says which loader and test proves each):
    - ``peft``: ``peft/adapter_config.json`` and ``adapter_model.safetensors`` (``PeftModel.from_pretrained``);
    - ``diffusers``: ``pytorch_lora_weights.safetensors`` (``WanPipeline.load_lora_weights(folder)``; with the
      camera modules beside it the folder is also a ``--lora`` of ``recipes/infer.py``);
    - ``wan``: ``wan_lora.safetensors``, ``diffusion_model.`` + Wan's names with each module's ``alpha``
      (ComfyUI, DiffSynth-Studio; diffusers converts it too);
    - ``merged``: ``merged/diffusion_pytorch_model.safetensors``, the whole DiT with the LoRA added in and the
      camera modules (a ``--dit_path`` file); ``merged_wan``: the same in Wan's names, as safetensors and as the
      ``.ckpt`` the seed's ``torch.load`` reads;
    - the trained camera modules beside them: ``camera_modules.safetensors``, named as the seed's checkpoints
      name them (``blocks.N.cam_encoder.weight``).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from safetensors.torch import save_file
from torch import Tensor

from . import __version__
from .atomic import atomic_write

#: diffusers' module names -> Wan's original ones, applied in this order (the inverse of diffusers' converter).
WAN_KEY_RENAMES = (
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    (".attn1.", ".self_attn."),
    (".attn2.", ".cross_attn."),
    (".to_out.0.", ".o."),
    (".to_q.", ".q."),
    (".to_k.", ".k."),
    (".to_v.", ".v."),
    (".ffn.net.0.proj.", ".ffn.0."),
    (".ffn.net.2.", ".ffn.2."),
)
#: Original keys of the head and of each block's cross-attention norm (diffusers swaps Wan's norm2 and norm3).
_HEAD = ((re.compile(r"^proj_out\."), "head.head."), (re.compile(r"^scale_shift_table$"), "head.modulation"))
_BLOCK = (
    (re.compile(r"^(blocks\.\d+)\.scale_shift_table$"), r"\1.modulation"),
    (re.compile(r"^(blocks\.\d+)\.norm2\."), r"\1.norm3."),
)
#: The prefix ComfyUI and DiffSynth-Studio give the DiT's keys in a LoRA file.
WAN_LORA_PREFIX = "diffusion_model."
#: The prefix peft gives a model's keys in ``adapter_model.safetensors``.
PEFT_PREFIX = "base_model.model."
LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight")


def wan_key(key: str) -> str:
    """One diffusers key in Wan's original names (camera modules, ``blocks.N.cam_encoder``, keep theirs)."""
    for pattern, original in (*_HEAD, *_BLOCK):
        key = pattern.sub(original, key)
    for diffusers, original in WAN_KEY_RENAMES:
        key = key.replace(diffusers, original)
    return key


def to_wan_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A DiT state dict (diffusers' names) in Wan's original names; raises ``ValueError`` if diffusers' own
    converter would not read every key back to its diffusers name."""
    converted = {wan_key(key): value for key, value in state.items()}
    back = convert_wan_transformer_to_diffusers(dict.fromkeys(converted, torch.empty(0)))
    if sorted(back) != sorted(state):
        wrong = sorted(set(state) - set(back))
        raise ValueError(f"no Wan name that diffusers converts back for {len(wrong)} keys, e.g. {wrong[:3]}")
    return converted


def lora_modules(lora: dict[str, Tensor]) -> list[str]:
    """The modules a LoRA state dict adapts (``blocks.0.attn1.to_q`` for ``blocks.0.attn1.to_q.lora_A.weight``)."""
    modules = sorted({key.removesuffix(suffix) for key in lora for suffix in LORA_SUFFIXES if key.endswith(suffix)})
    other = sorted(k for k in lora if not k.endswith(LORA_SUFFIXES))
    if other:
        raise ValueError(f"not LoRA weights (lora_A / lora_B): {other[:3]}")
    return modules


def merge_lora(base: dict[str, Tensor], lora: dict[str, Tensor], scaling: float) -> dict[str, Tensor]:
    """``base`` with each adapted weight ``W`` replaced by ``W + scaling * B @ A`` (computed in float32, stored in
    ``W``'s dtype); ``scaling`` is ``lora_alpha / r``."""
    merged = dict(base)
    for module in lora_modules(lora):
        weight = base[f"{module}.weight"]
        A, B = lora[f"{module}.lora_A.weight"].float(), lora[f"{module}.lora_B.weight"].float()
        merged[f"{module}.weight"] = (weight.float() + scaling * (B @ A)).to(weight.dtype)
    return merged


def wan_lora(lora: dict[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """A LoRA in the original layout ComfyUI and DiffSynth-Studio load: ``diffusion_model.`` + Wan's names, and
    each module's ``alpha`` (a scalar tensor; the layer scales by ``alpha / rank``)."""
    state = {}
    for module in lora_modules(lora):
        name = WAN_LORA_PREFIX + wan_key(f"{module}.weight").removesuffix(".weight")
        for suffix in LORA_SUFFIXES:
            state[name + suffix] = lora[module + suffix].contiguous()
        state[f"{name}.alpha"] = torch.tensor(float(alpha))
    return state


def config_hash(config: dict) -> str:
    """SHA-256 of a recorded training config (its JSON with sorted keys)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def export_metadata(lora_config: dict | None, base_model: dict, config: dict, step: int) -> dict[str, str]:
    """What every exported file carries in its safetensors metadata: the LoRA's rank, alpha and targets (where
    there is a LoRA), the base model, the lyra-rl version, the training step and the training config's hash."""
    metadata = {
        "format": "pt",
        "lyra_rl.version": __version__,
        "lyra_rl.base_model": json.dumps(base_model, sort_keys=True),
        "lyra_rl.step": str(step),
        "lyra_rl.config_sha256": config_hash(config),
    }
    if lora_config is not None:
        metadata.update(
            {
                "lyra_rl.lora_rank": str(lora_config["r"]),
                "lyra_rl.lora_alpha": str(lora_config["lora_alpha"]),
                "lyra_rl.lora_target_modules": json.dumps(sorted(lora_config["target_modules"])),
            }
        )
    return metadata


def write_weights(path: Path, state: dict[str, Tensor], metadata: dict[str, str]) -> Path:
    """``state`` (contiguous copies) as a safetensors file with ``metadata``, written atomically."""
    with atomic_write(path) as tmp:
        save_file({k: v.detach().contiguous() for k, v in state.items()}, tmp, metadata=metadata)
    return path
