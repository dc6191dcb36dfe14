"""The MultiCamVideo data set (ReCamMaster's, rendered with Unreal Engine 5) read at the edge: each clip (one
scene filmed by one of its cameras) as frames, commanded cameras in lyra-rl's convention, and a prompt.

Layout, as the data set ships it (ReCamMaster's README). The folder given is a scene, a folder of scenes, or a
folder of such folders (the data set's ``train/``); a scene is a folder with a ``videos/`` folder::

    f18_aperture10/                          # focal length 18 mm, aperture f/10: the name gives the focal length
        scene1/
            videos/cam01.mp4 ... cam10.mp4   # synchronized, 81 frames at 1280x1280
            cameras/camera_extrinsics.json   # {"frame0": {"cam01": "[r r r 0] [r r r 0] [r r r 0] [x y z 1]"}, ...}
    metadata.csv                             # optional: file_name (video path relative to the folder given), text

Convention (the data set's, converted here and in :func:`~lyra_rl.camera.from_multicam_extrinsics` only):
    - Extrinsics: per ``frameN`` and ``camNN``, Unreal's camera-to-world matrix in row-vector form (rows: the
      camera's forward, right and up axes, then its location in centimetres) in Unreal's left-handed, z-up world.
      They become OpenCV ``cam_from_world`` in metres, relative to the clip's first sampled frame, exactly as
      ReCamMaster's loader converts them.
    - Intrinsics: none are stored. Every video shares a 23.76 x 23.76 mm sensor (ReCamMaster issue #10) and the
      focal length its folder's name gives (``f<mm>_aperture<...>``); pinhole, principal point at the center.
      :func:`load_clip` returns them for the cropped and resized frames.
    - Frames: ``T`` frames ``0, s, ..., (T - 1) s`` of the clip; by default ``s = (N - 1) // (T - 1)`` for ``N``
      annotated frames, which spans the whole clip (81 frames, ``T = 9``: every 10th). Each is center-cropped to
      the ``height:width`` aspect and resized (bilinear, antialiased), as ReCamMaster crops its 1280x1280 videos.
    - Prompts: the data set ships none. ``metadata.csv`` (ReCamMaster's ``file_name``, ``text`` columns), where
      present, gives every clip's; otherwise every clip has :data:`DEFAULT_PROMPT`.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..camera import Cameras, from_multicam_extrinsics

__all__ = [
    "DEFAULT_PROMPT",
    "SENSOR_SIZE_MM",
    "MultiCamClip",
    "clip_intrinsics",
    "is_multicam_folder",
    "list_clips",
    "load_clip",
    "sampled_frames",
]

#: Side of the square sensor every MultiCamVideo camera has (ReCamMaster issue #10).
SENSOR_SIZE_MM = 23.76
#: The prompt of clips that ``metadata.csv`` does not caption (the data set ships no captions).
DEFAULT_PROMPT = "a person in a 3D scene, filmed by a moving camera"
EXTRINSICS = Path("cameras") / "camera_extrinsics.json"
METADATA = "metadata.csv"
_FOCAL_FOLDER = re.compile(r"^f(\d+(?:\.\d+)?)_aperture")
_CAMERA_VIDEO = re.compile(r"^cam\d+\.mp4$")


@dataclass(frozen=True)
class MultiCamClip:
    """One clip: a scene filmed by one of its cameras.

    Attributes:
        scene: the scene folder (holding ``videos/`` and ``cameras/``).
        camera: the camera's key, e.g. ``"cam01"``.
        name: the video's path relative to the folder listed, e.g. ``"f18_aperture10/scene1/videos/cam01.mp4"``.
        focal_length_mm: the camera's focal length on its 23.76 mm sensor.
        prompt: its caption, or :data:`DEFAULT_PROMPT`.
    """

    scene: Path
    camera: str
    name: str
    focal_length_mm: float
    prompt: str

    @property
    def video(self) -> Path:
        return self.scene / "videos" / f"{self.camera}.mp4"

    @property
    def extrinsics(self) -> Path:
        return self.scene / EXTRINSICS


def _natural_key(path: Path) -> list:
    """``scene2`` before ``scene10``."""
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", path.as_posix())]


def _scenes(root: Path) -> list[Path]:
    """Folders holding ``videos/``: ``root`` itself, its sub-folders, or theirs (the first depth that has any)."""
    for depth in range(3):
        candidates = [root] if depth == 0 else root.glob("/".join(["*"] * depth))
        scenes = [p for p in candidates if p.is_dir() and (p / "videos").is_dir()]
        if scenes:
            return sorted(scenes, key=lambda p: _natural_key(p.relative_to(root)))
    return []


def is_multicam_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder in the MultiCamVideo layout (a scene, or scenes up to two levels down)."""
    path = Path(path)
    return path.is_dir() and bool(_scenes(path))


