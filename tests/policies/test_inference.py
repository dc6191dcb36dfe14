"""``recipes/infer.py`` / ``lyra-rl infer``: the seed's flags, the video and its path (adapters: tests/test_export.py),
one-line errors before any weight is loaded."""

import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lyra_rl.video import read_video
from policies.inference import InferConfig, infer, named_model_argument, parse_lora

ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(policy="tiny", num_frames=5, height=32, width=48, num_inference_steps=2)


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "first.png"
    iio.imwrite(path, (np.random.default_rng(0).random((40, 60, 3)) * 255).astype(np.uint8))
    return path


def test_infer_writes_the_video_and_its_path_and_scores_it(tmp_path, image, capsys):
    config = InferConfig(
        **SMALL,
        condition_image=str(image),
        direction="left",
        output_path=str(tmp_path / "out" / "video.mp4"),
        score=True,
        rewards=["pose_consistency", "epipolar"],
    )
    infer(config)
    video, _ = read_video(tmp_path / "out" / "video.mp4")
    assert video.shape == (5, 3, 32, 48)
    assert (tmp_path / "out" / "video_camera.png").stat().st_size > 0
    out = capsys.readouterr().out
    assert "pose_consistency" in out and "epipolar" in out and "total" in out
    again = tmp_path / "again.mp4"
    infer(InferConfig(**SMALL, condition_image=str(image), direction="left", output_path=str(again)))
    torch.testing.assert_close(read_video(again)[0], video, atol=0, rtol=0)  # --seed fixes the noise


def test_config_names_a_model_and_lora_takes_a_scale():
    assert named_model_argument(["--config", "embedded", "--seed", "1"]) == ["--policy", "embedded", "--seed", "1"]
    assert named_model_argument(["--config", "run.yaml"]) == ["--config", "run.yaml"]
    assert parse_lora("out/checkpoint-10:0.5") == (Path("out/checkpoint-10"), 0.5)
    assert parse_lora("out/lora.safetensors") == (Path("out/lora.safetensors"), 1.0)
    assert InferConfig(policy="wan2.1-1.3b").height == 480 and InferConfig(policy="wan2.1-1.3b").width == 832
    assert InferConfig(policy="embedded").dit_path == "embedded"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--condition_image", "missing.png"], "--condition_image: image missing.png does not exist"),
        (["--direction", "sideways"], "--direction: direction 'sideways' is neither a preset"),
        (["--direction", "path.json"], "--direction path.json: no such trajectory file"),
        (["--direction", "left", "--trajectory", "t.json"], "not both"),
        (["--height", "30"], "--num_frames 5 --height 30 --width 48: "),
        (["--num_frames", "6"], "--num_frames 6 --height 32 --width 48: "),
        (["--lora", "nowhere"], "--lora nowhere: no such file or folder"),
        (["--rewards", "no_such_reward"], "no_such_reward"),
        (["--policy", "wan2.1-1.3b", "--height", "480"], "wan2.1-1.3b needs weights"),
        (["--policy", "tiny", "--dit_path", "junk.ckpt"], "junk.ckpt"),
        (["--lora", "dit.safetensors"], "--lora dit.safetensors: holds no LoRA weights (a whole DiT?"),
        (["--lora", "junk.ckpt"], "--lora junk.ckpt: expected a .safetensors LoRA file or a folder"),
        (["--device", "tpu"], "--device tpu: expected auto, cpu or cuda"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, image, args, message):
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    save_file({"blocks.0.attn1.to_q.weight": torch.zeros(2, 2)}, tmp_path / "dit.safetensors")
    base = ["--policy", "tiny", "--num_frames", "5", "--height", "32", "--width", "48", "--score", "true"]
    base += ["--condition_image", str(image), "--output_path", "out.mp4"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "infer.py"), *base, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()[-1:]
    assert line.startswith("infer.py: error: ") and message in line, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out.mp4").exists()
