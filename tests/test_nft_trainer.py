import pytest
import torch
from grpo_helpers import Brightness, make_online_trainer, step_gradients

from lyra_rl.algorithms.nft import nft_loss
from lyra_rl.training import NFTConfig, NFTTrainer

#: A cheaper run for the tests of the mechanics: one condition per step, groups of 2, 2 ODE steps.
SMALL = dict(conditions_per_step=1, num_generations=2, num_sampling_steps=2)


class Darkness(Brightness):
    """Minus the mean brightness: the brightness reward's advantages with the opposite sign."""

    name = "darkness"
    floor = -1.0

    def score_video(self, video, cam_from_world, intrinsics, *, image, cache):
        return -float(video.mean()), {}


def make_nft_trainer(output_dir, **overrides) -> NFTTrainer:
    """The tiny policy (LoRA r8 and camera modules), the toy decoder and the brightness reward; 2 conditions per
    step in groups of 4, 4 ODE steps."""
    return make_online_trainer(NFTTrainer, NFTConfig, output_dir, **{"eval_conditions": 0, **overrides})


def test_nft_first_loss_by_hand_and_the_held_out_reward_rises(tmp_path, monkeypatch):
    """On the first step the trained policy is the sampling one (``v_theta = v_old``): the loss is the adaptive
    x0 error of ``v_old`` times ``advantage_clip / nft_beta``, whatever the optimality, and the optimality is the
    group-normalised reward clipped and mapped to [0, 1]. The held-out brightness (fixed noise) rises step by
    step (2-step ODE rollouts; measured with seed 0: +0.007, +0.017, +0.026, +0.038 over 4 steps; seeds 1 and 2:
    +0.006 and +0.032 after 4)."""
    from lyra_rl.training import nft

    losses, rewards = [], []
    monkeypatch.setattr(nft, "nft_loss", lambda *args: losses.append(args) or nft_loss(*args))
    advantages = nft.local_advantages
    monkeypatch.setattr(nft, "local_advantages", lambda *args: rewards.append(args[1]) or advantages(*args))
    trainer = make_nft_trainer(tmp_path, num_sampling_steps=2, eval_conditions=2, eval_sampling_steps=4)
    before = trainer.evaluate()["eval/reward/total"]
    history, gains = [], []
    for _ in range(4):
        history.append(trainer.train_step())
        gains.append(trainer.evaluate()["eval/reward/total"] - before)
    assert len(losses) == 4  # one micro-batch per step
    velocity, old, x_t, x0, t, r, beta, adaptive = losses[0]
    assert (beta, adaptive) == (1.0, True) and x0.shape == (8, *trainer.latent_shape) and ((0 < t) & (t < 1)).all()
    assert torch.equal(velocity.detach(), old) and history[0]["velocity_shift"] == 0.0
    groups = rewards[0].view(2, 4)  # two conditions, four rollouts each
    by_hand = (groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + 1e-4)
    torch.testing.assert_close(r, ((by_hand.clamp(-5, 5) / 5 + 1) / 2).flatten())
    error = x_t - t.view(-1, 1, 1, 1, 1) * old - x0
    loss = 5.0 * (error.square().flatten(1).mean(1) / error.abs().flatten(1).mean(1)).mean()
    assert history[0]["loss"] == pytest.approx(float(loss), rel=1e-5)
    assert history[0]["optimality_min"] < 0.5 < history[0]["optimality_max"]
    assert 0 < gains[0] < gains[1] < gains[-1] and gains[-1] > 0.02, gains
    assert {"loss", "velocity_shift", "reward/brightness", "grad_norm", "time/update"} <= set(history[0])


def test_the_opposite_reward_moves_the_weights_the_opposite_way(tmp_path):
    """Same rollouts, rewards of opposite sign: opposite advantages, optimality ``1 - r``, opposite gradients, so
    the first (Adam) update is the same step in the opposite direction."""
    bright, dark = make_nft_trainer(tmp_path / "bright", **SMALL), make_nft_trainer(tmp_path / "dark", **SMALL)
    dark.reward_set.rewards[0] = Darkness()
    start = bright.trained_state_dict()
    bright.train_step(), dark.train_step()
    assert torch.equal(dark.last_advantages, -bright.last_advantages) and bright.last_advantages.abs().max() > 0
    up, down = bright.trained_state_dict(), dark.trained_state_dict()
    moved = [key for key in start if not torch.equal(up[key], start[key])]
    assert moved  # the LoRA and the camera modules
    for key in moved:
        torch.testing.assert_close(up[key] - start[key], start[key] - down[key], rtol=1e-3, atol=1e-7)


def test_zero_advantages_leave_the_policy_unchanged(tmp_path):
    """A reward every rollout of a group shares gives optimality 1/2: at ``v_theta = v_old`` the positive and
    negative terms' gradients cancel exactly, so nothing moves (no weight decay)."""
    trainer = make_nft_trainer(tmp_path, **SMALL)
    trainer.reward_set.rewards[0].score_video = lambda *args, **kwargs: (0.5, {})
    before = trainer.trained_state_dict()
    for _ in range(2):
        logged = trainer.train_step()
    after = trainer.trained_state_dict()
    assert logged["optimality_min"] == logged["optimality_max"] == 0.5 and logged["grad_norm"] == 0.0
    assert all(torch.equal(before[key], after[key]) for key in before)


def test_resume_continues_with_the_same_numbers(tmp_path):
    """With two inner epochs against the same ``v_old`` and two noised copies of each rollout."""
    settings = dict(max_steps=2, save_steps=1, num_iterations=2, timesteps_per_sample=2, **SMALL)
    full = make_nft_trainer(tmp_path / "full", **settings).train()
    interrupted = make_nft_trainer(tmp_path / "resumed", **settings)
    interrupted.train_step()
    interrupted.save_checkpoint()
    resumed = make_nft_trainer(tmp_path / "resumed", resume=True, **settings).train()
    assert [h["step"] for h in resumed] == [1, 2]
    for name in ("loss", "velocity_shift", "reward/total", "grad_norm", "learning_rate"):
        assert resumed[-1][name] == pytest.approx(full[-1][name], rel=1e-6, abs=1e-12), name
    assert full[0]["velocity_shift"] > 0  # the second epoch's velocity has moved from v_old
    assert (tmp_path / "full" / "checkpoint-2" / "pytorch_lora_weights.safetensors").is_file()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"num_generations": 1}, "num_generations"),
        ({"nft_beta": 0.0}, "nft_beta"),
        ({"timesteps_per_sample": 0}, "timesteps_per_sample"),
        ({"scale_rewards": "std"}, "scale_rewards"),
    ],
)
def test_config_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        NFTConfig(**overrides)


def test_micro_batches_give_the_whole_batch_gradient(tmp_path):
    """Groups of 4, two noised copies of each rollout, micro-batches of 3 samples."""
    settings = dict(SMALL, num_generations=4, timesteps_per_sample=2)
    whole = step_gradients(make_nft_trainer(tmp_path / "whole", **settings))
    parts = step_gradients(make_nft_trainer(tmp_path / "parts", train_micro_batch_size=3, **settings))
    assert max(float(g.abs().max()) for g in whole) > 0
    for a, b in zip(whole, parts, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)  # the largest are about 1e-2