def _focal_length(scene: Path) -> float | None:
    """The focal length the nearest ``f<mm>_aperture<...>`` folder at or above ``scene`` names."""
    for part in reversed(scene.absolute().parts):
        if match := _FOCAL_FOLDER.match(part):
            return float(match.group(1))
    return None


def _read_prompts(root: Path) -> dict[str, str] | None:
    """``metadata.csv``'s ``file_name -> text`` (paths relative to ``root``), or ``None`` without one."""
    path = root / METADATA
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not {"file_name", "text"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{path} must have the columns file_name and text, got {reader.fieldnames}")
        return {Path(row["file_name"]).as_posix(): row["text"].strip() for row in reader}


def list_clips(root: str | Path, focal_length_mm: float | None = None) -> list[MultiCamClip]:
    """Every clip of a MultiCamVideo folder, scene by scene (natural order), then camera by camera.

    The folder is checked up front: each scene needs ``cameras/camera_extrinsics.json`` and at least one
    ``videos/camNN.mp4``, a focal length (a ``f<mm>_aperture<...>`` folder at or above it, or
    ``focal_length_mm``), and with ``metadata.csv`` a row per clip. The extrinsics themselves are read by
    :func:`load_clip`.

    Args:
        root: a scene, a folder of scenes, or a folder of such folders.
        focal_length_mm: the focal length of scenes whose folders name none (default: such a scene is an error).

    Raises:
        FileNotFoundError: naming a missing folder, extrinsics file or the videos folder without videos.
        ValueError: on a folder without scenes, a scene without a focal length, or a clip ``metadata.csv``
            does not caption.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no MultiCamVideo folder at {root}")
    scenes = _scenes(root)
    if not scenes:
        raise ValueError(f"{root} holds no MultiCamVideo scene (a folder with videos/camNN.mp4 and {EXTRINSICS})")
    prompts = _read_prompts(root)
    clips = []
    for scene in scenes:
        if not (scene / EXTRINSICS).is_file():
            raise FileNotFoundError(f"{scene / EXTRINSICS} is missing (every scene needs its cameras)")
        videos = sorted((p for p in (scene / "videos").iterdir() if _CAMERA_VIDEO.match(p.name)), key=_natural_key)
        if not videos:
            raise FileNotFoundError(f"{scene / 'videos'} holds no camNN.mp4")
        focal = _focal_length(scene) or focal_length_mm
        if focal is None:
            raise ValueError(
                f"{scene}: no focal length; MultiCamVideo names it in a folder above the scenes "
                "(f<mm>_aperture<...>, e.g. f24_aperture5): put the scenes in such a folder"
            )
        for video in videos:
            name = video.relative_to(root).as_posix()
            if prompts is not None and name not in prompts:
                raise ValueError(f"{root / METADATA} has no row for {name} (file_name is relative to {root})")
            prompt = prompts[name] if prompts is not None else DEFAULT_PROMPT
            clips.append(MultiCamClip(scene, video.stem, name, focal, prompt))
    return clips


def sampled_frames(num_available: int, num_frames: int, frame_stride: int | None = None) -> list[int]:
    """Frame indices ``0, s, ..., (T - 1) s`` of a clip of ``num_available`` frames; by default ``s`` is the
    largest stride that fits, ``(N - 1) // (T - 1)``, so the frames span the clip."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    stride = frame_stride if frame_stride is not None else max((num_available - 1) // max(num_frames - 1, 1), 1)
    if stride < 1:
        raise ValueError(f"frame_stride must be >= 1, got {stride}")
    span = (num_frames - 1) * stride + 1
    if span > num_available:
        raise ValueError(f"{num_frames} frames at stride {stride} span {span}; the clip has {num_available}")
    return list(range(0, span, stride))


def _crop_box(source: tuple[int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(top, left, crop_height, crop_width)``: the centered crop of ``source (H, W)`` with ``size``'s aspect."""
    (src_h, src_w), (height, width) = source, size
    if src_w * height > src_h * width:
        crop_h, crop_w = src_h, min(src_w, round(src_h * width / height))
    else:
        crop_h, crop_w = min(src_h, round(src_w * height / width)), src_w
    return (src_h - crop_h) // 2, (src_w - crop_w) // 2, crop_h, crop_w


def clip_intrinsics(focal_length_mm: float, source: tuple[int, int], height: int, width: int) -> Tensor:
    """Pixel intrinsics ``(3, 3)`` of a MultiCamVideo frame of size ``source (H, W)`` after :func:`load_clip`'s
    center crop and resize to ``height x width``.

    Convention:
        The 23.76 mm square sensor spans the source frame; the principal point is its center. Pixel centers are
        at integer ``(u, v)`` (:mod:`lyra_rl.camera`), so a resize by ``s`` maps ``u`` to ``(u + 0.5) s - 0.5``.
    """
    src_h, src_w = source
    top, left, crop_h, crop_w = _crop_box(source, (height, width))
    scale_x, scale_y = width / crop_w, height / crop_h
    fx, fy = focal_length_mm / SENSOR_SIZE_MM * src_w * scale_x, focal_length_mm / SENSOR_SIZE_MM * src_h * scale_y
    cx = ((src_w - 1) / 2 - left + 0.5) * scale_x - 0.5
    cy = ((src_h - 1) / 2 - top + 0.5) * scale_y - 0.5
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def _read_frames(path: Path, indices: list[int], height: int, width: int) -> tuple[Tensor, tuple[int, int]]:
    """Frames ``indices`` (increasing) of a video, cropped and resized: ``(T, 3, H, W)`` in [0, 1], and the
    source size ``(H, W)``. Frames are decoded in order and resized one at a time (1280x1280 sources)."""
    wanted, frames, source, count = set(indices), [], (0, 0), 0
    with imageio.get_reader(path, "ffmpeg") as reader:
        for count, frame in enumerate(reader, 1):
            if count - 1 in wanted:
                pixels = torch.from_numpy(np.asarray(frame)[..., :3].copy()).permute(2, 0, 1).float() / 255
                source = tuple(pixels.shape[-2:])
                top, left, crop_h, crop_w = _crop_box(source, (height, width))
                crop = pixels[None, :, top : top + crop_h, left : left + crop_w]
                resized = F.interpolate(crop, (height, width), mode="bilinear", antialias=True, align_corners=False)
                frames.append(resized[0].clamp(0, 1))
            if count > indices[-1]:
                break
    if len(frames) < len(indices):
        raise ValueError(f"{path} has {count} frames; frame {indices[-1]} is needed")
    return torch.stack(frames), source


def load_clip(
    clip: MultiCamClip, num_frames: int, height: int, width: int, frame_stride: int | None = None, video: bool = True
) -> tuple[Tensor, Cameras, str]:
    """A clip's frames, commanded cameras and prompt, in lyra-rl's conventions.

    Args:
        clip: from :func:`list_clips`.
        num_frames: ``T``, the frames sampled (see :func:`sampled_frames`; the stride counts the frames the
            extrinsics annotate).
        height, width: the frames' size after the center crop to its aspect and the resize.
        frame_stride: the stride ``s`` (default: the largest that fits, spanning the clip).
        video: whether to decode every sampled frame (``False``: the first only, a conditioning image).

    Returns:
        frames: ``(T, 3, H, W)`` (``(1, 3, H, W)`` without ``video``) float32 in [0, 1];
        cameras: one trajectory of ``T`` frames, OpenCV ``cam_from_world`` relative to its first frame, in
            metres, with the frames' intrinsics (:func:`clip_intrinsics`);
        prompt: the clip's prompt.

    Raises:
        ValueError: naming the extrinsics file that lacks the clip's frames or camera, or the video that is
            shorter than its extrinsics.
    """
    try:
        data = json.loads(clip.extrinsics.read_text())
        available = sum(1 for key in data if re.fullmatch(r"frame\d+", key))
        indices = sampled_frames(available, num_frames, frame_stride)
        cam_from_world = from_multicam_extrinsics(data, clip.camera, indices)
    except (KeyError, ValueError, AttributeError) as error:
        raise ValueError(f"{clip.extrinsics}: cannot read {clip.camera}'s cameras: {error!r}") from error
    frames, source = _read_frames(clip.video, indices if video else indices[:1], height, width)
    intrinsics = clip_intrinsics(clip.focal_length_mm, source, height, width)
    cameras = Cameras(cam_from_world[None], intrinsics.expand(1, num_frames, 3, 3).clone())
    return frames, cameras, clip.prompt
