import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from grpo_helpers import make_trainer

from lyra_rl.training import latest_checkpoint
from lyra_rl.video import read_video


def test_grpo_raises_the_reward_with_bounded_kl(tmp_path):
    """Against a run that does not learn (learning rate 0) on the same conditions and noise, the brightness
    reward pulls ahead step by step (measured with seed 0: +0.024 by step 4, +0.079 by step 8; seeds 1-5:
    +0.006 to +0.025 and +0.026 to +0.075)."""
    trainer = make_trainer(tmp_path / "trained", max_steps=8, save_steps=100)
    frozen = make_trainer(tmp_path / "frozen", max_steps=8, save_steps=100, learning_rate=0.0)
    history = [trainer.train_step() for _ in range(8)]
    control = [frozen.train_step()["reward/total"] for _ in range(8)]
    gains = [h["reward/total"] - c for h, c in zip(history, control)]
    assert gains[0] == 0.0 and 0.005 < gains[3] < gains[-1] and gains[-1] > 0.02, gains
    assert all(h["ratio_min"] == h["ratio_max"] == 1.0 for h in history)  # first inner epoch: same weights, same noise
    assert max(h["kl"] for h in history) < 0.05


def test_zero_advantages_leave_the_policy_unchanged(tmp_path):
    """A reward every rollout of a group shares (as the floor of a reward that fails on every video) gives
    zero advantages: at the reference weights the KL's gradient is 0 too, so nothing moves (no weight decay)."""
    trainer = make_trainer(tmp_path, max_steps=2)
    trainer.reward_set.rewards[0].score_video = lambda *args, **kwargs: (0.0, {})
    before = trainer.trained_state_dict()
    for _ in range(2):
        trainer.train_step()
    after = trainer.trained_state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)


def test_a_group_shares_its_initial_noise_and_nothing_else(tmp_path):
    trainer = make_trainer(tmp_path)  # 2 conditions, groups of 4, 4 sampling steps
    initial, step_noise = trainer.initial_and_step_noise(torch.tensor([0, 1]))
    groups = initial.view(2, 4, -1)
    assert all(torch.equal(group[0], group[k]) for group in groups for k in range(1, 4))
    assert not torch.equal(groups[0, 0], groups[1, 0])
    assert step_noise.shape == (4, 8, 4, 2, 4, 6)
    per_sample = step_noise.transpose(0, 1).reshape(8, -1)
    assert all(not torch.equal(per_sample[i], per_sample[j]) for i in range(8) for j in range(i))


def test_second_inner_epoch_moves_the_ratio(tmp_path):
    trainer = make_trainer(tmp_path, num_iterations=2, max_steps=2, lr_scheduler_type="linear")
    logged = trainer.train_step()
    assert logged["ratio_max"] > 1.0 or logged["ratio_min"] < 1.0
    assert trainer.train_step()["learning_rate"] == pytest.approx(0.5e-2)  # 2 of 4 optimizer steps done


@pytest.mark.parametrize(
    "given, scale",
    [
        ("group", "group"),
        ("batch", "batch"),
        ("none", "none"),
        (True, "group"),
        (False, "none"),
        ("true", "group"),
        ("False", "none"),
    ],
)
def test_scale_rewards_takes_trls_values(given, scale):
    from lyra_rl.training import GRPOConfig

    assert GRPOConfig(scale_rewards=given).scale_rewards == scale


def test_scale_rewards_rejects_other_values():
    from lyra_rl.training import GRPOConfig

    with pytest.raises(ValueError, match="scale_rewards must be one of"):
        GRPOConfig(scale_rewards="std")


def test_learning_rate_schedules():
    from lyra_rl.training import learning_rate_factor

    assert [learning_rate_factor(k, "constant", 2, 10) for k in range(4)] == pytest.approx([1 / 3, 2 / 3, 1, 1])
    assert [learning_rate_factor(k, "linear", 0, 4) for k in range(5)] == pytest.approx([1, 0.75, 0.5, 0.25, 0])
    assert learning_rate_factor(3, "cosine", 1, 5) == pytest.approx(0.5)  # half-way through the decay


