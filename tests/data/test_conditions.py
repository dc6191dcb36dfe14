import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from lyra_rl.camera import trajectory_preset
from lyra_rl.data.conditions import procedural_conditions, read_conditions, user_conditions


def write_image(path, value):
    iio.imwrite(path, np.full((40, 60, 3), value, dtype=np.uint8))


def test_procedural_conditions_depend_on_the_global_index_only():
    both = procedural_conditions(0, [3, 4], 9, 32, 48)
    alone = procedural_conditions(0, [4], 9, 32, 48)
    torch.testing.assert_close(both.images[1], alone.images[0])
    assert both.prompts[1] == alone.prompts[0] and "forward right" in alone.prompts[0]  # preset 4 mod 7
    assert both.cameras.cam_from_world.shape == (2, 9, 4, 4) and both.ids.tolist() == [3, 4]


def test_jsonl_manifest(tmp_path):
    write_image(tmp_path / "a.png", 200)
    trajectory = tmp_path / "path.json"
    trajectory.write_text(json.dumps({"cam_from_world": trajectory_preset("right", 5).tolist()}))
    rows = [
        {"image": "a.png", "prompt": "a street", "direction": "left"},
        {"image": "a.png", "prompt": "a park", "direction": "path.json"},
    ]
    (tmp_path / "conditions.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    entries = read_conditions(tmp_path / "conditions.jsonl")
    batch = user_conditions(entries, [0, 1, 2], 9, 32, 48)
    assert batch.images.shape == (3, 3, 32, 48) and batch.images.mean() == pytest.approx(200 / 255, abs=1e-3)
    assert batch.prompts == ["a street", "a park", "a street"]
    torch.testing.assert_close(batch.cameras.cam_from_world[0], trajectory_preset("left", 9))
    torch.testing.assert_close(batch.cameras.cam_from_world[1], trajectory_preset("right", 9), atol=1e-5, rtol=0)


def test_image_folder_and_errors(tmp_path):
    write_image(tmp_path / "x.png", 10)
    (tmp_path / "x.txt").write_text("a hallway\n")
    write_image(tmp_path / "y.png", 20)
    (tmp_path / "y.txt").write_text("a garden")
    (tmp_path / "y.direction").write_text("s_curve")
    entries = read_conditions(tmp_path)
    assert [(e.prompt, e.direction) for e in entries] == [("a hallway", "forward"), ("a garden", "s_curve")]
    write_image(tmp_path / "z.png", 30)
    with pytest.raises(ValueError, match="z.png: no prompt file z.txt beside it"):
        read_conditions(tmp_path)
    (tmp_path / "bad.jsonl").write_text(json.dumps({"image": "x.png"}))
    with pytest.raises(ValueError, match="missing"):
        read_conditions(tmp_path / "bad.jsonl")


def test_random_camera_paths_are_smooth_reproducible_and_differ_per_condition():
    import math

    from lyra_rl.camera import camera_centers, random_trajectory, rotation_angle

    batch = procedural_conditions(0, [3, 4], 9, 32, 48, camera_paths="random")
    again = procedural_conditions(0, [4], 9, 32, 48, camera_paths="random")
    assert torch.equal(batch.cameras.cam_from_world[1], again.cameras.cam_from_world[0])  # a function of (seed, i)
    assert not torch.equal(batch.cameras.cam_from_world[0], batch.cameras.cam_from_world[1])
    assert batch.prompts[0].endswith("random path")
    for seed in range(20):
        path = random_trajectory(17, torch.Generator().manual_seed(seed)).double()
        assert torch.allclose(path[0], torch.eye(4, dtype=torch.float64), atol=1e-6)
        centers = camera_centers(path)
        steps = (centers[1:] - centers[:-1]).norm(dim=-1)
        assert float(centers[-1, 2]) > 0 and float(steps.max()) < 0.5  # ahead of the start, no jumps
        turns = rotation_angle(path[1:, :3, :3] @ path[:-1, :3, :3].transpose(-1, -2))
        assert math.degrees(float(turns.max())) < 25  # no jumps, even on the fast first steps of variable speed
    with pytest.raises(ValueError, match="camera_paths"):
        procedural_conditions(0, [0], 9, 32, 48, camera_paths="spiral")
