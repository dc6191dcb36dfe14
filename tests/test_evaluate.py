import json
from pathlib import Path

import pytest
import torch
import yaml

from lyra_rl.camera import Cameras, default_intrinsics, trajectory_preset
from lyra_rl.cli import main
from lyra_rl.data.renderer import render
from lyra_rl.data.scenes import make_scene
from lyra_rl.evaluate import compare, evaluate_videos, psnr, summarize
from lyra_rl.reward import RewardSet
from lyra_rl.training.checkpoint import load_trained_weights
from lyra_rl.video import read_video, write_video
from policies import build_policy
from policies.training import parse_recipe_config

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


def test_lpips_to_the_reference_where_the_backbone_is_cached(monkeypatch, tmp_path):
    import torchvision

    from lyra_rl import evaluate
    from rewards.perceptual import BACKBONE_FILES

    videos = torch.stack([rendered("forward"), rendered("forward", seed=4)])
    cameras = Cameras.from_trajectory(trajectory_preset("forward", 9), K, batch_size=2)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    evaluate.reference_lpips.cache_clear()
    with RewardSet.from_names(["pose_consistency"]) as reward_set:
        rows, _ = evaluate_videos(
            videos, cameras, ["", ""], reward_set, references=videos[:1].expand(2, -1, -1, -1, -1)
        )
        assert "lpips" not in rows[0]  # no backbone: no LPIPS, and no error
        (tmp_path / "checkpoints").mkdir()
        torch.manual_seed(0)
        torch.save(torchvision.models.alexnet().state_dict(), tmp_path / "checkpoints" / BACKBONE_FILES["alex"])
        evaluate.reference_lpips.cache_clear()
        rows, _ = evaluate_videos(
            videos, cameras, ["", ""], reward_set, references=videos[:1].expand(2, -1, -1, -1, -1)
        )
    evaluate.reference_lpips.cache_clear()
    assert rows[0]["lpips"] < 1e-6 < rows[1]["lpips"]  # the same render, and another scene's


def test_frozen_and_blurred_videos_show_in_the_motion_and_sharpness_ratios():
    from lyra_rl.data import broken

    true = rendered("forward_left")
    videos = torch.stack([true, broken.freeze_frames(true), broken.blur(true, 3.0)])
    cameras = Cameras.from_trajectory(trajectory_preset("forward_left", 9), K, batch_size=3)
    with RewardSet.from_names(["pose_consistency"]) as reward_set:
        rows, _ = evaluate_videos(videos, cameras, [""] * 3, reward_set, references=true.expand(3, -1, -1, -1, -1))
    assert rows[0]["motion_ratio"] == rows[0]["sharpness_ratio"] == 1.0
    assert rows[1]["motion_ratio"] == 0.0 and rows[2]["sharpness_ratio"] < 0.3 < rows[2]["motion_ratio"]


def test_summaries_and_comparisons_over_seeds():
    before = [{"seed": s, "rot_err": 2.0 + s, "video": "a"} for s in range(3)]
    after = [{"seed": s, "rot_err": 1.0 + s + 0.1 * s, "video": "a"} for s in range(3)]
    assert summarize(before)["rot_err"] == {"mean": 3.0, "std": 1.0, "count": 3}
    row = compare(before, after)["rot_err"]
    assert row["delta"] == pytest.approx(-0.9) and row["relative"] == pytest.approx(-0.3)
    assert row["delta_std"] == pytest.approx(0.1)  # per-seed deltas -1.0, -0.9, -0.8
    assert row["delta_sem"] == pytest.approx(0.1 / 3**0.5)  # one video per seed: the same deltas
    # Paired: a path found after training on a video that had none before enters neither side.
    before[0]["rot_err"], after[1]["rot_err"] = float("nan"), 50.0
    row = compare(before, after + [{"seed": 7, "rot_err": 0.0, "video": "b"}])["rot_err"]
    assert row["count"] == 2 and row["before"] == pytest.approx(3.5) and row["after"] == pytest.approx(26.6)
    # A diagnostic some videos lack on either side (their reward failed there) is compared where both have it.
    before[1]["sampson_px"], after[1]["sampson_px"], after[2]["sampson_px"] = 1.0, 0.5, 9.0
    assert compare(before, after)["sampson_px"]["count"] == 1
    with pytest.raises(ValueError, match="share no video"):
        compare(before, [{"seed": 9, "rot_err": 1.0, "video": "a"}])
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