def test_resume_continues_with_the_same_numbers(tmp_path, capsys):
    schedule = dict(lr_scheduler_type="cosine", warmup_steps=1)
    full = make_trainer(tmp_path / "full", max_steps=4, save_steps=2, **schedule).train()
    interrupted = make_trainer(tmp_path / "resumed", max_steps=4, save_steps=2, **schedule)
    while interrupted.step < 2:  # a run stopped after its step-2 checkpoint
        interrupted.train_step()
    interrupted.save_checkpoint()
    (tmp_path / "resumed" / "checkpoint-3").mkdir()  # incomplete (no training state): must be ignored
    resuming = make_trainer(tmp_path / "resumed", max_steps=4, save_steps=2, resume=True, **schedule)
    steps_run, train_step = [], resuming.train_step
    resuming.train_step = lambda: steps_run.append(resuming.step + 1) or train_step()
    capsys.readouterr()
    resumed = resuming.train()
    assert "GRPO" in (progress := capsys.readouterr().err) and "4/4" in progress  # the bar starts at step 2
    assert steps_run == [3, 4]  # continued from checkpoint-2
    assert latest_checkpoint(tmp_path / "resumed").name == "checkpoint-4"
    for a, b in zip(full, resumed):
        assert a["reward/total"] == pytest.approx(b["reward/total"], abs=1e-6)
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
        assert a["learning_rate"] == pytest.approx(b["learning_rate"], rel=1e-9)
    assert [h["learning_rate"] for h in full] == pytest.approx(
        [0.5e-2, 1e-2, 0.75e-2, 0.25e-2], abs=1e-9
    )  # warm-up, cosine
    run = tmp_path / "full"
    assert (run / "reward_curve.png").is_file() and (run / "samples" / "step-4-1.mp4").is_file()
    assert (run / "checkpoint-4" / "pytorch_lora_weights.safetensors").is_file() and any((run / "logs").iterdir())
    sample, _ = read_video(run / "samples" / "step-4-0.mp4")
    assert sample.shape[-1] == sample.shape[-2] + 48 * sample.shape[-2] // 32  # the frame, then the camera path panel
    assert [h["step"] for h in full if "eval/reward/total" in h] == [2, 4]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = EventAccumulator(str(run / "logs")).Reload()
    scalars = set(logs.Tags()["scalars"])
    assert {
        "reward/total",
        "reward/brightness",
        "eval/reward/brightness",
        "loss",
        "policy_loss",
        "kl",
        "clip_fraction",
        "ratio_mean",
        "ratio_min",
        "ratio_max",
        "grad_norm",
        "learning_rate",
        "failed/brightness",
        "diagnostics/brightness/contrast",
        *(f"time/{phase}" for phase in ("conditions", "rollout", "decode", "reward", "update")),
    } <= scalars
    assert [event.step for event in logs.Scalars("reward/total")] == [1, 2, 3, 4]
    assert [event.value for event in logs.Scalars("loss")] == pytest.approx([h["loss"] for h in full])


def test_a_checkpoint_of_version_0_1_resumes(tmp_path, monkeypatch):
    """A checkpoint the trainer of lyra-rl 0.1.0 wrote (``tests/fixtures/checkpoint_v0.1``, see its README)
    resumes today with the numbers that run's next step gave (on that run's data: 0.1.0 rendered procedural
    textures at 256 texels whatever the video size)."""
    import shutil

    monkeypatch.setattr("lyra_rl.data.conditions.texture_size_for", lambda height, width: 256)

    fixture = Path(__file__).parent / "fixtures" / "checkpoint_v0.1"
    shutil.copytree(fixture / "checkpoint-2", tmp_path / "checkpoint-2")
    trainer = make_trainer(
        tmp_path, max_steps=3, save_steps=2, eval_conditions=0, lora_r=2, lora_alpha=2.0, resume=True
    )
    history = trainer.train()
    expected = json.loads((fixture / "step-3.json").read_text())
    assert [h["step"] for h in history] == [1, 2, 3]  # the two steps of the checkpoint's history, then step 3
    for name in ("reward/total", "kl"):
        assert history[-1][name] == pytest.approx(expected[name], rel=1e-5, abs=1e-9), name
    # the loss is beta * KL (2.4e-6) plus the mean of advantages (zero per group) times ratios within float32
    # noise of 1: its last digits are rounding, which differs between CPUs (3.7e-6 there, 1.8e-6 on another)
    assert history[-1]["loss"] == pytest.approx(expected["loss"], abs=1e-5)
    sums = {key: float(value.double().sum()) for key, value in trainer.trained_state_dict().items()}
    # the step's update follows that loss's gradient through Adam: the same rounding, 1e-5 of the sums (a wrong
    # resume, e.g. of Adam's moments, moves them by the learning rate, 1e-2)
    assert sums == pytest.approx(expected["trained_sums"], rel=1e-4, abs=1e-6)


