import re

import pytest
import torch
from safetensors.torch import save_file

from lyra_rl.camera import Cameras, default_intrinsics, trajectory_preset
from lyra_rl.errors import WeightsError
from policies.loading import load_pretrained, load_vae
from policies.wan_camera import WanCameraPolicy

# diffusers -> original Wan / DiffSynth key names (the inverse of diffusers' converter), to build
# checkpoints with the real key names the released weights use.
TO_ORIGINAL = [
    (r"condition_embedder\.time_embedder\.linear_1", "time_embedding.0"),
    (r"condition_embedder\.time_embedder\.linear_2", "time_embedding.2"),
    (r"condition_embedder\.text_embedder\.linear_1", "text_embedding.0"),
    (r"condition_embedder\.text_embedder\.linear_2", "text_embedding.2"),
    (r"condition_embedder\.time_proj", "time_projection.1"),
    (r"\.attn1\.", ".self_attn."),
    (r"\.attn2\.", ".cross_attn."),
    (r"\.to_out\.0\.", ".o."),
    (r"\.to_q\.", ".q."),
    (r"\.to_k\.", ".k."),
    (r"\.to_v\.", ".v."),
    (r"\.ffn\.net\.0\.proj\.", ".ffn.0."),
    (r"\.ffn\.net\.2\.", ".ffn.2."),
    (r"\.norm2\.", ".norm3."),
    (r"^scale_shift_table$", "head.modulation"),
    (r"^proj_out\.", "head.head."),
    (r"\.scale_shift_table$", ".modulation"),
]


def original_keys(state):
    out = {}
    for key, value in state.items():
        for pattern, replacement in TO_ORIGINAL:
            key = re.sub(pattern, replacement, key)
        out[key] = value.clone()
    return out


RESIDUAL_TO_ORIGINAL = {
    "norm1.": "residual.0.",
    "conv1.": "residual.2.",
    "norm2.": "residual.3.",
    "conv2.": "residual.6.",
    "conv_shortcut.": "shortcut.",
}
VAE_TO_ORIGINAL = {
    "quant_conv.": "conv1.",
    "post_quant_conv.": "conv2.",
    "encoder.conv_in.": "encoder.conv1.",
    "decoder.conv_in.": "decoder.conv1.",
    "encoder.norm_out.": "encoder.head.0.",
    "encoder.conv_out.": "encoder.head.2.",
    "decoder.norm_out.": "decoder.head.0.",
    "decoder.conv_out.": "decoder.head.2.",
}


def original_vae_key(key):
    """diffusers' ``AutoencoderKLWan`` key -> the key of Wan2.1's original ``Wan2.1_VAE.pth`` (the inverse of
    diffusers' converter, for Wan2.1's layout: 4 levels of 2 residual blocks, 3 in the decoder)."""

    def residual(name):
        return next(
            (old + name[len(new) :] for new, old in RESIDUAL_TO_ORIGINAL.items() if name.startswith(new)), name
        )

    for new, old in VAE_TO_ORIGINAL.items():
        if key.startswith(new):
            return old + key[len(new) :]
    if match := re.fullmatch(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d)\.(.*)", key):
        side, kind, index, name = match.groups()
        return (
            f"{side}.middle.1.{name}" if kind == "attentions" else f"{side}.middle.{2 * int(index)}.{residual(name)}"
        )
    if match := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(.*)", key):
        return f"encoder.downsamples.{match[1]}.{residual(match[2])}"
    block, resnet, name = re.fullmatch(
        r"decoder\.up_blocks\.(\d)\.(?:resnets\.(\d)|upsamplers\.0)\.(.*)", key
    ).groups()
    if resnet is None:  # the block's upsampler follows its 3 residual blocks
        return f"decoder.upsamples.{4 * int(block) + 3}.{name}"
    return f"decoder.upsamples.{4 * int(block) + int(resnet)}.{residual(name)}"


def velocity(policy):
    torch.manual_seed(3)
    cameras = Cameras.from_trajectory(trajectory_preset("forward_left", 9), default_intrinsics(32, 48))
    cond = policy.condition(torch.rand(1, 3, 32, 48), ["a room"], cameras)
    latents = torch.randn(1, *policy.latent_shape(9, 32, 48))
    return policy.velocity(latents, torch.tensor([0.6]), cond), policy.decode(latents, cond)


