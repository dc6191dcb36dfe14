import os
import re
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


def load_recipe(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"recipe_{name}", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "recipe, field",
    [
        ("grpo", "--prompt_embeddings"),
        ("sft", "--train_micro_batch_size"),
        ("dpo", "--min_reward_margin"),
        ("nft", "--nft_beta"),
        ("encode_prompts", "--negative_prompt"),
        ("preprocess", "--frame_stride"),
        ("score_procedural", "--num_scenes"),
        ("infer", "--condition_image"),
        ("export_lora", "--merged_dtype"),
    ],
)
def test_every_recipe_documents_its_arguments(recipe, field):
    out = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / f"{recipe}.py"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert field in out.stdout


def test_grpo_help_documents_every_field_under_trl_names():
    from dataclasses import fields

    import trl

    from lyra_rl.training import GRPOConfig, RewardConfig
    from policies import PolicyConfig

    out = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "grpo.py"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    names = [f.name for config in (PolicyConfig, RewardConfig, GRPOConfig) for f in fields(config)]
    assert [name for name in names if not re.search(rf"--{name}\b", out.stdout)] == []
    shared = {f.name for config in (trl.GRPOConfig, trl.ModelConfig) for f in fields(config)} & set(names)
    assert {
        "num_generations",
        "beta",
        "epsilon",
        "learning_rate",
        "lora_r",
        "lora_alpha",
        "lora_target_modules",
        "reward_weights",
        "scale_rewards",
        "num_iterations",
        "max_grad_norm",
        "max_steps",
    } <= shared


