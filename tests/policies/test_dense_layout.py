"""The embedded world model: the space-to-depth codec, the dense camera layout and full fine-tuning."""

import math

import pytest
import torch

from lyra_rl.camera import Cameras, default_intrinsics, make_pose, trajectory_preset, yaw_matrix
from lyra_rl.data.renderer import render
from lyra_rl.data.scenes import make_scene
from policies import PolicyConfig, build_policy
from policies.codecs import SpaceToDepthCodec
from policies.dense_camera import (
    PLANE_DEPTH,
    downscale_intrinsics,
    plane_homography,
    plucker_rays,
    warp_first_frame,
)
from policies.loading import load_pretrained
from policies.wan_camera import DIT_WEIGHTS, LORA_WEIGHTS, WanCameraPolicy

H, W = 32, 48  # the embedded policy's test size: latents 8 x 12, 4 x 6 tokens per frame


def dehom(points):
    return points[..., :2] / points[..., 2:]


class TestSpaceToDepthCodec:
    def test_round_trip_is_exact(self):
        codec = SpaceToDepthCodec(4)
        video = torch.rand(2, 3, 3, 16, 24)
        assert codec.encode(video).shape == (2, 48, 3, 4, 6)
        assert torch.equal(codec.decode(codec.encode(video)), video)
        eight_bit = (torch.arange(256.0) / 255).repeat(18).view(1, 3, 3, 16, 32)  # not on the 2^-24 grid
        torch.testing.assert_close(codec.decode(codec.encode(eight_bit)), eight_bit, rtol=0, atol=2**-25)

    def test_channels_are_pixel_blocks(self):
        video = torch.rand(1, 2, 3, 8, 12)
        latents = SpaceToDepthCodec(4).encode(video)
        for c, i, j, y, x in [(0, 0, 0, 0, 0), (1, 2, 3, 1, 2), (2, 3, 1, 0, 1)]:
            assert latents[0, c * 16 + i * 4 + j, 1, y, x] == 2 * video[0, 1, c, 4 * y + i, 4 * x + j] - 1

    def test_decode_clamps_to_the_pixel_range(self):
        video = SpaceToDepthCodec(2).decode(torch.full((1, 12, 1, 2, 2), 3.0))
        assert video.shape == (1, 1, 3, 4, 4) and torch.equal(video, torch.ones_like(video))

    def test_size_rule(self):
        codec = SpaceToDepthCodec(4)
        codec.check_video_size(2, 64, 96)
        with pytest.raises(ValueError, match="num_frames must be >= 2"):
            codec.check_video_size(1, 64, 96)
        with pytest.raises(ValueError, match="multiples of 8 .4x space-to-depth, 2x2 patches., got 60x96"):
            codec.check_video_size(9, 60, 96)


class TestCheckVideoSize:
    def test_vae_configs_keep_wans_rule(self):
        WanCameraPolicy.check_video_size(9, 32, 48)
        with pytest.raises(ValueError, match="num_frames must be 4k\\+1"):
            WanCameraPolicy.check_video_size(8, 32, 48, config="wan2.1-1.3b")
        with pytest.raises(ValueError, match="height and width must be multiples of 16"):
            WanCameraPolicy.check_video_size(9, 32, 40, config="tiny")

    def test_the_codec_config_has_its_own_rule(self):
        for frames in (2, 9, 17):
            WanCameraPolicy.check_video_size(frames, 64, 96, config="embedded")
        WanCameraPolicy.check_video_size(9, 32, 40, config="embedded")  # not a Wan size
        with pytest.raises(ValueError, match="num_frames must be >= 2"):
            WanCameraPolicy.check_video_size(1, 64, 96, config="embedded")
        with pytest.raises(ValueError, match="multiples of 8"):
            WanCameraPolicy.check_video_size(9, 64, 100, config="embedded")
        with pytest.raises(ValueError, match="unknown policy config 'huge'"):
            WanCameraPolicy.check_video_size(9, 64, 96, config="huge")


class TestDownscaleIntrinsics:
    def test_known_values(self):
        low = downscale_intrinsics(default_intrinsics(64, 96), 4)
        expected = default_intrinsics(16, 24)  # same field of view, principal point at the center
        torch.testing.assert_close(low, expected)
        assert low[0, 2] == 11.5 and low[1, 2] == 7.5

    def test_pixel_blocks_map_to_their_low_resolution_pixel(self):
        K = torch.tensor([[50.0, 0, 20.3], [0, 40.0, 10.7], [0, 0, 1]])
        point = torch.tensor([0.3, -0.2, 2.0])
        u = dehom(K @ point)
        torch.testing.assert_close(dehom(downscale_intrinsics(K, 4) @ point), (u + 0.5) / 4 - 0.5)


