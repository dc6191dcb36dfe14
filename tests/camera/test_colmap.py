"""COLMAP sparse models: poses and intrinsics read back as written, in the one convention, wherever a
trajectory or a frames folder is accepted."""

import struct

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from lyra_rl.camera import get_trajectory, trajectory_preset
from lyra_rl.camera.colmap import quaternion_to_rotation, read_colmap_model
from lyra_rl.camera.poses import relative_to_first


def rotation_to_quaternion(R: np.ndarray) -> np.ndarray:
    """(w, x, y, z) of a rotation matrix (Shepperd's method, as COLMAP writes them)."""
    w = np.sqrt(max(0.0, 1 + R[0, 0] + R[1, 1] + R[2, 2])) / 2
    x = np.copysign(np.sqrt(max(0.0, 1 + R[0, 0] - R[1, 1] - R[2, 2])) / 2, R[2, 1] - R[1, 2])
    y = np.copysign(np.sqrt(max(0.0, 1 - R[0, 0] + R[1, 1] - R[2, 2])) / 2, R[0, 2] - R[2, 0])
    z = np.copysign(np.sqrt(max(0.0, 1 - R[0, 0] - R[1, 1] + R[2, 2])) / 2, R[1, 0] - R[0, 1])
    return np.array([w, x, y, z])


