"""``recipes/export_lora.py`` and ``lyra_rl.export``: every exported file reloads with the loader people use
(peft, diffusers' pipeline loader, diffusers' converter of Wan's original names, ``--dit_path``) and reproduces
the fine-tuned policy's velocity to 1e-5; the metadata is in every file."""

from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
from peft import PeftModel
from safetensors import safe_open
from safetensors.torch import load_file
from test_recipes import load_recipe

from lyra_rl.camera import Cameras, default_intrinsics, trajectory_preset
from lyra_rl.export import config_hash, merge_lora, to_wan_keys
from lyra_rl.training import GRPOConfig
from lyra_rl.training.checkpoint import TRAINER_STATE
from policies import PolicyConfig, WanCameraPolicy
from policies.inference import InferConfig, build_inference_policy
from policies.loading import load_pretrained
from policies.wan_camera import TRANSFORMER_CONFIGS

export_lora = load_recipe("export_lora")


def write_checkpoint(folder: Path, lora_r: int = 4, lora_alpha: float = 8.0) -> WanCameraPolicy:
    """A tiny policy's checkpoint as the trainer writes it (trained weights moved off their initialisation, the
    recorded configs); returns the trained policy. ``lora_r`` 0: camera modules only (Lyra's mode)."""
    policy_config = PolicyConfig(policy="tiny", lora_r=lora_r, lora_alpha=lora_alpha)
    config = GRPOConfig(output_dir=str(folder.parent))
    policy = WanCameraPolicy.from_config("tiny", config.seed)
    policy.add_lora(lora_r, lora_alpha) if lora_r else policy.freeze(train_camera=True)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in policy.trained_parameters().values():
            param.add_(0.1 * torch.randn(param.shape, generator=generator))
    folder.mkdir(parents=True)
    policy.save_trained_weights(folder, {k: v.detach().clone() for k, v in policy.trained_parameters().items()})
    torch.save({"config": {**asdict(policy_config), **asdict(config)}, "step": 3}, folder / TRAINER_STATE)
    return policy