class TestPluckerRays:
    def test_identity_camera_known_values(self):
        K = torch.tensor([[2.0, 0, 1], [0, 2.0, 1], [0, 0, 1]])
        rays = plucker_rays(torch.eye(4), K, 3, 3)
        assert rays.shape == (6, 3, 3)
        torch.testing.assert_close(rays[:3, 1, 1], torch.tensor([0.0, 0, 1]))
        torch.testing.assert_close(rays[:3, 0, 0], torch.tensor([-0.5, -0.5, 1]) / math.sqrt(1.5))
        torch.testing.assert_close(rays[:3, 2, 0], torch.tensor([-0.5, 0.5, 1]) / math.sqrt(1.5))  # v = 2: y down
        assert torch.equal(rays[3:], torch.zeros(3, 3, 3))  # rays through the origin

    def test_moment_of_a_translated_camera(self):
        K = torch.tensor([[2.0, 0, 1], [0, 2.0, 1], [0, 0, 1]])
        cam_from_world = make_pose(torch.eye(3), torch.tensor([-1.0, 0, 0]))  # center at x = 1
        rays = plucker_rays(cam_from_world, K, 3, 3)
        torch.testing.assert_close(rays[:, 1, 1], torch.tensor([0.0, 0, 1, 0, -1, 0]))  # (1, 0, 0) x (0, 0, 1)

    def test_unit_directions_and_moments_of_a_trajectory(self):
        trajectory = trajectory_preset("forward_left", 5).double()
        K = default_intrinsics(8, 12).double()
        rays = plucker_rays(trajectory[None], K.expand(1, 5, 3, 3), 8, 12)
        assert rays.shape == (1, 5, 6, 8, 12)
        directions, moments = rays[:, :, :3], rays[:, :, 3:]
        torch.testing.assert_close(directions.norm(dim=2), torch.ones(1, 5, 8, 12, dtype=torch.float64))
        centers = torch.linalg.inv(trajectory)[:, :3, 3][None, :, :, None, None].expand_as(directions)
        torch.testing.assert_close(moments, torch.linalg.cross(centers, directions, dim=2))
        center_ray = torch.linalg.inv(trajectory)[:, :3, 2]  # the camera's forward axis in the world
        torch.testing.assert_close(rays[0, :, :3, 4, 6], center_ray, atol=0.1, rtol=0)  # next to the principal point


@pytest.fixture(scope="module")
def yaw_render():
    """A procedural scene rendered along the yaw-only ``left`` preset (pure rotation, no parallax)."""
    trajectory = trajectory_preset("left", 5, angle_degrees=30)
    K = default_intrinsics(64, 96)
    return render(make_scene(3, texture_size=64), trajectory, K, 64, 96), trajectory, K