def test_a_checkpoint_that_fails_midway_leaves_the_last_complete_one(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, max_steps=2)
    trainer.train_step()
    trainer.save_checkpoint()
    trainer.train_step()
    save = trainer.policy.save_trained_weights

    def fails_after_the_weights(folder, state):
        save(folder, state)
        raise OSError("disk full")

    monkeypatch.setattr(trainer.policy, "save_trained_weights", fails_after_the_weights)
    with pytest.raises(OSError, match="disk full"):
        trainer.save_checkpoint()
    assert not (tmp_path / "checkpoint-2").exists() and latest_checkpoint(tmp_path).name == "checkpoint-1"
    monkeypatch.setattr(trainer.policy, "save_trained_weights", save)
    assert trainer.save_checkpoint() == latest_checkpoint(tmp_path) == tmp_path / "checkpoint-2"


def test_only_the_drawn_fraction_of_steps_is_sde_sampled_and_trained(tmp_path, monkeypatch):
    from lyra_rl.training import grpo as trainer_module

    trainer = make_trainer(tmp_path, train_timestep_fraction=0.5, num_sampling_steps=4, max_steps=3)
    rollouts, replayed, run = [], [], trainer_module.rollout
    monkeypatch.setattr(
        trainer_module, "rollout", lambda *args, **kwargs: rollouts.append(run(*args, **kwargs)) or rollouts[-1]
    )
    step_loss = trainer.step_loss
    trainer.step_loss = lambda result, k, *args: replayed.append(k) or step_loss(result, k, *args)
    draws = []
    for _ in range(3):
        draws.append(trainer.trained_timesteps().tolist())  # drawn from the seed and the step
        replayed.clear()
        trainer.train_step()
        assert len(draws[-1]) == 2 and replayed == draws[-1]  # one micro-batch, one inner epoch
        sde_steps = (rollouts[-1].log_probs != 0).all(0).nonzero().flatten().tolist()
        assert sde_steps == draws[-1]  # the other steps ran the ODE: no log-prob, nothing to train
    assert len({tuple(d) for d in draws}) > 1


def test_samples_draw_the_camera_path_the_video_took(tmp_path, monkeypatch):
    """With a reward that estimates cameras in the set (pose_consistency), a sample's panel draws the path
    estimated from its frames beside the commanded one: here a video rendered along another path."""
    from lyra_rl.camera import Cameras, default_intrinsics, trajectory_errors, trajectory_preset
    from lyra_rl.data.renderer import render
    from lyra_rl.data.scenes import make_scene
    from lyra_rl.reward import RewardSet
    from lyra_rl.training import trainer as trainer_module
    from rewards.pose import PoseConsistencyReward

    trainer = make_trainer(tmp_path)
    trainer.reward_set = RewardSet([PoseConsistencyReward()])
    K = default_intrinsics(64, 96)
    video = render(make_scene(7), trajectory_preset("forward_right", 12), K, 64, 96).frames
    commanded = Cameras.from_trajectory(trajectory_preset("forward_left", 12), K)
    drawn, draw = {}, trainer_module.camera_path_video
    monkeypatch.setattr(
        trainer_module, "camera_path_video", lambda video, paths: drawn.update(paths) or draw(video, paths)
    )
    trainer.write_sample(tmp_path / "sample.mp4", video, commanded)
    assert set(drawn) == {"commanded", "estimated"} and (tmp_path / "sample.mp4").is_file()
    taken = trajectory_preset("forward_right", 12)
    assert trajectory_errors(drawn["estimated"], taken).rot_err_deg < 5.0
    assert trajectory_errors(drawn["estimated"], commanded.cam_from_world[0]).rot_err_deg > 15.0


