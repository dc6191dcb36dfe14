"""Bad input gets one clear error before any work starts: one line ``PROG: error: ...`` naming the input and what is
wrong with it, exit status 2, no traceback, nothing written."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from lyra_rl.camera import PRESETS, get_trajectory
from lyra_rl.cli import main as cli_main
from lyra_rl.data.conditions import read_conditions
from lyra_rl.errors import InputError
from lyra_rl.training import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer
from lyra_rl.training.checkpoint import check_output_dir, remove_previous_outputs
from lyra_rl.video import write_video
from policies.training import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "configs" / "grpo_tiny.yaml"
NAMES = ", ".join(PRESETS)


def recipe_error(capsys, monkeypatch, args, trainer_class=GRPOTrainer, config_class=GRPOConfig, prog="grpo.py"):
    """What a recipe's ``main`` printed on stderr for ``args``, checked to be one line and exit status 2."""
    monkeypatch.setattr(sys, "argv", [prog])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(trainer_class, config_class, args)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    return lines[0].removeprefix(f"{prog}: error: ")


def write_image(path, shape=(32, 48, 3)):
    iio.imwrite(path, np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8))
    return path


def manifest(folder: Path, *rows) -> Path:
    """A JSONL manifest of ``rows`` (dicts, or raw lines as strings) beside a valid image ``a.png``."""
    write_image(folder / "a.png")
    path = folder / "conditions.jsonl"
    path.write_text("\n".join(row if isinstance(row, str) else json.dumps(row) for row in rows) + "\n")
    return path


GOOD = {"image": "a.png", "prompt": "a room", "direction": "left"}
NOT_JSON = '{"image": "a.png", "prompt": "a room" "direction": "left"}'


def json_error(line: str) -> str:
    try:
        json.loads(line)
    except json.JSONDecodeError as error:
        return f"{error.msg} (column {error.colno})"


@pytest.mark.parametrize(
    "rows, message",
    [
        (
            [GOOD, GOOD, NOT_JSON],
            lambda m: f"{m}:3: not JSON: {json_error(NOT_JSON)}",
        ),
        ([GOOD, {"image": "a.png"}], lambda m: f"{m}:2: missing ['direction', 'prompt']"),
        ([GOOD, ["a.png"]], lambda m: f"{m}:2: expected an object with image, prompt and direction, got list"),
        ([{**GOOD, "prompt": 3}], lambda m: f"{m}:1: prompt must be a string, got 3"),
        ([GOOD, {**GOOD, "image": "b.png"}], lambda m: f"{m}:2: image {m.parent / 'b.png'} does not exist"),
        (
            [{**GOOD, "direction": "sideways"}],
            lambda m: (
                f"{m}:1: direction '{m.parent / 'sideways'}' is neither a preset ({NAMES}) nor a trajectory file"
            ),
        ),
        (
            [
                "",
                {**GOOD, "image": "b.png"},
                {**GOOD, "direction": "sideways"},
            ],  # line 1 blank: numbers still count it
            lambda m: f"{m}:2: image {m.parent / 'b.png'} does not exist (and 1 more bad entries in {m})",
        ),
    ],
    ids=["json-line-3", "missing-keys", "not-an-object", "not-a-string", "missing-image", "unknown-direction", "two"],
)
def test_a_bad_manifest_line_is_named_with_its_file_and_line(tmp_path, rows, message):
    path = manifest(tmp_path, *rows)
    with pytest.raises(ValueError) as raised:
        read_conditions(path)
    assert str(raised.value) == message(path)