def velocity(policy: WanCameraPolicy) -> torch.Tensor:
    cameras = Cameras(trajectory_preset("left", 5)[None], default_intrinsics(32, 48).expand(1, 5, 3, 3).clone())
    cond = policy.condition(torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(2)), ["a"], cameras)
    latents = torch.randn(1, *policy.latent_shape(5, 32, 48), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return policy.velocity(latents, torch.tensor([0.6]), cond)


def fresh_policy_with_camera(export_dir: Path) -> WanCameraPolicy:
    """The base model (same seed) with the exported camera modules, named as the seed names them."""
    policy = WanCameraPolicy.from_config("tiny", 0)
    camera = load_file(export_dir / "camera_modules.safetensors")
    assert all(key.startswith("blocks.") for key in camera)  # blocks.N.cam_encoder.weight, no prefix
    assert not policy.transformer.load_state_dict(camera, strict=False).unexpected_keys
    return policy


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    trained = write_checkpoint(root / "run" / "checkpoint-3")
    record = export_lora.export(export_lora.ExportConfig(checkpoint=str(root / "run"), output_dir=str(root / "out")))
    return trained, velocity(trained), root / "out", record


def test_peft_folder_reloads_with_peft(exported):
    _, expected, out, _ = exported
    policy = fresh_policy_with_camera(out)
    PeftModel.from_pretrained(policy.transformer, out / "peft")  # injects the adapter into the transformer
    torch.testing.assert_close(velocity(policy), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("file", [".", "wan_lora.safetensors"])
def test_lora_reloads_with_the_diffusers_pipeline_loader(exported, file):
    """diffusers' own loader: its file layout, and Wan's original names through its converter (alpha included)."""
    _, expected, out, _ = exported
    policy = fresh_policy_with_camera(out)
    pipe = WanPipeline(
        tokenizer=None, text_encoder=None, vae=None, transformer=policy.transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )  # fmt: skip
    pipe.load_lora_weights(str(out / file))
    torch.testing.assert_close(velocity(policy), expected, atol=1e-5, rtol=0)


def test_lora_of_a_checkpoint_reproduces_the_trained_policy_and_scales(tmp_path):
    trained = write_checkpoint(tmp_path / "checkpoint-3")
    expected = velocity(trained)
    with trained.adapters_disabled():
        without_lora = velocity(trained)  # the camera modules stay trained
    loaded = build_inference_policy(
        InferConfig(policy="tiny", num_frames=5, height=32, width=48), [(tmp_path / "checkpoint-3", 1.0)]
    )
    torch.testing.assert_close(velocity(loaded), expected, atol=1e-5, rtol=0)
    off = build_inference_policy(
        InferConfig(policy="tiny", num_frames=5, height=32, width=48), [(tmp_path / "checkpoint-3", 0.0)]
    )
    torch.testing.assert_close(velocity(off), without_lora, atol=1e-5, rtol=0)
    assert (expected - without_lora).abs().max() > 1e-2  # the adapters matter


def test_the_export_is_a_lora_of_infer(exported):
    """The export folder (LoRA and camera modules) reproduces the policy; peft's folder and Wan's file, LoRA
    only, give the same velocity as each other."""
    _, expected, out, _ = exported
    config = InferConfig(policy="tiny", num_frames=5, height=32, width=48)
    torch.testing.assert_close(velocity(build_inference_policy(config, [(out, 1.0)])), expected, atol=1e-5, rtol=0)
    peft, wan = (
        velocity(build_inference_policy(config, [(path, 0.5)]))
        for path in (out / "peft", out / "wan_lora.safetensors")
    )
    torch.testing.assert_close(peft, wan, atol=1e-5, rtol=0)
    base = velocity(build_inference_policy(config, []))
    assert (peft - base).abs().max() > 1e-3


@pytest.mark.parametrize(
    "file", ["merged/diffusion_pytorch_model.safetensors", "merged_wan.safetensors", "merged_wan.ckpt"]
)
def test_merged_weights_load_as_dit_path(exported, file):
    _, expected, out, _ = exported
    policy = WanCameraPolicy.from_config("tiny", 0)  # the base model (its VAE and text encoder are the run's)
    assert (velocity(policy) - expected).abs().max() > 1e-2
    load_pretrained(policy, dit_path=out / file)
    torch.testing.assert_close(velocity(policy), expected, atol=1e-5, rtol=0)


def test_every_file_carries_the_metadata(exported):
    trained, _, out, record = exported
    recorded = torch.load(out.parent / "run" / "checkpoint-3" / TRAINER_STATE, weights_only=True)["config"]
    assert set(record["files"]) == {
        "peft",
        "diffusers",
        "wan",
        "camera_modules",
        "merged",
        "merged_wan",
        "merged_wan_ckpt",
    }
    assert (
        torch.load(record["files"]["merged_wan_ckpt"], weights_only=True).keys()
        == load_file(record["files"]["merged_wan"]).keys()
    )
    for path in (p for name, p in record["files"].items() if name != "merged_wan_ckpt"):
        with safe_open(path, "pt") as file:
            metadata = file.metadata()
        assert metadata["lyra_rl.lora_rank"] == "4" and metadata["lyra_rl.lora_alpha"] == "8.0"
        assert set(eval(metadata["lyra_rl.lora_target_modules"])) == set(PolicyConfig().lora_target_modules)
        assert '"policy": "tiny"' in metadata["lyra_rl.base_model"]
        assert metadata["lyra_rl.version"] == "0.1.0" and metadata["lyra_rl.step"] == "3"
        assert metadata["lyra_rl.config_sha256"] == config_hash(recorded)
    assert (out / "export.json").is_file()


def test_wan_names_are_the_original_checkpoints():
    """The 1.3B DiT's diffusers keys in Wan's original names (diffusers' converter reads them back: checked
    inside to_wan_keys), and the camera modules keep the seed's names."""
    with torch.device("meta"):
        transformer = WanTransformer3DModel(**TRANSFORMER_CONFIGS["wan2.1-1.3b"])
    state = {**transformer.state_dict(), "blocks.0.cam_encoder.weight": torch.empty(0)}
    keys = set(to_wan_keys(state))
    for key in (
        "blocks.0.self_attn.q.weight", "blocks.0.cross_attn.o.bias", "blocks.0.ffn.0.weight", "blocks.29.ffn.2.bias",
        "blocks.0.norm3.weight", "blocks.0.modulation", "blocks.0.self_attn.norm_q.weight", "head.head.weight",
        "head.modulation", "time_projection.1.weight", "text_embedding.0.weight", "time_embedding.2.bias",
        "patch_embedding.weight", "blocks.0.cam_encoder.weight",
    ):  # fmt: skip
        assert key in keys, key
    assert len(keys) == len(state)


def test_merge_adds_the_scaled_product():
    base = {"m.weight": torch.randn(3, 5), "m.bias": torch.randn(3)}
    lora = {"m.lora_A.weight": torch.randn(2, 5), "m.lora_B.weight": torch.randn(3, 2)}
    merged = merge_lora(base, lora, 0.5)
    x = torch.randn(4, 5)
    adapted = x @ base["m.weight"].T + 0.5 * (x @ lora["m.lora_A.weight"].T) @ lora["m.lora_B.weight"].T
    torch.testing.assert_close(x @ merged["m.weight"].T, adapted)
    assert merged["m.bias"] is base["m.bias"]


def test_camera_modules_only_checkpoint(tmp_path):
    """Lyra's mode (lora_r 0): no LoRA formats, a merged DiT that reproduces the trained policy."""
    trained = write_checkpoint(tmp_path / "checkpoint-2", lora_r=0)
    with pytest.raises(ValueError, match="holds no LoRA .* --formats peft need one"):
        export_lora.export(export_lora.ExportConfig(checkpoint=str(tmp_path / "checkpoint-2"), formats=["peft"]))
    record = export_lora.export(export_lora.ExportConfig(checkpoint=str(tmp_path / "checkpoint-2")))
    assert set(record["files"]) == {"camera_modules", "merged", "merged_wan", "merged_wan_ckpt"}
    policy = WanCameraPolicy.from_config("tiny", 0)
    load_pretrained(policy, dit_path=record["files"]["merged_wan"])
    torch.testing.assert_close(velocity(policy), velocity(trained), atol=1e-5, rtol=0)