def test_checkpoint_restores_the_random_number_generators(tmp_path):
    import random

    import numpy as np

    trainer = make_trainer(tmp_path)
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    checkpoint = trainer.save_checkpoint()
    draws = torch.rand(3), np.random.rand(3), random.random()
    trainer.load_checkpoint(checkpoint)
    again = torch.rand(3), np.random.rand(3), random.random()
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2] == again[2]


def test_evaluation_is_deterministic_and_leaves_training_alone(tmp_path):
    plain = make_trainer(tmp_path / "plain", max_steps=2)
    evaluated = make_trainer(tmp_path / "evaluated", max_steps=2, eval_sampling_steps=6)
    first = evaluated.evaluate()
    assert evaluated.evaluate() == first and set(first) == {"eval/reward/total", "eval/reward/brightness"}
    assert first != make_trainer(tmp_path / "other", eval_sampling_steps=3).evaluate()  # the ODE step count matters
    for _ in range(2):
        a, b = plain.train_step(), evaluated.train_step()
        evaluated.evaluate()
        assert a["loss"] == b["loss"] and a["reward/total"] == b["reward/total"]


def launch_grpo_helper(
    output_dir: Path,
    num_processes: int,
    conditions_per_step: int,
    config_file: str | None = None,
    mixed_precision: str = "no",
    launch_args: tuple[str, ...] = (),
) -> dict:
    """Runs ``grpo_helpers.py`` under ``accelerate launch`` on CPU processes (2 steps, evaluation, checkpoint,
    resumed third step)."""
    script = Path(__file__).with_name("grpo_helpers.py")
    # the repository after tests/: its packages before tests/policies/, which would be a namespace package
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(script.parent), str(script.parents[1])]),
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        mixed_precision,
        "--dynamo_backend",
        "no",
        *launch_args,
    ]
    if config_file is not None:
        launch += ["--config_file", str(Path(__file__).parents[1] / "recipes" / "configs" / config_file)]
    command = [*launch, str(script), str(conditions_per_step), str(output_dir)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("one-process")
    return run, launch_grpo_helper(run, 1, 2)


def assert_same_run(other: dict, one: dict) -> None:
    assert other["advantages"] == pytest.approx(one["advantages"], abs=1e-4)  # float32 GEMMs of other batch sizes
    assert other["loss"] == pytest.approx(one["loss"], abs=1e-5)
    assert other["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-3)  # before clipping (at 1e-3: it clips)
    assert other["reward"] == pytest.approx(one["reward"], abs=1e-5)
    assert other["eval"] == pytest.approx(one["eval"], abs=1e-5)


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, one_process_run):
    _, one = one_process_run
    two = launch_grpo_helper(tmp_path, 2, 1, "accelerate_ddp.yaml")
    assert two["num_processes"] == 2 and one["num_processes"] == 1 and not two["sharded"]
    assert two["optimizer_state_held"] == one["optimizer_state_held"] == 1.0
    assert_same_run(two, one)
    for run in (one, two):  # resumed from the step-2 checkpoint: the same weights after step 3
        assert run["resumed_weight_diff"] < 1e-7


@pytest.mark.parametrize(
    "config_file, launch_args, block_weights_held, gathered, zero_stage",
    [
        pytest.param("accelerate_fsdp.yaml", (), 0.5, False, None, id="fsdp"),
        pytest.param("accelerate_fsdp_grad_op.yaml", (), 0.5, True, None, id="fsdp-grad-op"),
        pytest.param("accelerate_deepspeed_zero2.yaml", (), 1.0, None, 2, id="deepspeed-zero2"),
        pytest.param("accelerate_deepspeed_zero2.yaml", ("--zero_stage", "1"), 1.0, None, 1, id="deepspeed-zero1"),
    ],
)
def test_sharded_training_matches_one_process(
    tmp_path, one_process_run, config_file, launch_args, block_weights_held, gathered, zero_stage
):
    """The shipped sharding configs on a 2-process CPU group: each process holds half of the optimizer state
    (FSDP shards each block's weights too, DeepSpeed ZeRO the trained weights' state only), the same
    numbers as one process, whole checkpoints (weights and optimizer state) that equal the one-process
    run's, and a resumed run that continues alike."""
    import torch
    from safetensors.torch import load_file

    one_dir, one = one_process_run
    sharded = launch_grpo_helper(tmp_path, 2, 1, config_file, launch_args=launch_args)
    assert sharded["num_processes"] == 2 and sharded["zero_stage"] == zero_stage
    assert sharded["block_weights_held"] == pytest.approx(block_weights_held, abs=0.01)
    assert sharded["optimizer_state_held"] == pytest.approx(0.5, abs=0.01)
    if zero_stage is None:
        assert sharded["gathered_after_no_grad_forward"] is gathered  # reshard_after_forward from the config
    else:  # gradient buckets of the trained weights' size, not DeepSpeed's 5e8 elements
        assert sharded["gradient_bucket"] == 1.0
    assert_same_run(sharded, one)
    assert sharded["resumed_weight_diff"] < 1e-7
    saved, reference = (
        {
            **load_file(d / "checkpoint-2" / "pytorch_lora_weights.safetensors"),
            **load_file(d / "checkpoint-2" / "camera_modules.safetensors"),
        }
        for d in (tmp_path, one_dir)
    )
    assert saved.keys() == reference.keys()
    for key in saved:
        torch.testing.assert_close(
            saved[key], reference[key], rtol=1e-2, atol=1e-4
        )  # Adam at lr 1e-2 amplifies GEMM noise
    states = [
        torch.load(d / "checkpoint-2" / "trainer_state.pt", weights_only=True)["optimizer"]["state"]
        for d in (tmp_path, one_dir)
    ]
    assert states[0].keys() == states[1].keys()
    for index in states[0]:
        assert float(states[0][index]["step"]) == float(states[1][index]["step"]) == 2
        for name in ("exp_avg", "exp_avg_sq"):
            got, want = states[0][index][name], states[1][index][name]
            torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-3 * float(want.abs().max()))  # scale-aware