def test_images_and_trajectories_are_decoded_up_front(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    write_image(tmp_path / "gray.png", (32, 48))
    (tmp_path / "one_pose.json").write_text(json.dumps({"cam_from_world": [torch.eye(4).tolist()]}))
    (tmp_path / "garbled.json").write_text("{")
    cases = [
        ({**GOOD, "image": "broken.png"}, f"image {tmp_path / 'broken.png'} does not decode ("),
        ({**GOOD, "image": "gray.png"}, f"image {tmp_path / 'gray.png'} has shape (32, 48), not an RGB or RGBA image"),
        (
            {**GOOD, "direction": "one_pose.json"},
            f"trajectory {tmp_path / 'one_pose.json'} needs at least 2 poses of shape (4, 4), got shape (1, 4, 4)",
        ),
        (
            {**GOOD, "direction": "garbled.json"},
            f"trajectory {tmp_path / 'garbled.json'} does not load (JSONDecode",
        ),
    ]
    for row, start in cases:
        path = manifest(tmp_path, GOOD, row)
        with pytest.raises(ValueError) as raised:
            read_conditions(path)
        assert str(raised.value).startswith(f"{path}:2: {start}"), str(raised.value)


def test_a_folder_of_images_names_the_file_that_is_wrong(tmp_path):
    write_image(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a room")
    (tmp_path / "a.direction").write_text("sideways\n")
    with pytest.raises(ValueError) as raised:
        read_conditions(tmp_path)
    assert str(raised.value) == (
        f"{tmp_path / 'a.direction'}:1: direction '{tmp_path / 'sideways'}' is neither a preset ({NAMES}) nor a "
        "trajectory file"
    )
    (tmp_path / "a.direction").write_text("left")
    write_image(tmp_path / "b.png")
    with pytest.raises(ValueError) as raised:
        read_conditions(tmp_path)
    assert str(raised.value) == f"{tmp_path / 'b.png'}: no prompt file b.txt beside it"
    with pytest.raises(FileNotFoundError) as raised:
        read_conditions(tmp_path / "none.jsonl")
    assert str(raised.value) == f"{tmp_path / 'none.jsonl'}: no such conditions manifest"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--save_steps", "0"], "save_steps must be >= 1, got 0"),
        (
            ["--num_generations", "1"],
            "num_generations must be >= 2: group-relative advantages need at least two rollouts",
        ),
        (["--reward_errors", "ignore"], "reward_errors must be one of ('contain', 'raise'), got 'ignore'"),
        (
            ["--reward_timeouts", "30"],
            "reward_timeouts must be one per reward (2: pose_consistency, epipolar), each >= 0 seconds (0: no "
            "limit), got [30.0]",
        ),
        (
            ["--resume", "true", "--overwrite_output_dir", "true"],
            "resume and overwrite_output_dir exclude each other: continue the run or replace it",
        ),
        (["--num_frames", "16"], "num_frames must be 4k+1 with k >= 1 (the VAE compresses time 4x), got 16"),
    ],
    ids=["save-steps", "num-generations", "reward-errors", "reward-timeouts", "resume-and-overwrite", "num-frames"],
)
def test_recipe_config_errors_are_one_line(tmp_path, capsys, monkeypatch, args, message):
    run = tmp_path / "run"
    assert recipe_error(capsys, monkeypatch, ["--config", str(TINY), "--output_dir", str(run), *args]) == message
    assert not run.exists()


def test_recipe_config_file_and_conditions_errors_name_the_file(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    missing = tmp_path / "nope.yaml"
    assert recipe_error(capsys, monkeypatch, ["--config", str(missing)]) == (
        f"[Errno 2] No such file or directory: '{missing}'"
    )
    path = manifest(tmp_path, GOOD, GOOD, NOT_JSON)
    args = ["--config", str(TINY), "--output_dir", str(run), "--conditions", str(path)]
    assert recipe_error(capsys, monkeypatch, args) == f"{path}:3: not JSON: {json_error(NOT_JSON)}"
    sft = ROOT / "recipes" / "configs" / "sft_tiny.yaml"
    args = ["--config", str(sft), "--output_dir", str(run), "--conditions", str(tmp_path / "none.jsonl")]
    assert recipe_error(capsys, monkeypatch, args, SFTTrainer, SFTConfig, "sft.py") == (
        f"conditions '{tmp_path / 'none.jsonl'}' have no videos to train on: use 'procedural', a MultiCamVideo "
        "folder or its latent cache (recipes/preprocess.py)"
    )
    assert not run.exists()


def test_a_used_output_dir_needs_resume_or_overwrite(tmp_path, capsys, monkeypatch):
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "logs").mkdir()
    before = sorted(tmp_path.rglob("*"))
    assert recipe_error(capsys, monkeypatch, ["--config", str(TINY), "--output_dir", str(tmp_path)]) == (
        f"output_dir {tmp_path} holds a previous run's outputs (checkpoint-3/, logs/): continue it with --resume "
        "true, or replace them with --overwrite_output_dir true"
    )
    assert sorted(tmp_path.rglob("*")) == before
    check_output_dir(tmp_path, resume=True, overwrite=False)
    check_output_dir(tmp_path, resume=False, overwrite=True)
    check_output_dir(tmp_path / "fresh", resume=False, overwrite=False)


