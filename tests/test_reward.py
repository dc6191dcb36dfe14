import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from lyra_rl.camera import Cameras, default_intrinsics, trajectory_preset
from lyra_rl.reward import (
    RewardOutput,
    RewardSet,
    VideoReward,
    available_rewards,
    load_reward,
    validate_inputs,
)


class Brightness(VideoReward):
    """Mean brightness; NaN for videos whose first pixel is exactly 0 (to test abstention)."""

    name = "brightness"
    floor = 0.0

    def score_video(self, video, cam_from_world, intrinsics, *, image, cache):
        cache["seen"] = cache.get("seen", 0) + 1
        return (math.nan if float(video[0, 0, 0, 0]) == 0 else float(video.mean())), {"calls": float(cache["seen"])}


class Darkness(Brightness):
    name = "darkness"

    def score_video(self, video, cam_from_world, intrinsics, *, image, cache):
        value, diag = super().score_video(video, cam_from_world, intrinsics, image=image, cache=cache)
        return 1 - value, diag


def batch(num_videos=3, frames=4, height=8, width=12):
    videos = torch.rand(num_videos, frames, 3, height, width, generator=torch.Generator().manual_seed(0))
    cameras = Cameras.from_trajectory(
        trajectory_preset("forward", frames), default_intrinsics(height, width), num_videos
    )
    return videos, cameras, ["a prompt"] * num_videos


class TestValidation:
    @pytest.mark.parametrize(
        "mutate, message",
        [
            (lambda v, c, p: (v[0], c, p), "shape"),
            (lambda v, c, p: (v[:, :1], c, p), "at least 2 frames"),
            (lambda v, c, p: (v.index_fill(0, torch.tensor([0]), math.nan), c, p), "NaN"),
            (lambda v, c, p: (v * 3, c, p), r"\[0, 1\]"),
            (lambda v, c, p: (v[:, :3], c, p), "trajectory length must equal T"),
            (lambda v, c, p: (v, c, p[:1]), "prompts"),
        ],
    )
    def test_bad_input_gets_one_clear_error(self, mutate, message):
        with pytest.raises(ValueError, match=message):
            validate_inputs(*mutate(*batch()))


class TestRegistry:
    def test_builtins_register_through_entry_points(self):
        assert {
            "pose_consistency",
            "epipolar",
            "reprojection",
            "feature_matching",
            "perceptual",
            "point_cloud",
        } <= set(available_rewards())
        assert load_reward("epipolar", tau_px=2.0).tau_px == 2.0

    def test_dotted_path(self):
        assert load_reward("test_reward:Brightness").name == "brightness"

    def test_unknown_name_lists_known_ones(self):
        with pytest.raises(ValueError, match="pose_consistency"):
            load_reward("no_such_reward")

    def test_third_party_plugin_installed_by_name(self, tmp_path):
        """A tiny package with a ``lyra_rl.rewards`` entry point is found by name, like the built-ins."""
        site = tmp_path / "site"
        (site / "tiny_plugin").mkdir(parents=True)
        (site / "tiny_plugin" / "__init__.py").write_text(
            textwrap.dedent("""
            from lyra_rl.reward import VideoReward

            class Redness(VideoReward):
                name = "redness"
                floor = 0.0

                def score_video(self, video, cam_from_world, intrinsics, *, image, cache):
                    return float(video[:, 0].mean()), {}
        """)
        )
        dist = site / "tiny_plugin-0.1.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-plugin\nVersion: 0.1\n")
        (dist / "entry_points.txt").write_text("[lyra_rl.rewards]\nredness = tiny_plugin:Redness\n")
        script = textwrap.dedent("""
            import torch
            from lyra_rl.camera import Cameras, default_intrinsics, trajectory_preset
            from lyra_rl.reward import RewardSet, available_rewards
            assert "redness" in available_rewards()
            videos = torch.zeros(2, 3, 3, 8, 8); videos[1, :, 0] = 1
            cams = Cameras.from_trajectory(trajectory_preset("left", 3), default_intrinsics(8, 8), 2)
            print(RewardSet.from_names(["redness"])(videos, cams, ["", ""]).total.tolist())
        """)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "[0.0, 1.0]"


class TestRewardSet:
    def test_weighted_total_skips_not_applicable(self):
        videos, cameras, prompts = batch()
        videos[1, 0, 0, 0, 0] = 0  # brightness abstains on video 1
        out = RewardSet([Brightness(), Darkness()], weights=[2.0, 0.5])(videos, cameras, prompts)
        means = videos.mean(dim=(1, 2, 3, 4))
        torch.testing.assert_close(out.total[0], 2 * means[0] + 0.5 * (1 - means[0]))
        assert math.isnan(out.rewards["brightness"][1]) and out.total[1] == 0  # nansum, like trl
        assert set(out.diagnostics) == {"brightness/calls", "darkness/calls"}

    def test_rewards_of_a_video_share_one_cache(self):
        out = RewardSet([Brightness(), Darkness()])(*batch())
        assert out.diagnostics["darkness/calls"].tolist() == [2.0, 2.0, 2.0]

    def test_workers_give_the_same_numbers(self):
        videos, cameras, prompts = batch(num_videos=4)
        serial = RewardSet([Brightness(), Darkness()])(videos, cameras, prompts)
        with RewardSet([Brightness(), Darkness()], num_workers=2) as parallel_set:
            parallel = parallel_set(videos, cameras, prompts)
        torch.testing.assert_close(parallel.total, serial.total)

    def test_config_errors(self):
        with pytest.raises(ValueError, match="unique"):
            RewardSet([Brightness(), Brightness()])
        with pytest.raises(ValueError, match="reward_weights"):
            RewardSet([Brightness()], weights=[1.0, 2.0])
        with pytest.raises(ValueError, match="not in the set"):
            RewardSet.from_names(["epipolar"], reward_kwargs={"pose_consistency": {}})

    def test_output_type(self):
        out = Brightness()(*batch())
        assert isinstance(out, RewardOutput) and out.rewards.shape == (3,) and not out.failed.any()
