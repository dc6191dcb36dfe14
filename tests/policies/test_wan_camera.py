import copy

import pytest
import torch
from diffusers import WanTransformer3DModel

from lyra_rl.camera import Cameras, default_intrinsics, trajectory_preset
from policies.wan_camera import TRANSFORMER_CONFIGS, CameraConditionedWan, WanCameraPolicy, camera_features


@pytest.fixture
def policy():
    return WanCameraPolicy.from_config("tiny", seed=0)


def make_cameras(direction="forward_left", batch=2, frames=9):
    return Cameras.from_trajectory(trajectory_preset(direction, frames), default_intrinsics(32, 48), batch)


def inputs(policy, direction="forward_left"):
    torch.manual_seed(1)
    cond = policy.condition(torch.rand(2, 3, 32, 48), ["a room", "a garden"], make_cameras(direction))
    return torch.randn(2, *policy.latent_shape(9, 32, 48)), torch.tensor([0.8, 0.3]), cond


def test_camera_modules_leave_the_base_model_unchanged():
    torch.manual_seed(0)
    base = WanTransformer3DModel(**TRANSFORMER_CONFIGS["tiny"])
    conditioned = CameraConditionedWan(copy.deepcopy(base))
    latents, text = torch.randn(2, 4, 3, 4, 6), torch.randn(2, 7, 32)
    timestep = torch.tensor([500.0, 100.0])[:, None].expand(2, 3 * 6).clone()
    camera = torch.randn(2, 3, 12)
    expected = base(latents, timestep, text, return_dict=False)[0]
    torch.testing.assert_close(conditioned(latents, timestep, text, camera), expected)
    assert {"blocks.0.cam_encoder.weight", "blocks.1.projector.bias"} <= set(conditioned.transformer.state_dict())


def test_velocity_follows_the_camera_once_trained(policy):
    latents, t, cond = inputs(policy)
    for block in policy.transformer.blocks:
        torch.nn.init.normal_(block.cam_encoder.weight, std=0.5)
    _, _, other = inputs(policy, "right")
    assert (policy.velocity(latents, t, cond) - policy.velocity(latents, t, other)).abs().max() > 1e-3


def test_lora_starts_as_identity_and_reference_disables_it(policy):
    latents, t, cond = inputs(policy)
    before = policy.velocity(latents, t, cond)
    policy.add_lora(rank=4, alpha=4)
    torch.testing.assert_close(policy.velocity(latents, t, cond), before)
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "cam_encoder" in n or "projector" in n for n in trainable)
    for name, param in policy.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    assert (policy.velocity(latents, t, cond) - before).abs().max() > 1e-4
    with policy.adapters_disabled():
        torch.testing.assert_close(policy.velocity(latents, t, cond), before)


def test_frozen_camera_modules(policy):
    policy.add_lora(rank=4, alpha=4, train_camera=False)
    assert not any(p.requires_grad for n, p in policy.named_parameters() if "cam_encoder" in n or "projector" in n)


def test_shapes_decode_and_errors(policy):
    latents, t, cond = inputs(policy)
    assert policy.velocity(latents, t, cond).shape == latents.shape == (2, 4, 2, 4, 6)
    video = policy.decode(latents, cond)
    assert video.shape == (2, 9, 3, 32, 48) and 0 <= video.min() and video.max() <= 1
    with pytest.raises(ValueError, match="4k\\+1"):
        policy.latent_shape(8, 32, 48)
    with pytest.raises(ValueError, match="4k\\+1"):
        policy.condition(torch.rand(1, 3, 32, 48), ["x"], make_cameras(batch=1, frames=8))


def test_prompt_embeddings_are_cached(policy):
    first = policy.encode_prompts(["a", "b", "a"])
    assert len(policy._text_cache) == 2 and torch.equal(first[0], first[2])
    policy.text_encoder = None  # cached prompts no longer need the encoder
    torch.testing.assert_close(policy.encode_prompts(["b"]), first[1:2])
    with pytest.raises(ValueError, match="no text encoder"):
        policy.encode_prompts(["c"])


def test_camera_features_sample_every_fourth_frame():
    features = camera_features(make_cameras("forward", batch=1, frames=9), num_latent_frames=3)
    assert features.shape == (1, 3, 12)
    torch.testing.assert_close(features[0, 0], torch.eye(3, 4).flatten())
    assert features[0, 2, 11] > features[0, 1, 11] > 0  # z of the camera center grows: frames 8 and 4


def test_wan21_shapes_on_the_meta_device():
    with torch.device("meta"):
        model = CameraConditionedWan(WanTransformer3DModel(**TRANSFORMER_CONFIGS["wan2.1-1.3b"]))
    base = sum(p.numel() for n, p in model.named_parameters() if "cam_encoder" not in n and "projector" not in n)
    assert len(model.transformer.blocks) == 30 and model.transformer.blocks[0].attn1.to_q.weight.shape == (1536, 1536)
    assert model.transformer.blocks[0].ffn.net[2].weight.shape == (1536, 8960)
    assert 1.40e9 < base < 1.45e9  # Wan2.1-T2V-1.3B: 1.42B parameters in diffusers' layout


def test_deep_copy_is_an_independent_model(policy):
    latents, t, cond = inputs(policy)
    clone = copy.deepcopy(policy)
    for block in policy.transformer.blocks:
        torch.nn.init.normal_(block.cam_encoder.weight, std=0.5)
    assert (policy.velocity(latents, t, cond) - clone.velocity(latents, t, cond)).abs().max() > 1e-3
    torch.testing.assert_close(clone.velocity(latents, t, cond), WanCameraPolicy.from_config("tiny", seed=0).velocity(latents, t, cond))