class TestPlaneWarp:
    def test_rotation_homography_is_the_renderers_geometry(self, yaw_render):
        """For a pure rotation the homography of any plane is exact: it sends every pixel of frame k to where the
        surface point it sees projects in frame 0."""
        rendering, trajectory, K = yaw_render
        first_from_frame = torch.linalg.inv(plane_homography(trajectory.double(), K.double().expand(5, 3, 3)))
        v, u = torch.meshgrid(torch.arange(64.0), torch.arange(96.0), indexing="ij")
        pixels = torch.stack([u, v, torch.ones_like(u)], dim=-1).double()
        for k in (2, 4):
            seen = rendering.world_points[k].double()  # world frame = camera 0
            projected = dehom(seen @ K.double().T)
            torch.testing.assert_close(dehom(pixels @ first_from_frame[k].T), projected, atol=1e-3, rtol=0)

    def test_warp_reproduces_a_rotation_render(self, yaw_render):
        rendering, trajectory, K = yaw_render
        frames = rendering.frames
        warped = warp_first_frame(frames[:1], trajectory[None], K.expand(1, 5, 3, 3))[0]
        torch.testing.assert_close(warped[0], frames[0], atol=1e-5, rtol=0)
        first_from_frame = torch.linalg.inv(plane_homography(trajectory.double(), K.double().expand(5, 3, 3)))
        v, u = torch.meshgrid(torch.arange(64.0), torch.arange(96.0), indexing="ij")
        pixels = torch.stack([u, v, torch.ones_like(u)], dim=-1).double()
        for k in (2, 4):
            source = dehom(pixels @ first_from_frame[k].T)
            both = (source[..., 0] >= 1) & (source[..., 0] <= 94) & (source[..., 1] >= 1) & (source[..., 1] <= 62)
            error = (warped[k] - frames[k]).abs().mean(0)[both].mean()
            copy_error = (frames[0] - frames[k]).abs().mean(0)[both].mean()
            assert both.float().mean() > 0.4 and error < 0.04 and error < copy_error / 4  # bilinear resampling
            assert warped[k][:, ~both].abs().mean() < warped[k][:, both].abs().mean() / 4  # unseen: mostly zero

    def test_translation_to_the_right_moves_the_image_left(self):
        K = default_intrinsics(16, 24)
        shift = 4  # pixels, for points on the plane
        center = torch.tensor([shift * PLANE_DEPTH / K[0, 0], 0, 0])  # to the right
        cam_from_world = torch.stack([torch.eye(4), make_pose(torch.eye(3), -center)])
        image = torch.rand(1, 3, 16, 24)
        warped = warp_first_frame(image, cam_from_world[None], K.expand(1, 2, 3, 3))[0, 1]
        torch.testing.assert_close(warped[:, :, :-shift], image[0, :, :, shift:], atol=1e-5, rtol=0)
        assert torch.equal(warped[:, :, -shift:], torch.zeros(3, 16, shift))  # nothing of frame 0 is seen there

    def test_forward_translation_zooms_in_about_the_principal_point(self):
        K = default_intrinsics(16, 24).double()
        distance = 1.0
        cam_from_world = torch.stack([torch.eye(4), make_pose(torch.eye(3), torch.tensor([0, 0, -distance]))]).double()
        homography = plane_homography(cam_from_world, K.expand(2, 3, 3))[1]
        offset = torch.tensor([3.0, -2.0], dtype=torch.float64)
        moved = dehom(homography @ torch.cat([K[:2, 2] + offset, torch.ones(1, dtype=torch.float64)]))
        torch.testing.assert_close(moved, K[:2, 2] + offset * PLANE_DEPTH / (PLANE_DEPTH - distance))

    def test_rotation_homography_is_the_infinite_homography(self):
        K = default_intrinsics(16, 24).double()
        rotation = yaw_matrix(0.3).T  # cam_from_world of a camera yawed left
        cam_from_world = torch.stack([torch.eye(4).double(), make_pose(rotation, torch.zeros(3))])
        expected = K @ rotation @ torch.linalg.inv(K)
        torch.testing.assert_close(plane_homography(cam_from_world, K.expand(2, 3, 3))[1], expected)


@pytest.fixture
def embedded():
    return WanCameraPolicy.from_config("embedded", seed=0)


def embedded_inputs(policy, direction="forward_left", frames=9, batch=2):
    torch.manual_seed(1)
    videos = torch.rand(batch, frames, 3, H, W)
    cameras = Cameras.from_trajectory(trajectory_preset(direction, frames), default_intrinsics(H, W), batch)
    cond = policy.condition(videos[:, 0], ["a room", "a garden"][:batch], cameras)
    return videos, cameras, cond


