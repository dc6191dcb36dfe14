import json

import torch

from lyra_rl.camera import default_intrinsics, trajectory_preset
from lyra_rl.cli import main
from lyra_rl.data.renderer import render
from lyra_rl.data.scenes import make_scene
from lyra_rl.video import read_video, write_video


def test_score_an_mp4_against_a_preset(tmp_path, capsys):
    video = render(make_scene(11), trajectory_preset("forward_left", 12), default_intrinsics(96, 160), 96, 160).frames
    path = write_video(tmp_path / "clip.mp4", video)
    decoded, fps = read_video(path)
    assert decoded.shape == video.shape and fps == 8.0
    assert (decoded - video).abs().mean() < 0.05
    assert main(["score", str(path), "--direction", "forward_left", "--json"]) == 0
    right = json.loads(capsys.readouterr().out)
    assert main(["score", str(path), "--direction", "forward_right", "--json"]) == 0
    wrong = json.loads(capsys.readouterr().out)
    for name in ("pose_consistency", "epipolar", "reprojection"):
        assert right["rewards"][name]["reward"] > wrong["rewards"][name]["reward"] + 0.2, name
    assert "rot_err" in right["rewards"]["pose_consistency"]


def test_table_output_and_errors(tmp_path, capsys):
    video = torch.rand(4, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    path = write_video(tmp_path / "noise.mp4", video)
    assert main(["score", str(path), "--direction", "left", "--rewards", "epipolar"]) == 0
    assert "epipolar" in capsys.readouterr().out
    assert main(["score", str(tmp_path / "missing.mp4"), "--direction", "left"]) == 2
    assert main(["score", str(path), "--direction", "sideways"]) == 2
    assert "neither a direction" in capsys.readouterr().err