def test_readme_run_on_two_cpu_processes_is_one_group(tmp_path):
    """``accelerate launch --multi_gpu --num_processes 2 recipes/grpo.py`` on a machine without GPUs: one
    2-process run (one report, one TensorBoard log), never two independent runs writing the same folder."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(ROOT / "recipes" / "grpo.py"),
        "--config",
        str(ROOT / "recipes" / "configs" / "grpo_tiny.yaml"),
        "--output_dir",
        str(tmp_path),
        "--max_steps",
        "1",
        "--save_steps",
        "1",
        "--conditions_per_step",
        "1",
        "--num_sampling_steps",
        "2",
        "--eval_sampling_steps",
        "2",
    ]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("Wrote ") == 1
    assert len(list((tmp_path / "logs").glob("events.out.tfevents.*"))) == 1
    assert {p.name for p in (tmp_path / "samples").iterdir()} == {"step-1-0.mp4", "step-1-1.mp4"}
    assert {p.name for p in (tmp_path / "checkpoint-1").iterdir()} == {
        "pytorch_lora_weights.safetensors",
        "camera_modules.safetensors",
        "trainer_state.pt",
    }
    assert (tmp_path / "reward_curve.png").is_file()


def test_precomputed_prompts_then_grpo_without_the_text_encoder(tmp_path, monkeypatch, capsys):
    from policies.prompts import load_prompt_embeddings
    from policies.wan_camera import WanCameraPolicy

    folder = tmp_path / "images"
    folder.mkdir()
    for k in range(3):
        iio.imwrite(folder / f"{k}.png", np.random.default_rng(k).integers(0, 255, (32, 48, 3), dtype=np.uint8))
        (folder / f"{k}.txt").write_text(f"scene {k}")
    from lyra_rl.training import GRPOConfig, GRPOTrainer, RewardConfig
    from policies import PolicyConfig
    from policies.training import run_training

    encode = load_recipe("encode_prompts")
    path = encode.main(
        encode.EncodePromptsConfig(
            conditions=str(folder), negative_prompt="blurry", output=str(tmp_path / "p.safetensors")
        )
    )
    assert sorted(load_prompt_embeddings(path)) == ["blurry", "scene 0", "scene 1", "scene 2"]

    original = WanCameraPolicy.from_config

    def without_text_encoder(*args, **kwargs):  # as for wan2.1-1.3b: nothing but the file can embed prompts
        policy = original(*args, **kwargs)
        policy.text_encoder = None
        return policy

    monkeypatch.setattr(WanCameraPolicy, "from_config", without_text_encoder)
    policy_config = PolicyConfig(
        prompt_embeddings=str(path), gradient_checkpointing=True, lora_target_modules=["to_q", "ffn.net.2"]
    )
    config = GRPOConfig(
        output_dir=str(tmp_path / "run"),
        conditions=str(folder),
        max_steps=1,
        guidance_scale=2.0,
        negative_prompt="blurry",
        num_sampling_steps=2,
        conditions_per_step=1,
        num_generations=2,
        eval_conditions=1,
        eval_sampling_steps=2,
    )
    history = run_training(GRPOTrainer, policy_config, RewardConfig(rewards=["grpo_helpers:Brightness"]), config)
    lora = load_file(tmp_path / "run" / "checkpoint-1" / "pytorch_lora_weights.safetensors")
    assert len(history) == 1 and {re.sub(r".*\.(to_q|ffn\.net\.2)\.lora_[AB]\.weight", r"\1", k) for k in lora} == {
        "to_q",
        "ffn.net.2",
    }
    assert (tmp_path / "run" / "samples" / "step-1-0.mp4").is_file() and (
        tmp_path / "run" / "reward_curve.png"
    ).is_file()
    printed = capsys.readouterr().out
    assert "checkpoint-1/" in printed and "could not score" not in printed  # brightness never fails


@pytest.mark.parametrize("name", ["grpo_tiny", "grpo_embedded", "grpo_wan2.1-1.3b", "grpo_lyra"])
def test_grpo_configs_parse(name):
    from lyra_rl.training import GRPOConfig
    from policies.training import parse_configs
    from policies.wan_camera import CAMERA_LAYOUTS, TRANSFORMER_CONFIGS

    policy_config, _, _ = parse_configs(GRPOConfig, ["--config", str(ROOT / "recipes" / "configs" / f"{name}.yaml")])
    assert policy_config.policy in TRANSFORMER_CONFIGS and policy_config.camera_layout in CAMERA_LAYOUTS


@pytest.mark.parametrize("name, config_class", [("dpo_tiny", "DPOConfig"), ("nft_tiny", "NFTConfig")])
def test_dpo_and_nft_configs_parse(name, config_class):
    """By their recipe's parser, and as ``lyra-rl evaluate --config`` reads any recipe's config."""
    from lyra_rl import training
    from policies.training import parse_configs, parse_recipe_config

    path = str(ROOT / "recipes" / "configs" / f"{name}.yaml")
    policy_config, reward_config, config = parse_configs(getattr(training, config_class), ["--config", path])
    assert policy_config.lora_r == 8 and reward_config.rewards == ["pose_consistency", "epipolar"]
    assert config.num_generations == 4 and config.output_dir == f"outputs/{name}"
    assert parse_recipe_config(path)[2].height == 64


def test_grpo_config_from_yaml_with_command_line_overrides():
    from lyra_rl.training import GRPOConfig
    from policies.training import parse_configs

    def parse_args(args):
        return parse_configs(GRPOConfig, args)

    yaml_file = str(ROOT / "recipes" / "configs" / "grpo_tiny.yaml")
    policy_config, reward_config, config = parse_args(
        ["--config", yaml_file, "--max_steps", "3", "--rewards", "pose_consistency", "--reward_weights", "0.5"]
    )
    assert (config.height, config.num_generations, config.epsilon, policy_config.lora_r) == (
        64,
        4,
        0.001,
        8,
    )  # from the yaml
    assert (
        config.max_steps == 3
        and reward_config.rewards == ["pose_consistency"]
        and reward_config.reward_weights == [0.5]
    )
    with pytest.raises(ValueError, match="num_frames"):  # the policy's size rules run on the parsed values
        parse_args(["--config", yaml_file, "--num_frames", "16"])


def test_sft_recipe_from_its_config(tmp_path, capsys):
    from lyra_rl.training import SFTConfig, SFTTrainer
    from policies.training import parse_configs, run_training

    configs = parse_configs(
        SFTConfig,
        [
            "--config",
            str(ROOT / "recipes" / "configs" / "sft_tiny.yaml"),
            "--output_dir",
            str(tmp_path),
            "--max_steps",
            "2",
            "--save_steps",
            "2",
            "--eval_sampling_steps",
            "2",
        ],
    )
    assert configs[1].rewards == [] and configs[2].conditions_per_step == 4
    history = run_training(SFTTrainer, *configs)
    assert (
        len(history) == 2
        and (tmp_path / "loss_curve.png").is_file()
        and (tmp_path / "samples" / "step-2-1.mp4").is_file()
    )
    assert "Wrote " in capsys.readouterr().out