class TestEmbeddedPolicy:
    def test_config(self, embedded):
        count = sum(p.numel() for p in embedded.transformer.parameters())
        assert count <= 3_000_000 and 4 * count < 20e6  # float32 safetensors under 20 MB
        assert embedded.dit.layout == "dense" and isinstance(embedded.vae, SpaceToDepthCodec)
        assert (embedded.transformer.config.in_channels, embedded.transformer.config.out_channels) == (150, 48)
        assert list(embedded.dit.camera_parameters()) == []  # no per-block camera modules
        assert WanCameraPolicy.from_config("tiny").dit.layout == "recammaster"  # the other configs' default is kept

    def test_shapes(self, embedded):
        videos, cameras, cond = embedded_inputs(embedded)
        assert embedded.latent_shape(9, H, W) == (48, 8, 8, 12) and embedded.latent_shape(2, H, W) == (48, 1, 8, 12)
        assert cond.camera.shape == (2, 48 + 6, 9, 8, 12) and cond.image_latents.shape == (2, 48, 1, 8, 12)
        latents = embedded.generated_latents(videos)
        assert latents.shape == (2, 48, 8, 8, 12)
        assert embedded.velocity(latents, torch.tensor([0.8, 0.3]), cond).shape == latents.shape
        assert torch.equal(embedded.decode(latents, cond), videos)  # lossless codec: the video comes back
        with pytest.raises(ValueError, match="multiples of 8"):
            embedded.latent_shape(9, 36, 48)

    def test_dense_channels_in_order(self, embedded, monkeypatch):
        videos, cameras, cond = embedded_inputs(embedded)
        warped = embedded.encode(warp_first_frame(videos[:, 0], cameras.cam_from_world, cameras.intrinsics))
        intrinsics = downscale_intrinsics(cameras.intrinsics.double(), 4)
        rays = plucker_rays(cameras.cam_from_world.double(), intrinsics, 8, 12)
        assert torch.equal(cond.camera[:, :48], warped)
        torch.testing.assert_close(cond.camera[:, 48:], rays.transpose(1, 2).float())
        seen, forward = {}, embedded.transformer.forward

        def spy(hidden_states, *args, **kwargs):
            seen["input"] = hidden_states
            return forward(hidden_states, *args, **kwargs)

        monkeypatch.setattr(embedded.transformer, "forward", spy)
        latents = torch.randn(2, *embedded.latent_shape(9, H, W))
        embedded.velocity(latents, torch.tensor([0.8, 0.3]), cond)
        expected = [latents, cond.image_latents.expand(-1, -1, 8, -1, -1), warped[:, :, 1:], cond.camera[:, 48:, 1:]]
        assert torch.equal(seen["input"], torch.cat(expected, dim=1))

    def test_velocity_depends_on_the_camera(self, embedded):
        videos, _, cond = embedded_inputs(embedded)
        _, _, other = embedded_inputs(embedded, "right")
        latents, t = torch.randn(2, 48, 8, 8, 12), torch.tensor([0.8, 0.3])
        assert (embedded.velocity(latents, t, cond) - embedded.velocity(latents, t, other)).abs().max() > 1e-3

    def test_the_dit_predicts_the_correction_to_the_warp(self, embedded):
        """The embedded DiT predicts x0 minus the warped frame 0 (the dense maps' first channels); the velocity is
        (x_t - x0) / max(t, 0.05), so the Euler step to t = 0 lands on x0; the other configs predict velocities."""
        _, _, cond = embedded_inputs(embedded)
        latents, t = torch.randn(2, 48, 8, 8, 12), torch.tensor([0.25, 0.01])
        x0 = embedded._transformer_output(latents, t, cond) + cond.camera[:, :48, 1:]
        velocity = embedded.velocity(latents, t, cond)
        torch.testing.assert_close(latents[0] - 0.25 * velocity[0], x0[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(velocity[1], (latents[1] - x0[1]) / 0.05)
        with torch.no_grad():  # a DiT that outputs zeros samples the warp itself
            embedded.transformer.proj_out.weight.zero_()
            embedded.transformer.proj_out.bias.zero_()
        sample = latents[:1] - 0.25 * embedded.velocity(latents[:1], t[:1], cond[:1])
        torch.testing.assert_close(sample, cond.camera[:1, :48, 1:], rtol=1e-5, atol=1e-5)
        assert embedded.prediction == "warp_residual"
        predictions = [WanCameraPolicy.from_config(*args).prediction for args in (("tiny",), ("embedded", 0, "astra"))]
        assert predictions == ["velocity", "sample"]

    def test_sft_gradient_reaches_every_dit_weight(self, embedded):
        embedded.train_transformer()
        embedded.dit.enable_gradient_checkpointing()
        videos, _, cond = embedded_inputs(embedded)
        x0 = embedded.generated_latents(videos)
        noise, t = torch.randn_like(x0), torch.tensor([0.7, 0.2])
        x_t = (1 - t.view(-1, 1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1, 1) * noise
        (embedded.velocity(x_t, t, cond) - (noise - x0)).square().mean().backward()
        params = embedded.trained_parameters()
        assert params.keys() == {f"transformer.{k}" for k in embedded.transformer.state_dict()}
        assert [k for k, p in params.items() if p.grad is None or not p.grad.abs().sum() > 0] == []

    def test_full_weights_checkpoint_reloads_exactly(self, embedded, tmp_path):
        embedded.train_transformer()
        with torch.no_grad():
            for param in embedded.trained_parameters().values():
                param.add_(0.01 * torch.randn_like(param))
        embedded.save_trained_weights(tmp_path, {k: p.detach() for k, p in embedded.trained_parameters().items()})
        assert sorted(f.name for f in tmp_path.iterdir()) == [DIT_WEIGHTS]
        assert (tmp_path / DIT_WEIGHTS).stat().st_size < 20e6
        videos, _, cond = embedded_inputs(embedded)
        latents, t = torch.randn(2, 48, 8, 8, 12), torch.tensor([0.8, 0.3])
        expected = embedded.velocity(latents, t, cond)

        resumed = WanCameraPolicy.from_config("embedded", seed=1)
        resumed.train_transformer()
        params = resumed.trained_parameters()
        state = resumed.read_trained_weights(tmp_path)
        assert state.keys() == params.keys()
        with torch.no_grad():
            for key, value in state.items():
                params[key].copy_(value)
        loaded = WanCameraPolicy.from_config("embedded", seed=2)
        load_pretrained(loaded, dit_path=tmp_path / DIT_WEIGHTS)  # the shipped weights' way in
        for policy in (resumed, loaded):
            policy.add_prompt_embeddings(embedded.prompt_embeddings)  # the text encoder is not part of the DiT
            assert torch.equal(policy.velocity(latents, t, cond), expected)

    def test_full_fine_tuning_and_lora_exclude_each_other(self, embedded):
        with pytest.raises(ValueError, match="no reference model"):
            with embedded.adapters_disabled():
                pass
        embedded.train_transformer()
        with pytest.raises(ValueError, match="LoRA adapters would train a part of it twice"):
            embedded.add_lora(4, 4)
        tiny = WanCameraPolicy.from_config("tiny")
        tiny.add_lora(2, 2)
        with pytest.raises(ValueError, match="the policy has LoRA adapters"):
            tiny.train_transformer()

    def test_other_layouts_and_codecs_combine(self):
        tiny_dense = WanCameraPolicy.from_config("tiny", camera_layout="dense")
        assert tiny_dense.transformer.config.in_channels == 3 * 4 + 6
        embedded_recammaster = WanCameraPolicy.from_config("embedded", camera_layout="recammaster")
        for policy in (tiny_dense, embedded_recammaster):
            cameras = Cameras.from_trajectory(trajectory_preset("forward", 9), default_intrinsics(H, W), 1)
            cond = policy.condition(torch.rand(1, 3, H, W), ["x"], cameras)
            latents = torch.randn(1, *policy.latent_shape(9, H, W))
            assert policy.velocity(latents, torch.tensor([0.5]), cond).shape == latents.shape


class TestPolicyConfig:
    def test_full_fine_tuning_of_the_embedded_policy(self):
        config = PolicyConfig(policy="embedded", lora_r=0, train_transformer=True)
        assert config.camera_layout == "dense"
        policy = build_policy(config)
        assert all(p.requires_grad for p in policy.transformer.parameters()) and not policy._lora_layers

    def test_defaults_are_kept(self):
        assert PolicyConfig().camera_layout == PolicyConfig(policy="wan2.1-1.3b").camera_layout == "recammaster"

    def test_camera_modules_only(self, tmp_path):
        policy = build_policy(PolicyConfig(lora_r=0))
        trained = policy.trained_parameters()
        assert trained and all(".cam_encoder." in k or ".projector." in k for k in trained)
        policy.save_trained_weights(tmp_path, {k: p.detach() for k, p in trained.items()})
        assert not (tmp_path / LORA_WEIGHTS).exists()
        assert policy.read_trained_weights(tmp_path).keys() == trained.keys()

    @pytest.mark.parametrize(
        "kwargs, message",
        [
            (dict(policy="embedded", train_transformer=True), "set lora_r: 0"),
            (dict(policy="embedded", lora_r=0), "nothing to train"),
            (dict(lora_r=0, train_camera_modules=False), "nothing to train"),
            (dict(lora_r=-1), "lora_r must be >= 0"),
            (dict(policy="huge"), "unknown policy 'huge'"),
        ],
    )
    def test_bad_combinations(self, kwargs, message):
        with pytest.raises(ValueError, match=message):
            PolicyConfig(**kwargs)