def test_deepspeed_config_as_shipped_trains_bf16_with_float32_lora(tmp_path):
    """The DeepSpeed config with its bf16: DeepSpeed's own bf16 mode, which would cast the LoRA too, is off;
    the frozen weights run in bf16 under the trainer's autocast, the trained ones stay float32."""
    run = launch_grpo_helper(tmp_path, 1, 2, "accelerate_deepspeed_zero2.yaml", mixed_precision="bf16")
    assert run["zero_stage"] == 2
    assert run["frozen_dtype"] == "torch.bfloat16" and run["trained_dtypes"] == ["torch.float32"]
    assert run["first_ratio"] == [1.0, 1.0] and all(math.isfinite(loss) for loss in run["loss"])
    assert run["resumed_weight_diff"] < 1e-7


def test_training_on_a_folder_of_images(tmp_path):
    import imageio.v3 as iio
    import numpy as np

    folder = tmp_path / "images"
    folder.mkdir()
    for k in range(3):
        iio.imwrite(folder / f"{k}.png", np.random.default_rng(k).integers(0, 255, (64, 96, 3), dtype=np.uint8))
        (folder / f"{k}.txt").write_text(f"scene {k}")
    trainer = make_trainer(tmp_path / "run", conditions=str(folder), max_steps=1, eval_conditions=1)
    logged = trainer.train_step()
    assert logged["step"] == 1 and 0 < logged["reward/total"] < 1 and logged["failed/brightness"] == 0.0
    trained = {p for step in range(4) for p in trainer.conditions([2 * step, 2 * step + 1]).prompts}
    assert trained == {"scene 0", "scene 1"} and trainer.conditions([0], held_out=True).prompts == ["scene 2"]
    with pytest.raises(ValueError, match="held out"):
        make_trainer(tmp_path / "small", conditions=str(folder), eval_conditions=3)