def test_overwrite_output_dir_replaces_the_previous_run_and_nothing_else(tmp_path):
    from grpo_helpers import make_trainer

    for name in ("checkpoint-5", "logs", "samples", ".tmp-checkpoint-6"):
        (tmp_path / name).mkdir()
    (tmp_path / "reward_curve.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("mine")
    small = dict(conditions_per_step=1, num_generations=2, num_sampling_steps=2, eval_conditions=0, max_steps=1)
    trainer = make_trainer(tmp_path, **small)
    with pytest.raises(InputError, match="holds a previous run's outputs"):  # the Python API refuses it too
        trainer.train()
    assert not list((tmp_path / "logs").iterdir())  # nothing written
    trainer.config.overwrite_output_dir = True
    trainer.train()
    assert {p.name for p in tmp_path.iterdir()} == {"checkpoint-1", "logs", "notes.txt", "reward_curve.png"}
    remove_previous_outputs(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_resume_with_no_checkpoint_that_loads_is_one_line(tmp_path, capsys, monkeypatch):
    """An error found once training has started (InputError): one line too, with the file named."""
    shutil.copytree(ROOT / "tests" / "fixtures" / "checkpoint_v0.1" / "checkpoint-2", tmp_path / "checkpoint-2")
    (tmp_path / "checkpoint-2" / "trainer_state.pt").write_bytes(b"")
    args = ["--config", str(TINY), "--output_dir", str(tmp_path), "--resume", "true"]
    assert recipe_error(capsys, monkeypatch, args) == (
        f"--resume: no checkpoint of {tmp_path} loads ({tmp_path / 'checkpoint-2' / 'trainer_state.pt'}: does not "
        "load (an empty file)); remove the broken ones or start afresh with --overwrite_output_dir true"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]


def test_a_recipe_run_prints_one_line_and_exits_2(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    command = [sys.executable, str(ROOT / "recipes" / "grpo.py"), "--config", str(TINY), "--output_dir", str(run)]
    out = subprocess.run([*command, "--save_steps", "0"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.splitlines()[-1] == "grpo.py: error: save_steps must be >= 1, got 0"
    assert out.stdout == "" and not run.exists()


def test_cli_errors_are_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli_main(["evaluate", str(tmp_path / "videos"), "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"lyra-rl: error: {tmp_path / 'videos'}: no such folder\n"
    path = manifest(tmp_path, GOOD, {**GOOD, "direction": "sideways"})
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"policy: tiny\nconditions: {path}\neval_conditions: 1\n")
    assert cli_main(["evaluate", "--config", str(recipe), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"lyra-rl: error: {path}:2: direction '{tmp_path / 'sideways'}' is neither a preset ({NAMES}) nor a "
        "trajectory file\n"
    )
    assert not out.exists()


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """A good 9-frame mp4 and three broken ones: cut in half, overwritten mid-file, and not a video at all."""
    folder = tmp_path_factory.mktemp("videos")
    good = write_video(folder / "good.mp4", torch.rand(9, 3, 32, 48, generator=torch.Generator().manual_seed(0)))
    data = good.read_bytes()
    middle = len(data) // 2
    (folder / "truncated.mp4").write_bytes(data[:middle])
    (folder / "damaged.mp4").write_bytes(data[:middle] + bytes(2000) + data[middle + 2000 :])
    (folder / "junk.mp4").write_bytes(b"not a video" * 10)
    return folder


def trajectory_file(path: Path, cam_from_world: torch.Tensor) -> str:
    path.write_text(json.dumps({"cam_from_world": cam_from_world.tolist()}))
    return str(path)


def cli_error(capsys, args) -> str:
    """What ``lyra-rl args`` printed, checked to be one line and exit status 2."""
    capsys.readouterr()
    assert cli_main([str(arg) for arg in args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert captured.out == "" and len(lines) == 1 and lines[0].startswith("lyra-rl: error: "), captured.err
    return lines[0].removeprefix("lyra-rl: error: ")


def test_score_rejects_broken_videos_and_cameras_in_one_line(videos, tmp_path, capsys):
    good = videos / "good.mp4"
    for name, start in [
        ("truncated", "does not decode (moov atom not found)"),
        ("junk", "does not decode ("),
        ("damaged", "is damaged ("),
    ]:
        assert cli_error(capsys, ["score", videos / f"{name}.mp4", "--direction", "left"]).startswith(
            f"video {videos / name}.mp4 {start}"
        )
    for fov in ("-70", "0", "180", "nan"):
        assert cli_error(capsys, ["score", good, "--direction", "left", "--fov", fov]) == (
            f"--fov: the field of view must be in (0, 180) degrees, got {float(fov)}"
        )
    assert cli_error(capsys, ["score", good, "--direction", "left", "--intrinsics", 0, 40, 24, 16]) == (
        "--intrinsics: intrinsics need finite values and focal lengths > 0, got fx fy cx cy = (0.0, 40.0, 24.0, 16.0)"
    )
    assert cli_error(capsys, ["score", good, "--direction", "left", "--max-frames", 1]) == (
        "--max-frames must be >= 2 (a camera path needs 2 frames), got 1"
    )
    eye = torch.eye(4)
    one_pose = trajectory_file(tmp_path / "one_pose.json", eye[None])
    assert cli_error(capsys, ["score", good, "--direction", one_pose]) == (
        f"{good}: trajectory {one_pose} needs at least 2 poses of shape (4, 4), got shape (1, 4, 4)"
    )
    sheared = eye.repeat(9, 1, 1)
    sheared[4, 0, 1] = 0.5
    not_rigid = trajectory_file(tmp_path / "sheared.json", sheared)
    assert cli_error(capsys, ["score", good, "--direction", not_rigid]).startswith(
        f"{good}: trajectory {not_rigid} pose 4 is not rigid (its rotation or last row is off by "
    )
    five = get_trajectory("left", 5)
    short = trajectory_file(tmp_path / "five.json", five)
    assert cli_error(capsys, ["score", good, "--direction", short]) == (
        f"{good}: trajectory {short} has 5 poses for 9 frames and resampling was not asked for "
        "(--resample, resample=True)"
    )
    resampled = ["score", str(good), "--direction", short, "--resample", "--rewards", "pose_consistency", "--json"]
    assert cli_main(resampled) == 0
    assert json.loads(capsys.readouterr().out)["frames"] == 9


def test_evaluate_checks_every_video_and_path_before_any_work(videos, tmp_path, capsys):
    folder, out = tmp_path / "videos", tmp_path / "out"
    folder.mkdir()
    for name in ("good", "a_damaged", "z_good"):
        shutil.copy(videos / ("damaged.mp4" if name == "a_damaged" else "good.mp4"), folder / f"{name}.mp4")
    assert cli_error(capsys, ["evaluate", folder, "--direction", "left", "--out", out]).startswith(
        f"video {folder / 'a_damaged.mp4'} is damaged ("
    )
    (folder / "a_damaged.mp4").unlink()
    (folder / "z_good.direction").write_text("five.json\n")
    trajectory_file(folder / "five.json", get_trajectory("left", 5))
    assert cli_error(capsys, ["evaluate", folder, "--direction", "left", "--out", out]) == (
        f"{folder / 'z_good.mp4'}: trajectory {folder / 'five.json'} has 5 poses for 9 frames and resampling was "
        "not asked for (--resample, resample=True)"
    )
    references = tmp_path / "references"
    references.mkdir()
    for name in ("good", "z_good"):
        shutil.copy(videos / ("truncated.mp4" if name == "z_good" else "good.mp4"), references / f"{name}.mp4")
    args = ["evaluate", folder, "--direction", "left", "--resample", "--references", references, "--out", out]
    assert cli_error(capsys, args) == f"video {references / 'z_good.mp4'} does not decode (moov atom not found)"
    assert cli_error(capsys, [*args[:-2], "--fov", "200", "--out", out]) == (
        "--fov: the field of view must be in (0, 180) degrees, got 200.0"
    )
    assert not out.exists()


def test_weights_files_that_do_not_load_or_fit_are_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    from safetensors.torch import save_file

    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "junk.safetensors").write_bytes(b"not weights")
    torch.save([1, 2], tmp_path / "list.pth")
    save_file({"foo": torch.zeros(1)}, tmp_path / "other.safetensors")
    run = tmp_path / "run"
    for file, message in [
        ("missing.safetensors", f"no checkpoint at {tmp_path / 'missing.safetensors'}"),
        ("empty.ckpt", f"{tmp_path / 'empty.ckpt'}: does not load (an empty file)"),
        ("junk.safetensors", f"{tmp_path / 'junk.safetensors'}: does not load (SafetensorError: "),
        ("list.pth", f"{tmp_path / 'list.pth'}: holds a list, not a mapping of names to tensors"),
        ("other.safetensors", f"DiT weights {tmp_path / 'other.safetensors'} does not match the model: missing "),
    ]:
        args = ["--config", str(TINY), "--output_dir", str(run), "--dit_path", str(tmp_path / file)]
        assert recipe_error(capsys, monkeypatch, args).startswith(message), file
        assert not run.exists()
    assert recipe_error(capsys, monkeypatch, args).endswith("; unexpected keys: foo")
    checkpoint = tmp_path / "checkpoint-1"
    checkpoint.mkdir()
    (checkpoint / "pytorch_lora_weights.safetensors").write_bytes(b"\0" * 7)
    out = tmp_path / "evaluation"
    error = cli_error(capsys, ["evaluate", "--config", TINY, "--checkpoint", checkpoint, "--out", out])
    assert error.startswith(f"{checkpoint / 'pytorch_lora_weights.safetensors'}: does not load (SafetensorError: ")
    assert not out.exists()