@pytest.fixture
def source():
    policy = WanCameraPolicy.from_config("tiny", seed=1)
    for block in policy.transformer.blocks:  # a "fine-tuned" camera DiT
        torch.nn.init.normal_(block.cam_encoder.weight, std=0.2)
    return policy


def base_state(policy):
    return {
        k: v.clone()
        for k, v in policy.transformer.state_dict().items()
        if ".cam_encoder." not in k and ".projector." not in k
    }


def test_original_key_names_round_trip_through_the_converter(source):
    keys = set(original_keys(base_state(source)))
    assert {
        "blocks.0.self_attn.q.weight",
        "blocks.0.cross_attn.o.bias",
        "blocks.1.ffn.0.weight",
        "head.head.weight",
        "head.modulation",
        "blocks.0.modulation",
        "blocks.0.norm3.weight",
        "time_projection.1.weight",
    } <= keys


@pytest.mark.parametrize("dit_file", ["astra.ckpt", "astra.safetensors"])
def test_diffusers_folder_then_dit_path_reproduces_the_policy(source, tmp_path, dit_file):
    (tmp_path / "wan" / "transformer").mkdir(parents=True)
    (tmp_path / "wan" / "vae").mkdir()
    save_file(base_state(source), tmp_path / "wan" / "transformer" / "diffusion_pytorch_model.safetensors")
    save_file(source.vae.state_dict(), tmp_path / "wan" / "vae" / "diffusion_pytorch_model.safetensors")
    fine_tuned = original_keys(source.transformer.state_dict())  # DiffSynth names + camera modules
    (torch.save if dit_file.endswith(".ckpt") else save_file)(fine_tuned, tmp_path / dit_file)
    target = WanCameraPolicy.from_config("tiny", seed=2)
    source.encode_prompts(["a room"])
    target._text_cache = dict(source._text_cache)  # the text encoder is not part of these checkpoints
    load_pretrained(target, tmp_path / "wan")
    v_base, _ = velocity(target)
    load_pretrained(target, dit_path=tmp_path / dit_file)
    (v_target, video_target), (v_source, video_source) = velocity(target), velocity(source)
    torch.testing.assert_close(v_target, v_source)
    torch.testing.assert_close(video_target, video_source)
    assert (v_base - v_source).abs().max() > 1e-4  # the camera modules came from the --dit_path


def test_original_folder_layout(source, tmp_path):
    save_file(original_keys(base_state(source)), tmp_path / "diffusion_pytorch_model.safetensors")
    torch.save(source.vae.state_dict(), tmp_path / "Wan2.1_VAE.pth")
    target = WanCameraPolicy.from_config("tiny", seed=2)
    load_pretrained(target, tmp_path)
    for key, value in base_state(source).items():
        torch.testing.assert_close(target.transformer.state_dict()[key], value)


def test_original_wan_vae_checkpoint_loads(tmp_path):
    """``Wan2.1_VAE.pth`` with the released key names (Wan2.1's VAE layout at a small width) loads through
    diffusers' converter. (The tiny policy's VAE has one residual block per level, which the converter's fixed
    indices do not cover, so the folder-layout tests store its weights under diffusers' names.)"""
    from types import SimpleNamespace

    from diffusers import AutoencoderKLWan

    layout = dict(
        base_dim=4, z_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=2, latents_mean=[0.0] * 4, latents_std=[1.0] * 4
    )
    torch.manual_seed(0)
    source = AutoencoderKLWan(**layout)
    original = {original_vae_key(key): value for key, value in source.state_dict().items()}
    assert {
        "conv1.weight",
        "conv2.bias",
        "encoder.downsamples.3.shortcut.weight",
        "encoder.downsamples.2.resample.1.weight",
        "encoder.middle.1.to_qkv.weight",
        "decoder.middle.2.residual.6.weight",
        "decoder.upsamples.4.shortcut.weight",
        "decoder.upsamples.11.resample.1.weight",
        "decoder.upsamples.3.time_conv.weight",
        "decoder.head.0.gamma",
    } <= original.keys()
    torch.save(original, tmp_path / "Wan2.1_VAE.pth")
    target = SimpleNamespace(vae=AutoencoderKLWan(**layout))
    assert not torch.equal(target.vae.decoder.conv_in.weight, source.decoder.conv_in.weight)
    load_vae(target, tmp_path / "Wan2.1_VAE.pth")
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.vae.state_dict()[key], value, rtol=0, atol=0)


