import json

import pytest
import torch

from lyra_rl.camera import Cameras, default_intrinsics, trajectory_preset
from lyra_rl.cli import main
from lyra_rl.data.renderer import render
from lyra_rl.data.scenes import make_scene
from lyra_rl.evaluate import compare, evaluate_videos, psnr, summarize
from lyra_rl.reward import RewardSet
from lyra_rl.video import write_video

K = default_intrinsics(64, 96)


def rendered(direction: str, seed: int = 3) -> torch.Tensor:
    return render(make_scene(seed), trajectory_preset(direction, 9), K, 64, 96).frames


def test_a_video_that_follows_its_command_has_small_camera_errors():
    """Two renders of one scene, one along the command (forward_left) and one along forward_right: the
    first's estimated path is close to the command, the other's is far, and every reward ranks them alike."""
    videos = torch.stack([rendered("forward_left"), rendered("forward_right")])
    cameras = Cameras.from_trajectory(trajectory_preset("forward_left", 9), K, batch_size=2)
    with RewardSet.from_names(["pose_consistency", "epipolar"]) as reward_set:
        (true, wrong), paths = evaluate_videos(
            videos, cameras, ["", ""], reward_set, references=videos[:1].expand(2, -1, -1, -1, -1)
        )
    assert true["camera_failed"] == wrong["camera_failed"] == 0.0 and paths[0].shape == (9, 4, 4)
    assert true["rot_err_deg"] < 3.0 < 10.0 < wrong["rot_err_deg"]
    assert true["camera_control"] > 0.7 > wrong["camera_control"] and true["rot_err"] < wrong["rot_err"]
    assert true["reward/pose_consistency"] > wrong["reward/pose_consistency"]
    assert true["reward/epipolar"] > wrong["reward/epipolar"]
    assert true["psnr"] == float("inf") and wrong["psnr"] < 30


def test_summaries_and_comparisons_over_seeds():
    before = [{"seed": s, "rot_err": 2.0 + s, "video": "a"} for s in range(3)]
    after = [{"seed": s, "rot_err": 1.0 + s + 0.1 * s, "video": "a"} for s in range(3)]
    assert summarize(before)["rot_err"] == {"mean": 3.0, "std": 1.0, "count": 3}
    row = compare(before, after)["rot_err"]
    assert row["delta"] == pytest.approx(-0.9) and row["relative"] == pytest.approx(-0.3)
    assert row["delta_std"] == pytest.approx(0.1)  # per-seed deltas -1.0, -0.9, -0.8
    assert psnr(torch.zeros(1, 3, 2, 2), torch.full((1, 3, 2, 2), 0.1)) == pytest.approx(20.0)


def test_evaluate_command_on_a_folder(tmp_path, capsys):
    folder = tmp_path / "videos"
    write_video(folder / "good.mp4", rendered("forward_left"))
    write_video(folder / "bad.mp4", rendered("forward_right"))
    (folder / "good.direction").write_text("forward_left")
    assert main(["evaluate", str(folder), "--out", str(tmp_path / "out"), "--rewards", "pose_consistency"]) == 2
    assert "bad.mp4: no bad.direction beside it and no --direction given" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing written before every input is checked
    code = main(
        [
            "evaluate",
            str(folder),
            "--out",
            str(tmp_path / "out"),
            "--direction",
            "forward_left",
            "--rewards",
            "pose_consistency",
        ]
    )
    assert code == 0 and "| `rot_err_deg` |" in capsys.readouterr().out
    result = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    rows = {row["video"]: row for row in result["videos"]}
    assert rows["good.mp4"]["rot_err_deg"] < rows["bad.mp4"]["rot_err_deg"]
    assert (tmp_path / "out" / "trajectories" / "good.png").is_file() and (
        tmp_path / "out" / "evaluation.md"
    ).is_file()
    assert main(["compare", str(tmp_path / "out" / "evaluation.json"), str(tmp_path / "out" / "evaluation.json")]) == 0
    assert "| `rot_err_deg` |" in capsys.readouterr().out
