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


def test_recammaster_puts_the_image_first_in_the_sequence_at_timestep_0(policy, monkeypatch):
    latents, t, cond = inputs(policy)
    seen, forward = {}, policy.dit.forward

    def spy(full, timestep, *rest):
        seen.update(full=full, timestep=timestep, out=forward(full, timestep, *rest))
        return seen["out"]

    monkeypatch.setattr(policy.dit, "forward", spy)
    v = policy.velocity(latents, t, cond)
    assert torch.equal(seen["full"][:, :, :1], cond.image_latents) and torch.equal(seen["full"][:, :, 1:], latents)
    assert torch.equal(v, seen["out"][:, :, 1:])  # the generated frames' velocity, not the image's
    per_frame = seen["timestep"].view(2, 1 + latents.shape[2], -1)  # (B, frames, tokens per frame)
    assert (per_frame[:, 0] == 0).all() and (per_frame[:, 1:] == (t * 1000)[:, None, None]).all()
    torch.manual_seed(5)
    other_image = policy.condition(torch.rand(2, 3, 32, 48), ["a room", "a garden"], make_cameras())
    assert (policy.velocity(latents, t, other_image) - v).abs().max() > 1e-4


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
    assert (policy.velocity(latents, t, cond) - before).abs().max() > 1e-4  # switched back on, still trained
    assert {n for n, p in policy.named_parameters() if p.requires_grad} == trainable


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
    torch.testing.assert_close(
        clone.velocity(latents, t, cond), WanCameraPolicy.from_config("tiny", seed=0).velocity(latents, t, cond)
    )


def attention_inputs(model, latents, timestep, text, camera):
    """The input of block 0's self-attention."""
    seen = []
    handle = model.transformer.blocks[0].attn1.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    model(latents, timestep, text, camera)
    handle.remove()
    return seen[0]


@pytest.mark.parametrize("layout", ["recammaster", "astra"])
def test_camera_embedding_is_added_after_norm_and_modulation(layout):
    """ReCamMaster and Astra add the camera embedding to modulate(norm1(x)), not to x: the attention input
    then moves linearly with the encoder's weights (before the norm it would not)."""
    torch.manual_seed(0)
    model = CameraConditionedWan(WanTransformer3DModel(**TRANSFORMER_CONFIGS["tiny"]), layout)
    latents, text = torch.randn(1, 4, 3, 4, 6), torch.randn(1, 7, 32)
    timestep = torch.full((1, 18), 500.0)
    camera = torch.randn(1, 3, 12 if layout == "recammaster" else 13)
    encoder = (
        model.transformer.blocks[0].moe.experts[0][0] if layout == "astra" else model.transformer.blocks[0].cam_encoder
    )
    base = attention_inputs(model, latents, timestep, text, camera)
    torch.nn.init.normal_(encoder.weight, std=0.3)
    once = attention_inputs(model, latents, timestep, text, camera) - base
    encoder.weight.data *= 2
    twice = attention_inputs(model, latents, timestep, text, camera) - base
    assert once.abs().max() > 1e-2
    torch.testing.assert_close(twice, 2 * once)


def test_astra_layout_keys_identity_and_expert_routing():
    torch.manual_seed(0)
    base = WanTransformer3DModel(**TRANSFORMER_CONFIGS["tiny"])
    astra = CameraConditionedWan(copy.deepcopy(base), "astra", num_experts=3, expert=1)
    latents, text = torch.randn(2, 4, 3, 4, 6), torch.randn(2, 7, 32)
    timestep = torch.full((2, 18), 300.0)
    camera = torch.randn(2, 3, 13)
    torch.testing.assert_close(
        astra(latents, timestep, text, camera), base(latents, timestep, text, return_dict=False)[0]
    )
    keys = set(astra.transformer.state_dict())
    assert {"sekai_processor.projector.0.weight", "blocks.0.moe.experts.2.0.weight", "blocks.1.projector.bias"} <= keys
    assert not any("cam_encoder" in k for k in keys)
    for block in astra.transformer.blocks:  # only the routed expert acts
        torch.nn.init.normal_(block.moe.experts[0][0].weight, std=0.5)
    torch.testing.assert_close(
        astra(latents, timestep, text, camera), base(latents, timestep, text, return_dict=False)[0]
    )
    for block in astra.transformer.blocks:
        torch.nn.init.normal_(block.moe.experts[1][0].weight, std=0.5)
    assert (
        astra(latents, timestep, text, camera) - base(latents, timestep, text, return_dict=False)[0]
    ).abs().max() > 1e-3
    with pytest.raises(ValueError, match="astra layout"):
        astra(latents, timestep, text, camera[..., :12])


def test_astra_camera_features_are_per_step_motion_with_a_given_frame_flag():
    forward = camera_features(make_cameras("forward", batch=1, frames=9), 3, layout="astra")[0]
    left = camera_features(make_cameras("left", batch=1, frames=9), 3, layout="astra")[0]
    assert forward.shape == (3, 13) and forward[:, 12].tolist() == [1.0, 0.0, 0.0]
    # Astra's presets: forward is a -z step of the world-to-camera motion, +yaw (left) puts +sin in R[0, 2].
    assert (forward[:, 11] < 0).all() and torch.allclose(forward[:, :11], torch.eye(3, 4).flatten()[:11], atol=1e-6)
    assert (left[:, 2] > 0).all() and left[:, [3, 7, 11]].abs().max() < 1e-6
    torch.testing.assert_close(forward[2], forward[1])  # the last latent frame repeats the previous motion


