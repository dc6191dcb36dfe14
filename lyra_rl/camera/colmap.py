"""COLMAP / GLOMAP sparse models as cameras in the one convention (docs/conventions.md).

A model folder (``sparse/0``) holds ``cameras.txt`` and ``images.txt``, or the binary ``cameras.bin`` and
``images.bin`` COLMAP and GLOMAP write by default (read here, little-endian, as COLMAP's ``read_write_model.py``
documents them: no ``pycolmap`` needed). COLMAP's poses are world-to-camera with the
OpenCV axes (x right, y down, z forward), ``images.txt`` giving the rotation as a quaternion ``QW QX QY QZ`` and
the translation ``TX TY TZ``: the project's convention already, so no axis change. Lens distortion parameters are
read and not applied (the rewards assume pinhole frames: undistort with ``colmap image_undistorter`` first).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

#: Camera models -> how their parameters start: (fx, fy, cx, cy) from the first ones.
_FOCALS = {
    "SIMPLE_PINHOLE": "f",
    "SIMPLE_RADIAL": "f",
    "RADIAL": "f",
    "SIMPLE_RADIAL_FISHEYE": "f",
    "RADIAL_FISHEYE": "f",
    "PINHOLE": "fxfy",
    "OPENCV": "fxfy",
    "OPENCV_FISHEYE": "fxfy",
    "FULL_OPENCV": "fxfy",
}

#: COLMAP's camera model ids (binary models) -> name and number of parameters.
_MODEL_IDS = {
    0: ("SIMPLE_PINHOLE", 3),
    1: ("PINHOLE", 4),
    2: ("SIMPLE_RADIAL", 4),
    3: ("RADIAL", 5),
    4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8),
    6: ("FULL_OPENCV", 12),
    7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5),
    10: ("THIN_PRISM_FISHEYE", 12),
}


@dataclass
class ColmapModel:
    """The registered images of a sparse model, sorted by name.

    Attributes:
        names: image file names (as ``images.txt`` gives them).
        cam_from_world: ``(T, 4, 4)`` world-to-camera poses (OpenCV axes).
        intrinsics: ``(T, 3, 3)`` pinhole intrinsics in pixels of each image's camera.
    """

    names: list[str]
    cam_from_world: Tensor
    intrinsics: Tensor


def quaternion_to_rotation(q: Tensor) -> Tensor:
    """Rotation matrices ``(*, 3, 3)`` of quaternions ``(*, 4)`` in COLMAP's order ``(w, x, y, z)`` (normalised)."""
    w, x, y, z = (q / q.norm(dim=-1, keepdim=True)).unbind(-1)
    return torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def _data_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def _intrinsics(model: str, params: list[float], where: str) -> Tensor:
    if model not in _FOCALS:
        raise ValueError(f"{where}: camera model {model} is not supported (known: {', '.join(_FOCALS)})")
    fx, fy, cx, cy = (params[0], params[0], params[1], params[2]) if _FOCALS[model] == "f" else params[:4]
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _read_text(folder: Path) -> tuple[dict[int, Tensor], list[tuple[str, Tensor, int]]]:
    cameras = {}
    for number, line in enumerate(_data_lines(folder / "cameras.txt"), 1):
        fields = line.split()
        where = f"{folder / 'cameras.txt'}: camera line {number}"
        try:
            cameras[int(fields[0])] = _intrinsics(fields[1], [float(v) for v in fields[4:]], where)
        except (IndexError, ValueError) as error:
            raise ValueError(f"{where}: {error}") from None
    images = []
    for line in _data_lines(folder / "images.txt"):
        fields = line.split()
        if len(fields) != 10:  # an image's POINTS2D line: (x, y, point3d_id) triples, never 10 fields
            continue
        values = torch.tensor([float(v) for v in fields[1:8]], dtype=torch.float64)
        images.append((fields[9], values, int(fields[8])))
    return cameras, images


class _BinaryReader:
    """Little-endian fields of a COLMAP binary file, with its name in every error."""

    def __init__(self, path: Path):
        self.path, self.data, self.offset = path, path.read_bytes(), 0

    def read(self, format: str) -> tuple:
        offset = self.offset
        self.skip(struct.calcsize("<" + format))
        return struct.unpack_from("<" + format, self.data, offset)

    def skip(self, size: int) -> None:
        if self.offset + size > len(self.data):
            raise ValueError(f"{self.path}: ends inside a record (truncated at byte {len(self.data)})")
        self.offset += size

    def name(self) -> str:
        end = self.data.find(b"\0", self.offset)
        if end < 0:
            raise ValueError(f"{self.path}: ends inside an image name")
        name, self.offset = self.data[self.offset : end].decode(), end + 1
        return name


def _read_binary(folder: Path) -> tuple[dict[int, Tensor], list[tuple[str, Tensor, int]]]:
    cameras, file = {}, _BinaryReader(folder / "cameras.bin")
    for _ in range(file.read("Q")[0]):
        camera_id, model_id, _, _ = file.read("iiQQ")
        if model_id not in _MODEL_IDS:
            raise ValueError(f"{file.path}: camera {camera_id} has the unknown model id {model_id}")
        model, count = _MODEL_IDS[model_id]
        cameras[camera_id] = _intrinsics(model, list(file.read(f"{count}d")), f"{file.path}: camera {camera_id}")
    images, file = [], _BinaryReader(folder / "images.bin")
    for _ in range(file.read("Q")[0]):
        _, *values, camera_id = file.read("i7di")
        name = file.name()
        file.skip(file.read("Q")[0] * struct.calcsize("<ddq"))  # its POINTS2D: x, y, point3D id
        images.append((name, torch.tensor(values, dtype=torch.float64), camera_id))
    return cameras, images


def is_colmap_model(folder: str | Path) -> bool:
    """Whether ``folder`` holds a sparse model (text or binary)."""
    folder = Path(folder)
    return all((folder / f"{name}.txt").is_file() for name in ("cameras", "images")) or all(
        (folder / f"{name}.bin").is_file() for name in ("cameras", "images")
    )


def read_colmap_model(folder: str | Path) -> ColmapModel:
    """The registered images of the sparse model in ``folder`` (see the module), sorted by name.

    Raises:
        FileNotFoundError: no model in ``folder``.
        ValueError: an unsupported camera model or a line or record that does not parse (named), an image of a
            camera the model does not have, or fewer than 2 images.
    """
    folder = Path(folder)
    if not is_colmap_model(folder):
        raise FileNotFoundError(f"{folder}: no COLMAP model (cameras.txt and images.txt, or their .bin)")
    text = (folder / "cameras.txt").is_file()
    cameras, images = _read_text(folder) if text else _read_binary(folder)
    missing = sorted({camera for _, _, camera in images} - cameras.keys())
    if missing:
        raise ValueError(f"{folder}: images of camera {missing[0]}, which the model's cameras do not include")
    if len(images) < 2:
        raise ValueError(f"{folder}: {len(images)} registered image; a camera path needs at least 2")
    images.sort(key=lambda image: image[0])
    values = torch.stack([v for _, v, _ in images])
    cam_from_world = torch.eye(4, dtype=torch.float64).repeat(len(images), 1, 1)
    cam_from_world[:, :3, :3] = quaternion_to_rotation(values[:, :4])
    cam_from_world[:, :3, 3] = values[:, 4:]
    intrinsics = torch.stack([cameras[camera] for _, _, camera in images])
    return ColmapModel([name for name, _, _ in images], cam_from_world.float(), intrinsics.float())
