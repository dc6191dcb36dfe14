"""Videos people can open: mp4 read/write (H.264 through imageio-ffmpeg) and top-down trajectory plots."""

from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path

import imageio.v2 as imageio
import imageio_ffmpeg
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from .atomic import atomic_write  # noqa: E402
from .camera import camera_centers, invert_pose  # noqa: E402
from .errors import VideoError  # noqa: E402

#: the ``[h264 @ 0x55e6...] `` that starts ffmpeg's log lines
FFMPEG_PREFIX = re.compile(r"^(\[[^\]]* @ 0x[0-9a-f]+\] *)+")


def probe_video(path: str | Path, max_frames: int | None = None) -> int:
    """Decodes a video once with ffmpeg (its first ``max_frames`` frames) and returns how many frames it holds.

    Raises:
        VideoError: for a file ffmpeg cannot open (``does not decode (...)``), a stream it decodes with errors
            (``is damaged (...)``, with the number of errors and the first) or one without frames; the message
            names the file and ffmpeg's first error, without its banner.
    """
    frames = [] if max_frames is None else ["-frames:v", str(max_frames)]
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(path), *frames]
    command += ["-map", "0:v:0", "-f", "null", "-progress", "pipe:1", "-"]
    result = subprocess.run(command, capture_output=True, text=True, errors="replace")
    errors = [FFMPEG_PREFIX.sub("", line).strip().rstrip(".") for line in result.stderr.splitlines() if line.strip()]
    if result.returncode != 0:
        first = errors[0] if errors else f"ffmpeg exit status {result.returncode}"
        raise VideoError(f"video {path} does not decode ({first})")
    if errors:
        raise VideoError(f"video {path} is damaged ({len(errors)} decoder errors; the first: {errors[0]})")
    counts = [int(line.removeprefix("frame=")) for line in result.stdout.splitlines() if line.startswith("frame=")]
    if not counts or counts[-1] == 0:
        raise VideoError(f"video {path} holds no frames")
    return counts[-1]