def test_astra_shapes_on_the_meta_device():
    with torch.device("meta"):
        model = CameraConditionedWan(WanTransformer3DModel(**TRANSFORMER_CONFIGS["wan2.1-1.3b"]), "astra")
    state = model.transformer.state_dict()
    assert state["blocks.29.moe.experts.2.0.weight"].shape == (1536, 25)  # Astra's checkpoint shapes
    assert state["sekai_processor.projector.0.weight"].shape == (25, 13)
    assert state["blocks.0.projector.weight"].shape == (1536, 1536)


def test_gradient_checkpointing_recomputes_with_the_forward_passes_own_camera(policy):
    latents, t, cond = inputs(policy)
    _, _, other = inputs(policy, "right")
    for block in policy.transformer.blocks:
        torch.nn.init.normal_(block.cam_encoder.weight, std=0.5)
    policy.add_lora(rank=4, alpha=4)

    def gradients():
        policy.zero_grad()
        loss = policy.velocity(latents, t, cond).square().mean()
        with torch.no_grad():
            policy.velocity(latents, t, other)  # another camera in between, as a reference pass could be
        loss.backward()
        return {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}

    plain = gradients()
    policy.dit.enable_gradient_checkpointing()
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys() and any("cam_encoder" in n for n in plain)
    assert all(block._lyra_camera is None for block in policy.transformer.blocks)  # nothing kept alive
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], msg=name)


def test_astra_history_forward_is_diffusers_forward_on_its_token_sequence(monkeypatch):
    """With the frame indices made contiguous, Astra's forward equals diffusers' forward on [image, image,
    generated] with one timestep per sample: token assembly, RoPE, modulation and head are the same."""
    from policies import camera_dit

    assert camera_dit.astra_frame_indices(2).tolist() == [19, 19, 20, 21]
    torch.manual_seed(0)
    base = WanTransformer3DModel(**TRANSFORMER_CONFIGS["tiny"])
    astra = CameraConditionedWan(copy.deepcopy(base), "astra")
    astra.transformer.clean_x_embedder.proj.weight.data *= 2  # history embedder(x) = patch embedding(2x) + bias
    latents, image, text = torch.randn(2, 4, 2, 4, 6), torch.randn(2, 4, 1, 4, 6), torch.randn(2, 7, 32)
    timestep, camera = torch.tensor([700.0, 200.0]), torch.randn(2, 3, 13)
    astras_own = astra.forward_with_history(latents, timestep, text, camera, image)
    monkeypatch.setattr(camera_dit, "astra_frame_indices", lambda n: torch.arange(2 + n))
    expected = base(torch.cat([2 * image, 2 * image, latents], dim=2), timestep, text, return_dict=False)[0][:, :, 2:]
    torch.testing.assert_close(astra.forward_with_history(latents, timestep, text, camera, image), expected)
    assert (astras_own - expected).abs().max() > 1e-4  # Astra's own indices (19, 19, 20, 21) differ


def test_astra_history_tokens_get_cameras_0_and_1():
    torch.manual_seed(0)
    astra = CameraConditionedWan(WanTransformer3DModel(**TRANSFORMER_CONFIGS["tiny"]), "astra")
    seen = []
    astra.transformer.blocks[0].attn1.register_forward_pre_hook(lambda m, a: seen.append(m._lyra_block._lyra_camera))
    latents, image, text, camera = (
        torch.randn(1, 4, 2, 4, 6),
        torch.randn(1, 4, 1, 4, 6),
        torch.randn(1, 7, 32),
        torch.randn(1, 3, 13),
    )
    astra.forward_with_history(latents, torch.tensor([500.0]), text, camera, image)
    torch.testing.assert_close(seen[0], astra.transformer.sekai_processor(camera[:, [0, 1, 1, 2]]))


def test_rope_at_contiguous_frames_is_diffusers_rope():
    from policies.camera_dit import rope_at_frames

    rope = WanTransformer3DModel(**TRANSFORMER_CONFIGS["tiny"]).rope
    cos, sin = rope(torch.zeros(1, 4, 3, 8, 12))
    ours = rope_at_frames(rope, torch.arange(3), 4, 6)
    torch.testing.assert_close(ours[0], cos)
    torch.testing.assert_close(ours[1], sin)


def test_astra_policy_follows_camera_and_image_once_trained():
    policy = WanCameraPolicy.from_config("tiny", seed=0, camera_layout="astra")
    latents, t, cond = inputs(policy)
    _, _, other = inputs(policy, "right")
    for block in policy.transformer.blocks:
        torch.nn.init.normal_(block.moe.experts[0][0].weight, std=0.5)
    v = policy.velocity(latents, t, cond)
    assert v.shape == latents.shape
    assert (v - policy.velocity(latents, t, other)).abs().max() > 1e-3
    moved = copy.copy(cond)
    moved.image_latents = cond.image_latents + 1.0
    assert (v - policy.velocity(latents, t, moved)).abs().max() > 1e-3


def test_offloaded_vae_visits_the_device_for_each_call_only(policy, monkeypatch):
    latents, t, cond = inputs(policy)
    expected = policy.decode(latents, cond)
    policy.place("cpu", offload_vae=True)
    torch.testing.assert_close(policy.decode(latents, cond), expected)
    moves = []
    monkeypatch.setattr(type(policy.vae), "to", lambda self, device, *a, **k: moves.append(str(device)) or self)
    with pytest.raises(RuntimeError, match="decoder failed"):
        with policy._vae_on(torch.device("cuda", 0)):
            raise RuntimeError("decoder failed")
    assert moves == ["cuda:0", "cpu"]  # there for the call, back to the CPU even when the call fails