def write_model(folder, cam_from_world: torch.Tensor, shuffle: bool = True):
    """cameras.txt (a PINHOLE and a SIMPLE_RADIAL camera) and images.txt in COLMAP's text format, the images
    written out of name order, each with a POINTS2D line (one of them empty)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cameras.txt").write_text(
        "# Camera list with one line of data per camera:\n"
        "1 PINHOLE 96 64 80.5 81.5 48.0 32.0\n2 SIMPLE_RADIAL 96 64 70.0 47.5 31.5 0.01\n"
    )
    lines = ["# Image list with two lines of data per image:"]
    order = list(range(len(cam_from_world)))[::-1] if shuffle else range(len(cam_from_world))
    for k in order:
        q = rotation_to_quaternion(cam_from_world[k, :3, :3].double().numpy())
        t = cam_from_world[k, :3, 3].double().numpy()
        values = " ".join(f"{v:.12f}" for v in (*q, *t))
        lines.append(f"{k + 1} {values} {1 + k % 2} frame_{k:03d}.png")
        lines.append("" if k == 2 else "10.5 20.5 -1 30.0 40.0 7")
    (folder / "images.txt").write_text("\n".join(lines) + "\n")


def test_a_written_model_reads_back_in_name_order(tmp_path):
    truth = trajectory_preset("forward_left", 6)
    write_model(tmp_path / "sparse" / "0", truth)
    model = read_colmap_model(tmp_path / "sparse" / "0")
    assert model.names == [f"frame_{k:03d}.png" for k in range(6)]
    torch.testing.assert_close(model.cam_from_world, truth, atol=1e-6, rtol=0)
    assert model.intrinsics[0].tolist() == [[80.5, 0, 48.0], [0, 81.5, 32.0], [0, 0, 1]]
    assert model.intrinsics[1].tolist() == [[70.0, 0, 47.5], [0, 70.0, 31.5], [0, 0, 1]]
    torch.testing.assert_close(
        get_trajectory(str(tmp_path / "sparse" / "0"), 6), relative_to_first(truth), atol=1e-6, rtol=0
    )


def write_binary_model(folder, cam_from_world: torch.Tensor):
    """cameras.bin (PINHOLE and SIMPLE_RADIAL, as write_model's) and images.bin in COLMAP's binary layout
    (little-endian; read_write_model.py's), images out of name order, each with two POINTS2D."""
    folder.mkdir(parents=True, exist_ok=True)
    cameras = struct.pack("<Q", 2)
    cameras += struct.pack("<iiQQ4d", 1, 1, 96, 64, 80.5, 81.5, 48.0, 32.0)
    cameras += struct.pack("<iiQQ4d", 2, 2, 96, 64, 70.0, 47.5, 31.5, 0.01)
    (folder / "cameras.bin").write_bytes(cameras)
    images = struct.pack("<Q", len(cam_from_world))
    for k in reversed(range(len(cam_from_world))):
        q = rotation_to_quaternion(cam_from_world[k, :3, :3].double().numpy())
        t = cam_from_world[k, :3, 3].double().numpy()
        images += struct.pack("<i7di", k + 1, *q, *t, 1 + k % 2) + f"frame_{k:03d}.png".encode() + b"\0"
        images += struct.pack("<Q", 2) + struct.pack("<ddq", 10.5, 20.5, -1) + struct.pack("<ddq", 30.0, 40.0, 7)
    (folder / "images.bin").write_bytes(images)


def test_a_binary_model_reads_as_its_text_twin(tmp_path):
    truth = trajectory_preset("orbit_left", 6)
    write_model(tmp_path / "text", truth)
    write_binary_model(tmp_path / "binary", truth)
    text, binary = read_colmap_model(tmp_path / "text"), read_colmap_model(tmp_path / "binary")
    assert binary.names == text.names == [f"frame_{k:03d}.png" for k in range(6)]
    torch.testing.assert_close(binary.cam_from_world, truth, atol=1e-6, rtol=0)
    torch.testing.assert_close(binary.intrinsics, text.intrinsics)
    (tmp_path / "binary" / "images.bin").write_bytes((tmp_path / "binary" / "images.bin").read_bytes()[:-30])
    with pytest.raises(ValueError, match="images.bin: ends inside a record"):
        read_colmap_model(tmp_path / "binary")


def test_quaternions_follow_colmaps_order():
    half_turn_about_z = torch.tensor([0.0, 0.0, 0.0, 1.0])  # w, x, y, z
    torch.testing.assert_close(quaternion_to_rotation(half_turn_about_z), torch.diag(torch.tensor([-1.0, -1.0, 1.0])))
    yaw = torch.tensor([np.cos(0.25), 0.0, np.sin(0.25), 0.0], dtype=torch.float32)  # 0.5 rad about y
    R = quaternion_to_rotation(yaw)
    assert R[0, 2] == pytest.approx(np.sin(0.5), abs=1e-6) and R[2, 0] == pytest.approx(-np.sin(0.5), abs=1e-6)


def test_bad_models_are_named(tmp_path):
    write_model(tmp_path, trajectory_preset("left", 3), shuffle=False)
    (tmp_path / "cameras.txt").write_text("1 EQUIRECTANGULAR 96 64 1 2 3\n2 PINHOLE 96 64 1 1 48 32\n")
    with pytest.raises(ValueError, match="camera line 1: .*camera model EQUIRECTANGULAR is not supported"):
        read_colmap_model(tmp_path)
    (tmp_path / "cameras.txt").write_text("1 PINHOLE 96 64 80 80 48 32\n")
    with pytest.raises(ValueError, match="images of camera 2, which the model's cameras do not include"):
        read_colmap_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="no COLMAP model"):
        read_colmap_model(tmp_path / "nothing")


def test_a_colmap_frames_folder_is_a_clip(tmp_path):
    from lyra_rl.fidelity import load_frames_folder

    truth = trajectory_preset("right", 4)
    write_model(tmp_path / "sparse", truth)
    (tmp_path / "images").mkdir()
    for k in range(4):
        iio.imwrite(tmp_path / "images" / f"frame_{k:03d}.png", np.full((64, 96, 3), 40 * k, np.uint8))
    clip = load_frames_folder(tmp_path)
    assert clip.video.shape == (4, 3, 64, 96) and clip.video[2].mean() == pytest.approx(80 / 255, abs=1e-6)
    torch.testing.assert_close(clip.cam_from_world, relative_to_first(truth), atol=1e-6, rtol=0)
