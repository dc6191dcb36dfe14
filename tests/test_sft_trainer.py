import torch

from lyra_rl.algorithms.sft import flow_matching_loss, noised_sample
from lyra_rl.training import SFTConfig, SFTTrainer, make_accelerator
from policies import PolicyConfig, build_policy


def make_sft_trainer(output_dir, **overrides) -> SFTTrainer:
    """The tiny policy (LoRA r8 and camera modules trained), procedural videos of 9x32x48, no rewards."""
    config = SFTConfig(
        **{
            "output_dir": str(output_dir),
            "learning_rate": 1e-2,
            "conditions_per_step": 4,
            "eval_conditions": 0,
            **overrides,
        }
    )
    accelerator = make_accelerator("no", cpu=True)
    return SFTTrainer(config, build_policy(PolicyConfig(), config.seed, accelerator), None, accelerator)


def held_out_loss(trainer: SFTTrainer) -> float:
    """The flow-matching loss on four held-out clips at fixed noise and times."""
    batch = trainer.conditions([0, 1, 2, 3], held_out=True)
    cond, _ = trainer.policy_conditions(batch)
    x0 = trainer.policy.generated_latents(batch.videos)
    x_t, target = noised_sample(
        x0, torch.randn(x0.shape, generator=torch.Generator().manual_seed(9)), torch.tensor([0.2, 0.4, 0.6, 0.8])
    )
    with torch.no_grad():
        return float(
            flow_matching_loss(trainer.policy.velocity(x_t, torch.tensor([0.2, 0.4, 0.6, 0.8]), cond), target)
        )


def test_sft_lowers_the_held_out_flow_matching_loss(tmp_path):
    """Measured: 1.56 before; after 8 steps 1.56 at learning rate 0, about 1.2 at 1e-2 (1.03 after 20)."""
    trained, frozen = make_sft_trainer(tmp_path / "trained"), make_sft_trainer(tmp_path / "frozen", learning_rate=0.0)
    before = held_out_loss(trained)
    for _ in range(8):
        trained.train_step(), frozen.train_step()
    assert held_out_loss(frozen) == before
    assert held_out_loss(trained) < 0.85 * before


def test_sft_targets_come_from_the_true_videos_and_global_indices(tmp_path):
    trainer = make_sft_trainer(tmp_path)
    batch = trainer.conditions([5, 6])
    assert batch.videos.shape == (2, 9, 3, 32, 48) and torch.equal(batch.videos[:, 0], batch.images)
    noise, t = trainer.noise_and_timesteps(torch.tensor([5, 6]))
    alone, t_alone = trainer.noise_and_timesteps(torch.tensor([6]))
    assert noise.shape == (2, *trainer.latent_shape) and torch.equal(noise[1], alone[0]) and t[1] == t_alone[0]
    assert ((0 < t) & (t < 1)).all()


def test_sft_runs_on_the_shared_machinery(tmp_path, capsys):
    """Checkpoints, held-out samples, TensorBoard and the progress bar come from the trainer every algorithm shares."""
    trainer = make_sft_trainer(tmp_path, max_steps=2, save_steps=2, eval_conditions=1, eval_sampling_steps=2)
    history = trainer.train()
    assert [h["step"] for h in history] == [1, 2] and all(h["loss"] > 0 for h in history)
    assert "SFT" in capsys.readouterr().err
    assert {p.name for p in (tmp_path / "checkpoint-2").iterdir()} == {
        "pytorch_lora_weights.safetensors",
        "camera_modules.safetensors",
        "trainer_state.pt",
    }
    assert (tmp_path / "samples" / "step-2-0.mp4").is_file() and any((tmp_path / "logs").iterdir())
    assert (tmp_path / "loss_curve.png").is_file()
    assert history[-1]["eval/loss"] > 0 and trainer.evaluate()["eval/loss"] == history[-1]["eval/loss"]  # fixed noise
    resumed = make_sft_trainer(tmp_path, max_steps=2, resume=True)
    assert resumed.train() == history  # nothing left to do: the history comes back from the checkpoint