def test_missing_and_unexpected_keys_are_named(source, tmp_path):
    state = original_keys(source.transformer.state_dict())
    del state["blocks.1.self_attn.q.weight"]
    state["blocks.0.lora_magic.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "broken.ckpt")
    with pytest.raises(
        WeightsError, match=r"missing keys: blocks\.1\.attn1\.to_q\.weight.*unexpected keys: blocks\.0\.lora_magic"
    ):
        load_pretrained(WanCameraPolicy.from_config("tiny"), dit_path=tmp_path / "broken.ckpt")
    base_only = tmp_path / "base.ckpt"
    torch.save(original_keys(base_state(source)), base_only)
    with pytest.raises(WeightsError, match="cam_encoder"):  # a --dit_path must carry the camera modules
        load_pretrained(WanCameraPolicy.from_config("tiny"), dit_path=base_only)
    with pytest.raises(FileNotFoundError, match="neither a diffusers folder"):
        load_pretrained(WanCameraPolicy.from_config("tiny"), tmp_path / "nowhere")


def test_astra_checkpoint_with_its_unused_modules_loads(tmp_path):
    source = WanCameraPolicy.from_config("tiny", seed=1, camera_layout="astra")
    for block in source.transformer.blocks:  # a trained Astra DiT
        torch.nn.init.normal_(block.moe.experts[0][0].weight, std=0.2)
    torch.nn.init.normal_(source.transformer.clean_x_embedder.proj.weight, std=0.2)
    state = original_keys(source.transformer.state_dict())
    dim = source.transformer.blocks[0].projector.in_features
    state.update(
        {  # what Astra's checkpoint also carries, with its shapes
            "clean_x_embedder.proj_2x.weight": torch.zeros(dim, 4, 2, 4, 4),
            "clean_x_embedder.proj_4x.bias": torch.zeros(dim),
            "nuscenes_processor.projector.0.weight": torch.zeros(25, 8),
            "openx_processor.projector.0.weight": torch.zeros(25, 13),
            "global_router.weight": torch.zeros(3, 25),
            "blocks.0.cam_encoder.weight": torch.zeros(dim, 13),
        }
    )
    torch.save(state, tmp_path / "astra.ckpt")
    target = WanCameraPolicy.from_config("tiny", seed=2, camera_layout="astra")
    source.encode_prompts(["a room"])
    target._text_cache = dict(source._text_cache)
    target.vae.load_state_dict(source.vae.state_dict())
    load_pretrained(target, dit_path=tmp_path / "astra.ckpt")
    torch.testing.assert_close(velocity(target)[0], velocity(source)[0])
    with pytest.raises(ValueError, match="camera_layout='astra'"):
        load_pretrained(WanCameraPolicy.from_config("tiny"), dit_path=tmp_path / "astra.ckpt")
    # infer reads the layout from the file, as the seed's command gives none
    from policies.inference import InferConfig, build_inference_policy
    from policies.loading import camera_layout_of

    assert camera_layout_of(tmp_path / "astra.ckpt") == "astra"
    config = InferConfig(policy="tiny", dit_path=str(tmp_path / "astra.ckpt"), num_frames=5, height=32, width=48)
    assert build_inference_policy(config, []).dit.layout == "astra"
    torch.save(original_keys(WanCameraPolicy.from_config("tiny").transformer.state_dict()), tmp_path / "rcm.ckpt")
    assert camera_layout_of(tmp_path / "rcm.ckpt") == "recammaster"
    (tmp_path / "junk.ckpt").write_bytes(b"junk")
    assert camera_layout_of(tmp_path / "junk.ckpt") is None


def test_base_weights_into_the_astra_layout_start_its_history_embedder_from_them(source, tmp_path):
    save_file(original_keys(base_state(source)), tmp_path / "diffusion_pytorch_model.safetensors")
    torch.save(source.vae.state_dict(), tmp_path / "Wan2.1_VAE.pth")
    target = WanCameraPolicy.from_config("tiny", seed=2, camera_layout="astra")
    load_pretrained(target, tmp_path)
    torch.testing.assert_close(
        target.transformer.clean_x_embedder.proj.weight, source.transformer.patch_embedding.weight
    )