def test_mixgrpo_window_slides(tmp_path):
    trainer = make_trainer(tmp_path, num_sampling_steps=4, train_timestep_window=2, max_steps=3)
    windows = []
    for _ in range(3):
        windows.append(trainer.trained_timesteps().tolist())
        trainer.step += 1
    assert windows == [[0, 1], [1, 2], [2, 3]]


def test_guidance_steers_rollouts_and_keeps_the_first_ratio_at_one(tmp_path):
    plain = make_trainer(tmp_path / "plain", max_steps=1).train_step()
    guided_trainer = make_trainer(tmp_path / "guided", max_steps=1, guidance_scale=4.0, negative_prompt="blurry")
    policy, encoded = guided_trainer.policy, []
    encode = policy.encode

    def counting_encode(video):
        encoded.append(len(video))
        return encode(video)

    policy.encode = counting_encode
    guided = guided_trainer.train_step()
    assert encoded == [2]  # the conditioning images are VAE-encoded once, for both branches
    assert guided["ratio_min"] == guided["ratio_max"] == 1.0
    assert abs(guided["reward/total"] - plain["reward/total"]) > 1e-4  # the unconditional branch changed the samples


def test_astra_layout_trains_and_checkpoints_its_camera_experts(tmp_path):
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    trainer = make_trainer(tmp_path, camera_layout="astra", max_steps=1, save_steps=1)
    trainer.train()
    camera = load_file(tmp_path / "checkpoint-1" / "camera_modules.safetensors")
    assert {
        "transformer.sekai_processor.projector.0.weight",
        "transformer.blocks.0.moe.experts.0.0.weight",
        "transformer.blocks.1.projector.weight",
    } <= set(camera) and not any("lora_" in k for k in camera)
    assert camera["transformer.blocks.0.moe.experts.0.0.weight"].abs().max() > 0  # moved from its zero init
    assert not any(".experts.1." in k or ".experts.2." in k for k in camera)  # only the routed expert trains
    lora = load_file(tmp_path / "checkpoint-1" / "pytorch_lora_weights.safetensors")
    assert set(lora) == {f"transformer.{k}" for k in get_peft_model_state_dict(trainer.policy.transformer)}
    with pytest.raises(KeyError, match=f"{len(camera)} missing"):  # the camera modules' file left out
        trainer.load_trained_state_dict(lora)