def read_video(path: str | Path, max_frames: int | None = None) -> tuple[Tensor, float]:
    """Reads a video file as ``(T, 3, H, W)`` float32 in [0, 1] and its frame rate (of its first ``max_frames``).

    Raises:
        FileNotFoundError: for no file at ``path``.
        VideoError: for a file ffmpeg cannot decode, one it decodes with errors or one without frames
            (:func:`probe_video`); the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no video at {path}")
    probe_video(path, max_frames)
    frames = []
    with imageio.get_reader(path, "ffmpeg") as reader:
        fps = float(reader.get_meta_data().get("fps", 16.0))
        for k, frame in enumerate(reader):
            if max_frames is not None and k >= max_frames:
                break
            frames.append(np.asarray(frame)[..., :3])
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255, fps


def write_video(path: str | Path, video: Tensor, fps: float = 8.0) -> Path:
    """Writes ``(T, 3, H, W)`` in [0, 1] as an H.264 mp4 that browsers and players open, atomically
    (:func:`~lyra_rl.atomic.atomic_write`: a crash mid-write leaves no partial video at ``path``)."""
    path = Path(path)
    frames = (video.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    with (
        atomic_write(path) as tmp,
        imageio.get_writer(
            tmp,
            "ffmpeg",
            fps=fps,
            codec="libx264",
            quality=8,
            macro_block_size=1,
            ffmpeg_log_level="error",
            pixelformat="yuv420p",
        ) as writer,
    ):
        for frame in frames:
            writer.append_data(frame)
    return path


def plot_trajectories(
    trajectories: dict[str, Tensor], path: str | Path, title: str = "camera paths", columns: int = 8
) -> Path:
    """Draws camera centers ``(T, 4, 4)`` extrinsics with their headings: from above (x right, z forward up the
    page), or from the side (z forward to the right, up the page) for a path that moves mostly vertically (a tilt,
    a rise), ``columns`` paths a row."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = len(trajectories)
    rows, columns = math.ceil(count / columns), min(count, columns)
    centers_all = np.concatenate([camera_centers(t.double()).numpy() for t in trajectories.values()])
    half = max(1.0, float(np.abs(centers_all).max()) * 1.15)
    back = max(0.3 * half, float(-centers_all[:, 2].min()) + 0.3)  # room behind the start (a dolly out)
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.6 * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    for ax, (name, cam_from_world) in zip(axes.flat, trajectories.items()):
        world_from_cam = invert_pose(cam_from_world.double()).numpy()
        centers, forward = world_from_cam[:, :3, 3], world_from_cam[:, :3, 2]
        side = np.ptp(centers[:, 1]) + np.ptp(forward[:, 1]) > np.ptp(centers[:, 0]) + np.ptp(forward[:, 0]) + 1e-9
        # (horizontal, vertical) page axes: (x, z) from above, (z, -y) from the side (-y is up)
        flat_centers = np.stack([centers[:, 2], -centers[:, 1]] if side else [centers[:, 0], centers[:, 2]], 1)
        flat_forward = np.stack([forward[:, 2], -forward[:, 1]] if side else [forward[:, 0], forward[:, 2]], 1)
        ax.plot(flat_centers[:, 0], flat_centers[:, 1], "-", color="tab:blue")
        step = max(1, len(centers) // 8)
        ax.quiver(
            flat_centers[::step, 0],
            flat_centers[::step, 1],
            flat_forward[::step, 0],
            flat_forward[::step, 1],
            angles="xy",
            scale_units="xy",
            scale=4 / half,
            width=0.012,
            color="tab:red",
        )
        ax.plot(flat_centers[0, 0], flat_centers[0, 1], "ko", markersize=3)
        ax.set_title(f"{name} (side)" if side else name, fontsize=9)
        ax.set_aspect("equal")
        if side:
            ax.set_xlim(-back, 1.9 * half)
            ax.set_ylim(-half, half)
        else:
            ax.set_xlim(-half, half)
            ax.set_ylim(-back, 1.9 * half)
        ax.tick_params(labelsize=6)
        ax.set_xlabel("z (forward)" if side else "x", fontsize=7)
        ax.set_ylabel("up" if side else "z (forward)", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


PATH_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:purple")


def camera_path_video(video: Tensor, paths: dict[str, Tensor], min_height: int = 192) -> Tensor:
    """The video with the camera paths drawn from above beside it, the current camera marked in each frame with
    its heading (so that rotations in place show too).

    Args:
        video: ``(T, 3, H, W)`` in [0, 1]; upscaled (nearest) to at least ``min_height`` rows.
        paths: name -> ``(T, 4, 4)`` world-to-camera extrinsics, e.g. ``{"commanded": ..., "estimated": ...}``.

    Returns:
        ``(T, 3, H', W' + H')`` in [0, 1]: the frame on the left, a square top view (x right, z forward up
        the page) on the right.
    """
    for name, cam_from_world in paths.items():
        if cam_from_world.shape != (len(video), 4, 4):
            raise ValueError(f"path {name!r} has shape {tuple(cam_from_world.shape)}, expected ({len(video)}, 4, 4)")
    scale = -(-min_height // video.shape[-2])
    frames = torch.nn.functional.interpolate(video.float(), scale_factor=scale, mode="nearest")
    side = frames.shape[-2]
    world_from_cam = {name: invert_pose(p.double()).numpy() for name, p in paths.items()}
    centers = {name: w[:, :3, 3] for name, w in world_from_cam.items()}
    headings = {name: w[:, :3, 2] for name, w in world_from_cam.items()}  # each camera's z axis in the world
    stacked = np.concatenate(list(centers.values()))
    half = max(float(np.abs(stacked[:, [0, 2]]).max()) * 1.15, 1e-3)
    dpi = 100
    fig, ax = plt.subplots(figsize=(side / dpi, side / dpi), dpi=dpi)
    markers, arrows = [], []
    for color, (name, c) in zip(PATH_COLORS, centers.items()):
        ax.plot(c[:, 0], c[:, 2], "-", color=color, label=name, linewidth=1.2)
        markers.append(ax.plot(c[:1, 0], c[:1, 2], "o", color=color, markersize=4)[0])
        arrows.append(ax.plot([], [], "-", color=color, linewidth=2.0)[0])
    ax.set_aspect("equal")
    ax.set_xlim(-half, half)
    ax.set_ylim(-0.3 * half, 1.7 * half)
    ax.tick_params(labelsize=5)
    ax.legend(fontsize=6, loc="upper left")
    fig.tight_layout(pad=0.3)
    panels = []
    for t in range(len(video)):
        for marker, arrow, c, h in zip(markers, arrows, centers.values(), headings.values()):
            marker.set_data(c[t : t + 1, 0], c[t : t + 1, 2])
            tip = c[t] + 0.3 * half * h[t]
            arrow.set_data([c[t, 0], tip[0]], [c[t, 2], tip[2]])
        fig.canvas.draw()
        rgba = np.asarray(fig.canvas.buffer_rgba())[:side, :side, :3]
        panels.append(torch.from_numpy(rgba.copy()).permute(2, 0, 1).float() / 255)
    plt.close(fig)
    return torch.cat([frames, torch.stack(panels)], dim=-1)