# The model mode on the tiny policy (random weights) of the main job's recipe, at 5 frames of 32x48 and 2 ODE steps.
TINY_RECIPE = Path(__file__).parents[1] / "recipes" / "configs" / "grpo_tiny.yaml"
ROW_KEYS = {"video", "seed", "condition", "rot_err", "camera_control", "camera_failed", "psnr"}


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    config = yaml.safe_load(TINY_RECIPE.read_text())
    config.update(num_frames=5, height=32, width=48, eval_sampling_steps=2)
    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def evaluate_model_rows(config: Path, out: Path, *args: str) -> list[dict]:
    command = ["evaluate", "--config", str(config), "--out", str(out), "--rewards", "pose_consistency", *args]
    assert main(command) == 0
    return json.loads((out / "evaluation.json").read_text())["videos"]


@pytest.fixture(scope="module")
def base_rows(tiny_config, tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("base")
    return out, evaluate_model_rows(tiny_config, out, "--num-conditions", "2", "--seeds", "0", "1")


def test_evaluate_command_on_a_model(base_rows):
    """Two held-out conditions, two seeds: four rows by seed then condition, each with its side-by-side mp4
    (generated | true render | camera paths) and its trajectory plot; PSNR is to the true render."""
    out, rows = base_rows
    assert [(r["seed"], r["condition"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(ROW_KEYS | {"reward/pose_consistency"} <= row.keys() for row in rows)
    assert rows[0]["psnr"] != rows[2]["psnr"]  # another seed, another sample
    for row in rows:
        stem = row["video"].removesuffix(".mp4")
        video, _ = read_video(out / "videos" / row["video"])
        assert video.shape == (5, 3, 192, 2 * 288 + 192)  # both videos upscaled 6x, then the square top view
        assert (out / "trajectories" / f"{stem}.png").is_file()
    assert "| `psnr` |" in (out / "evaluation.md").read_text()
    assert "psnr" in json.loads((out / "evaluation.json").read_text())["summary"]


def test_evaluate_loads_a_checkpoint(base_rows, tiny_config, tmp_path):
    """Trained weights saved as the trainer saves them are loaded (a checkpoint folder, or a run's folder: its
    last checkpoint), and the model they make samples another video than the base model."""
    policy_config, _, config = parse_recipe_config(tiny_config)
    policy = build_policy(policy_config, config.seed)
    generator = torch.Generator().manual_seed(0)
    state = {
        k: p.detach() + 0.5 * torch.randn(p.shape, generator=generator) for k, p in policy.trained_parameters().items()
    }
    checkpoint = tmp_path / "run" / "checkpoint-3"
    checkpoint.mkdir(parents=True)
    policy.save_trained_weights(checkpoint, state)
    (checkpoint / "trainer_state.pt").touch()  # what makes it a complete checkpoint of the run
    load_trained_weights(policy.trained_parameters(), policy.read_trained_weights(checkpoint))
    for key, param in policy.trained_parameters().items():
        torch.testing.assert_close(param.detach(), state[key])
    args = ("--num-conditions", "1", "--seeds", "0", "--checkpoint")
    (trained,) = evaluate_model_rows(tiny_config, tmp_path / "trained", *args, str(checkpoint))
    (from_run,) = evaluate_model_rows(tiny_config, tmp_path / "from_run", *args, str(tmp_path / "run"))
    base = base_rows[1][0]
    assert (trained["seed"], trained["condition"]) == (base["seed"], base["condition"]) == (0, 0)
    # the random tiny VAE's decoder makes nearly one video of any latents (seeds differ by 0.005 dB), so the
    # trained weights show in the PSNR's third decimal: far above float noise, and the same through the run's folder
    assert abs(trained["psnr"] - base["psnr"]) > 1e-4 and from_run["psnr"] == trained["psnr"]


def test_evaluate_before_and_after_a_lora(base_rows, tiny_config, tmp_path):
    """``--before-after``: the model with its adapters disabled samples the base model's videos exactly, the
    trained adapters other ones, from the same noise; both are written, compared, and drawn side by side."""
    policy_config, _, config = parse_recipe_config(tiny_config)
    policy = build_policy(policy_config, config.seed)
    generator = torch.Generator().manual_seed(0)
    state = {
        k: p.detach() + ("lora" in k) * torch.randn(p.shape, generator=generator)
        for k, p in policy.trained_parameters().items()
    }
    checkpoint = tmp_path / "checkpoint-1"
    policy.save_trained_weights(checkpoint, state)
    args = ["evaluate", "--config", str(tiny_config), "--out", str(tmp_path / "out"), "--rewards", "pose_consistency"]
    args += ["--num-conditions", "1", "--seeds", "0", "--checkpoint", str(checkpoint), "--before-after"]
    assert main(args) == 0
    before, after = (
        json.loads((tmp_path / "out" / v / "evaluation.json").read_text())["videos"] for v in ("before", "after")
    )
    base = base_rows[1][0]
    # the same video up to the batch's float sums (the base rows sampled two conditions at once)
    assert abs(before[0]["psnr"] - base["psnr"]) < 1e-5 and abs(after[0]["psnr"] - base["psnr"]) > 1e-4
    assert "| `psnr` |" in (tmp_path / "out" / "comparison.md").read_text()
    video, _ = read_video(tmp_path / "out" / "videos" / "seed-0-0.mp4")
    assert video.shape == (5, 3, 192, 3 * 288 + 192)  # before | after | true render, then the top view


def test_evaluate_model_mode_checks_its_inputs(tiny_config, tmp_path, capsys):
    """Each bad input is one error line, exit code 2, before anything is written."""
    config, out, empty = str(tiny_config), tmp_path / "out", tmp_path / "empty"
    empty.mkdir()
    policy_config, _, run_config = parse_recipe_config(tiny_config)
    policy_config.lora_r = 4  # another rank: the same keys, other shapes
    other = build_policy(policy_config, run_config.seed)
    other.save_trained_weights(tmp_path / "rank4", {k: p.detach() for k, p in other.trained_parameters().items()})
    cases = {
        "exactly one of the two": [],
        "exactly one of the two ": [str(empty), "--config", config],
        "no config file at": ["--config", str(tmp_path / "missing.yaml")],
        "no such folder": ["--config", config, "--checkpoint", str(tmp_path / "missing")],
        "no trained weights in": ["--config", config, "--checkpoint", str(empty)],
        "other shapes": ["--config", config, "--checkpoint", str(tmp_path / "rank4")],
        "add it to --rewards": ["--config", config, "--rewards", "epipolar"],
        "--num-conditions must be >= 1": ["--config", config, "--num-conditions", "0"],
        "--seeds must differ": ["--config", config, "--seeds", "0", "0"],
        "--sampling-steps and --batch-size must be >= 1": ["--config", config, "--sampling-steps", "0"],
        "--direction does not apply to --config": ["--config", config, "--direction", "left"],
        "--seeds does not apply to a folder": [str(empty), "--seeds", "1"],
        "--before-after compares trained weights with the model they started from: it needs --checkpoint": [
            "--config",
            config,
            "--before-after",
        ],
    }
    for message, args in cases.items():
        assert main(["evaluate", "--out", str(out), *args]) == 2, message
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message.strip() in err and err.startswith("lyra-rl: error:"), err
        assert not out.exists()