def test_checkpoint_lora_loads_in_diffusers_and_reproduces_the_policy(tmp_path):
    """``WanPipeline.load_lora_weights(checkpoint)`` on the base DiT gives the trained policy's velocity (the
    camera modules, not trained here, leave it unchanged), at the trained scale alpha / r = 2."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    from policies.wan_camera import TRANSFORMER_CONFIGS

    trainer = make_trainer(
        tmp_path, train_camera_modules=False, learning_rate=5e-2, max_steps=1, lora_r=8, lora_alpha=16
    )
    trainer.train_step()
    checkpoint = trainer.save_checkpoint()
    assert not (checkpoint / "camera_modules.safetensors").exists()
    torch.manual_seed(trainer.config.seed)  # the policy's base weights: the same seed, the same first draws
    pipe = WanPipeline(
        tokenizer=None,
        text_encoder=None,
        transformer=WanTransformer3DModel(**TRANSFORMER_CONFIGS["tiny"]),
        vae=trainer.policy.vae,
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )
    pipe.load_lora_weights(checkpoint)
    latents, text = torch.randn(2, 4, 3, 4, 6), torch.randn(2, 7, 32)
    timestep = torch.tensor([[500.0], [300.0]]).expand(2, 3 * 2 * 3)  # per token
    with torch.no_grad():
        trained = trainer.policy.dit(latents, timestep, text, torch.randn(2, 3, 12))
        with trainer.policy.adapters_disabled():
            reference = trainer.policy.dit(latents, timestep, text, torch.randn(2, 3, 12))
        loaded = pipe.transformer(latents, timestep, text, return_dict=False)[0]
    assert (trained - reference).abs().max() > 0.1  # the LoRA moved
    torch.testing.assert_close(loaded, trained, rtol=1e-5, atol=1e-6)


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate's state is a process-wide singleton fixed by the first Accelerator: reset it around a test."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_bf16_mixed_precision_keeps_lora_in_float32_and_the_first_ratio_at_one(tmp_path, fresh_accelerate_state):
    import torch

    trainer = make_trainer(tmp_path, mixed_precision="bf16", max_steps=2)
    assert trainer.accelerator.mixed_precision == "bf16"
    history = [trainer.train_step() for _ in range(2)]
    dit = trainer.policy.dit
    assert all(p.dtype == torch.float32 for p in dit.parameters() if p.requires_grad)
    dtypes = {n: p.dtype for n, p in dit.named_parameters()}
    assert dtypes["transformer.blocks.0.attn1.to_q.base_layer.weight"] == torch.bfloat16
    assert dtypes["transformer.blocks.0.norm2.weight"] == dtypes["transformer.scale_shift_table"] == torch.float32
    assert all(p.dtype == torch.float32 for p in trainer.policy.vae.parameters())
    assert all(h["ratio_min"] == h["ratio_max"] == 1.0 for h in history)
    assert all(math.isfinite(h["loss"]) and math.isfinite(h["kl"]) for h in history) and history[1]["kl"] > 0


def test_micro_batches_accumulate_to_the_full_batch_update(tmp_path):
    import torch

    full = make_trainer(tmp_path / "full", max_steps=2)
    micro = make_trainer(tmp_path / "micro", max_steps=2, train_micro_batch_size=3)  # 8 rollouts: 3 + 3 + 2
    for _ in range(2):
        a, b = full.train_step(), micro.train_step()
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-4) and b["reward/total"] == pytest.approx(
            a["reward/total"], abs=1e-5
        )
        assert b["ratio_min"] == a["ratio_min"] == 1.0 and b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    for (name, p), q in zip(full.policy.named_parameters(), micro.policy.parameters()):
        torch.testing.assert_close(q, p, atol=1e-4, rtol=1e-3)  # Adam steps of ~1e-2 (lr) per step


DEEPSPEED_SCRIPT = """
import json, math, sys
sys.path[:0] = [sys.argv[2], sys.argv[2] + "/tests"]
import torch
from grpo_helpers import make_trainer

trainer = make_trainer(sys.argv[1], conditions_per_step=1, num_generations=2, num_sampling_steps=2, eval_conditions=0)
before = trainer.trained_state_dict()
hook = next(iter(trainer.policy.trained_parameters().values())).register_hook(lambda g: torch.full_like(g, math.nan))
nan_gradient = trainer.train_step()
hook.remove()
step_loss = trainer.step_loss
trainer.step_loss = lambda *args: (lambda loss, metrics: (loss + math.inf, metrics))(*step_loss(*args))
inf_loss = trainer.train_step()
trainer.step_loss = step_loss
unchanged = all(torch.equal(before[k], v) for k, v in trainer.trained_state_dict().items())
trained = trainer.train_step()
moved = any(not torch.equal(before[k], v) for k, v in trainer.trained_state_dict().items())
print(json.dumps({"skipped": [nan_gradient["skipped_steps"], inf_loss["skipped_steps"], trained["skipped_steps"]],
                  "unchanged": unchanged, "moved": moved, "lr_steps": trainer.lr_scheduler.last_epoch}))
"""


def test_deepspeed_skips_non_finite_steps_too(tmp_path):
    """Under ZeRO the engine steps: its own overflow check skips a NaN gradient, and the trainer's NaN gradients
    make it skip a step whose loss alone is not finite (``tests/test_faults.py`` checks the other backends'
    skipping in one process; this launch takes minutes)."""
    script = tmp_path / "deepspeed_skip.py"
    script.write_text(DEEPSPEED_SCRIPT)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    config = Path(__file__).parents[1] / "recipes" / "configs" / "accelerate_deepspeed_zero2.yaml"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--num_processes"]
    command += ["1", "--mixed_precision", "no", str(script), str(tmp_path / "run"), str(Path(__file__).parents[1])]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"skipped": [1, 2, 2], "unchanged": True, "moved": True, "lr_steps": 1}
