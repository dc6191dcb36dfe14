"""Videos people can open: mp4 read/write (H.264 through imageio-ffmpeg) and top-down trajectory plots."""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from .camera import invert_pose  # noqa: E402


def read_video(path: str | Path, max_frames: int | None = None) -> tuple[Tensor, float]:
    """Reads a video file as ``(T, 3, H, W)`` float32 in [0, 1] and its frame rate."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no video at {path}")
    frames = []
    with imageio.get_reader(path, "ffmpeg") as reader:
        fps = float(reader.get_meta_data().get("fps", 16.0))
        for k, frame in enumerate(reader):
            if max_frames is not None and k >= max_frames:
                break
            frames.append(np.asarray(frame)[..., :3])
    if not frames:
        raise ValueError(f"{path} holds no frames")
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255, fps


def write_video(path: str | Path, video: Tensor, fps: float = 8.0) -> Path:
    """Writes ``(T, 3, H, W)`` in [0, 1] as an H.264 mp4 that browsers and players open."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = (video.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    with imageio.get_writer(path, "ffmpeg", fps=fps, codec="libx264", quality=8, macro_block_size=1,
                            ffmpeg_log_level="error", pixelformat="yuv420p") as writer:
        for frame in frames:
            writer.append_data(frame)
    return path


def plot_trajectories(trajectories: dict[str, Tensor], path: str | Path, title: str = "camera paths (top view)") -> Path:
    """Draws camera centers ``(T, 4, 4)`` extrinsics from above (x right, z forward up the page) with headings."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = len(trajectories)
    centers_all = np.concatenate([invert_pose(t.double()).numpy()[:, :3, 3] for t in trajectories.values()])
    half = max(1.0, float(np.abs(centers_all[:, [0, 2]]).max()) * 1.15)
    fig, axes = plt.subplots(1, count, figsize=(2.2 * count, 2.6), squeeze=False)
    for ax, (name, cam_from_world) in zip(axes[0], trajectories.items()):
        world_from_cam = invert_pose(cam_from_world.double()).numpy()
        centers, forward = world_from_cam[:, :3, 3], world_from_cam[:, :3, 2]
        ax.plot(centers[:, 0], centers[:, 2], "-", color="tab:blue")
        step = max(1, len(centers) // 8)
        ax.quiver(centers[::step, 0], centers[::step, 2], forward[::step, 0], forward[::step, 2],
                  angles="xy", scale_units="xy", scale=4 / half, width=0.012, color="tab:red")
        ax.plot(centers[0, 0], centers[0, 2], "ko", markersize=3)
        ax.set_title(name, fontsize=9)
        ax.set_aspect("equal")
        ax.set_xlim(-half, half)
        ax.set_ylim(-0.3 * half, 1.9 * half)
        ax.tick_params(labelsize=6)
        ax.set_xlabel("x", fontsize=7)
    axes[0][0].set_ylabel("z (forward)", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
