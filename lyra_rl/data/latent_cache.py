"""A MultiCamVideo folder's clips cached as one policy's latents and prompt embeddings (``recipes/preprocess.py``,
as the seed's ``--task data_process``), so that SFT neither decodes videos nor runs the codec or text encoder.

Layout of a cache folder::

    cache.json                              # the settings it was made with and its clips, in order
    f18_aperture10__scene1__cam01.safetensors  # one file per clip (the scene's path, "/" as "__", the camera)
    prompt_embeddings.safetensors           # every prompt's embedding (pass it as --prompt_embeddings)

Each clip's file holds ``latents (C, k, h, w)`` (``policy.generated_latents`` of its video: SFT's targets),
``image (3, H, W)`` (its first frame in [0, 1]), ``cam_from_world (T, 4, 4)`` and ``intrinsics (T, 3, 3)`` (as
:func:`~lyra_rl.data.multicam.load_clip` gives them) and ``prompt_embedding (L', D)`` (trailing zero padding
trimmed), with the prompt, scene and camera in its metadata. Files are written atomically (a temporary file,
then a rename), so a file that exists is complete.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from .multicam import MultiCamClip

__all__ = [
    "MANIFEST",
    "PROMPT_EMBEDDINGS",
    "CachedClip",
    "cache_file_name",
    "cached_clip",
    "cached_prompt_embedding",
    "is_cache_folder",
    "load_cached_clip",
    "read_manifest",
    "save_cached_clip",
    "write_manifest",
]

MANIFEST = "cache.json"
PROMPT_EMBEDDINGS = "prompt_embeddings.safetensors"
FORMAT = "lyra-rl latent cache 1"


@dataclass(frozen=True)
class CachedClip:
    """A clip of a cache: its file (relative to the cache folder), scene, camera and prompt."""

    file: str
    scene: str
    camera: str
    prompt: str


def cache_file_name(clip: MultiCamClip) -> str:
    """The cache file of a clip: its scene's path relative to the listed folder, ``"/"`` as ``"__"``, then the
    camera, e.g. ``f18_aperture10__scene1__cam01.safetensors``."""
    return "__".join([*Path(clip.name).parts[:-2], clip.camera]) + ".safetensors"


def cached_clip(clip: MultiCamClip) -> CachedClip:
    """The manifest's entry of a MultiCamVideo clip."""
    return CachedClip(cache_file_name(clip), Path(clip.name).parent.parent.as_posix(), clip.camera, clip.prompt)


def _atomic(path: Path) -> Path:
    """The temporary file written before it is renamed to ``path``."""
    return path.with_name(path.name + ".tmp")


def write_manifest(folder: str | Path, settings: dict, clips: list[CachedClip]) -> Path:
    """Writes ``cache.json`` (atomically): the cache's settings and its clips in order."""
    path = Path(folder) / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest = {"format": FORMAT, "settings": settings, "clips": [vars(c) for c in clips]}
    _atomic(path).write_text(json.dumps(manifest, indent=1))
    os.replace(_atomic(path), path)
    return path


def is_cache_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder with a cache's ``cache.json``."""
    return (Path(path) / MANIFEST).is_file()


def read_manifest(folder: str | Path) -> tuple[dict, list[CachedClip]]:
    """A cache's settings and clips, every clip's file checked to exist.

    Raises:
        ValueError: for a file that is not a cache's manifest.
        FileNotFoundError: naming the first missing clip file (an interrupted run: rerun the recipe, it resumes).
    """
    folder = Path(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{folder / MANIFEST} is not a {FORMAT!r} manifest (format {manifest.get('format')!r})")
    clips = [CachedClip(**c) for c in manifest["clips"]]
    missing = [c.file for c in clips if not (folder / c.file).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder / missing[0]} is missing ({len(missing)} of {len(clips)} clips are): the cache is incomplete; "
            "rerun recipes/preprocess.py with the same arguments to finish it"
        )
    return manifest["settings"], clips


def save_cached_clip(
    path: str | Path,
    latents: Tensor,
    image: Tensor,
    cam_from_world: Tensor,
    intrinsics: Tensor,
    prompt_embedding: Tensor,
    metadata: dict[str, str],
) -> Path:
    """Writes one clip's file atomically (see the module docstring for the tensors); ``prompt_embedding (L, D)``
    is stored without its trailing zero rows and ``L`` in the metadata as ``text_length``."""
    path = Path(path)
    used = prompt_embedding.abs().sum(-1).nonzero()
    text_length = str(prompt_embedding.shape[0])
    prompt_embedding = prompt_embedding[: max(int(used.max()) + 1 if len(used) else 0, 1)]
    tensors = {
        "latents": latents,
        "image": image,
        "cam_from_world": cam_from_world,
        "intrinsics": intrinsics,
        "prompt_embedding": prompt_embedding,
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    save_file(tensors, _atomic(path), metadata={**metadata, "text_length": text_length})
    os.replace(_atomic(path), path)
    return path


def load_cached_clip(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """One clip's tensors (``prompt_embedding`` zero-padded back to ``(L, D)``) and metadata."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    embedding = tensors["prompt_embedding"]
    tensors["prompt_embedding"] = F.pad(embedding, (0, 0, 0, int(metadata["text_length"]) - len(embedding)))
    return tensors, metadata


def cached_prompt_embedding(path: str | Path) -> Tensor:
    """One clip's prompt embedding ``(L, D)`` (zero-padded back), without reading its other tensors."""
    with safe_open(str(path), framework="pt") as f:
        embedding, text_length = f.get_tensor("prompt_embedding"), int(f.metadata()["text_length"])
    return F.pad(embedding, (0, 0, 0, text_length - len(embedding)))
