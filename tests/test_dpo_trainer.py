import math

import pytest
import torch
from grpo_helpers import make_online_trainer, step_gradients

from lyra_rl.algorithms.sft import noised_sample
from lyra_rl.training import DPOConfig, DPOTrainer

#: A cheaper run for the tests of the mechanics: one condition per step, groups of 2, 2 ODE steps.
SMALL = dict(conditions_per_step=1, num_generations=2, num_sampling_steps=2)


def make_dpo_trainer(output_dir, **overrides) -> DPOTrainer:
    """The tiny policy (LoRA r8 and camera modules), the toy decoder and the brightness reward; 2 conditions per
    step in groups of 4, 4 ODE steps."""
    return make_online_trainer(DPOTrainer, DPOConfig, output_dir, **{"eval_conditions": 0, **overrides})


def test_dpo_starts_at_log_2_pairs_on_shared_noise_and_raises_the_held_out_reward(tmp_path, monkeypatch):
    """The LoRA starts at zero, so the policy is its reference: the first loss is log 2, every margin 0. Winner
    and loser are noised with the same t and eps, and the policy and its reference see the same noised pair.
    The held-out brightness (fixed noise) rises step by step (2-step ODE rollouts; measured with seed 0: +0.008,
    +0.019, +0.027, +0.037 over 4 steps; seeds 1 and 2: +0.020 and +0.021 after 4)."""
    from lyra_rl.training import dpo

    noised, passes = [], []
    monkeypatch.setattr(dpo, "noised_sample", lambda x0, eps, t: noised.append((eps, t)) or noised_sample(x0, eps, t))
    trainer = make_dpo_trainer(tmp_path, num_sampling_steps=2, eval_conditions=2, eval_sampling_steps=4)
    velocity = trainer.policy.velocity
    trainer.policy.velocity = lambda x, t, cond: passes.append(x) or velocity(x, t, cond)
    before = trainer.evaluate()["eval/reward/total"]
    history, gains = [], []
    for _ in range(4):
        passes.clear()
        history.append(trainer.train_step())
        if len(history) == 1:
            policy_pass, reference_pass = passes[-2:]  # the update's one micro-batch: winners, then losers
        gains.append(trainer.evaluate()["eval/reward/total"] - before)
    first = history[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-7) and first["margin"] == 0.0
    assert first["pairs"] == 2 and first["reward_margin"] > 0  # best against worst of each of the two groups
    eps, t = noised[0]
    assert len(eps) == 4 and torch.equal(eps[:2], eps[2:]) and torch.equal(t[:2], t[2:])
    assert not torch.equal(eps[0], eps[1])
    assert torch.equal(policy_pass, reference_pass) and not torch.allclose(policy_pass[:2], policy_pass[2:])
    assert history[1]["margin"] > 0 and history[1]["implicit_accuracy"] > 0.5 and history[1]["loss"] < math.log(2)
    assert 0 < gains[0] < gains[1] < gains[-1] and gains[-1] > 0.02, gains
    assert {"loss", "margin", "implicit_accuracy", "reward_margin", "pairs", "reward/brightness", "grad_norm"} <= set(
        first
    )


def test_the_pair_noise_depends_on_the_pair_and_the_step_only(tmp_path):
    trainer = make_dpo_trainer(tmp_path)
    ids = torch.tensor([5, 5, 5, 5, 6, 6, 6, 6])
    noise, t = trainer.pair_noise_and_timesteps(ids, torch.tensor([[1, 2], [4, 7]]), 4)
    alone, t_alone = trainer.pair_noise_and_timesteps(ids[4:], torch.tensor([[0, 3]]), 4)  # the same pair elsewhere
    assert torch.equal(noise[1], alone[0]) and t[1] == t_alone[0] and not torch.equal(noise[0], noise[1])
    trainer.step += 1
    assert not torch.equal(trainer.pair_noise_and_timesteps(ids, torch.tensor([[1, 2]]), 4)[0][0], noise[0])


def test_pairs_without_a_margin_leave_the_policy_unchanged(tmp_path):
    """A reward every rollout shares (as the floor of a reward that fails on every video) keeps no pair: the
    loss is not defined (NaN), the weights do not move and the step still counts."""
    trainer = make_dpo_trainer(tmp_path, pair_selection="all", **SMALL)
    trainer.reward_set.rewards[0].score_video = lambda *args, **kwargs: (0.5, {})
    before = trainer.trained_state_dict()
    logged = trainer.train_step()
    after = trainer.trained_state_dict()
    assert logged["pairs"] == 0 and math.isnan(logged["loss"]) and logged["grad_norm"] == 0.0
    assert all(torch.equal(before[key], after[key]) for key in before)


def test_resume_continues_with_the_same_numbers(tmp_path):
    full = make_dpo_trainer(tmp_path / "full", max_steps=2, save_steps=1, **SMALL).train()
    interrupted = make_dpo_trainer(tmp_path / "resumed", max_steps=2, save_steps=1, **SMALL)
    interrupted.train_step()
    interrupted.save_checkpoint()
    resumed = make_dpo_trainer(tmp_path / "resumed", max_steps=2, save_steps=1, resume=True, **SMALL).train()
    assert [h["step"] for h in resumed] == [1, 2]
    for name in ("loss", "margin", "reward/total", "grad_norm"):
        assert resumed[-1][name] == pytest.approx(full[-1][name], rel=1e-6, abs=1e-9), name
    assert {p.name for p in (tmp_path / "full" / "checkpoint-2").iterdir()} == {
        "pytorch_lora_weights.safetensors",
        "camera_modules.safetensors",
        "trainer_state.pt",
    }
    assert (tmp_path / "full" / "reward_curve.png").is_file()


def test_dpo_needs_a_reference(tmp_path):
    with pytest.raises(ValueError, match="no reference model"):
        make_dpo_trainer(tmp_path, lora_r=0, train_transformer=True)  # the whole DiT trained: nothing to compare with


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"num_generations": 1}, "num_generations"),
        ({"pair_selection": "random"}, "pair_selection"),
        ({"beta": 0.0}, "beta"),
    ],
)
def test_config_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        DPOConfig(**overrides)


def test_micro_batches_give_the_whole_batch_gradient(tmp_path):
    """Every two rollouts of a group of 4 (6 pairs), one pair (two samples) per micro-batch."""
    settings = dict(SMALL, num_generations=4, pair_selection="all")
    whole = step_gradients(make_dpo_trainer(tmp_path / "whole", **settings))
    parts = step_gradients(make_dpo_trainer(tmp_path / "parts", train_micro_batch_size=2, **settings))
    assert max(float(g.abs().max()) for g in whole) > 0
    for a, b in zip(whole, parts, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def write_pairs(folder, num_pairs: int = 2, num_frames: int = 9):
    """A manifest of preference pairs: each winner the true render of a procedural scene along its preset, each
    loser its first frame frozen (the video a 3D reward ranks last)."""
    import json

    import imageio.v3 as iio
    import numpy as np

    from lyra_rl.data.conditions import procedural_conditions
    from lyra_rl.video import write_video

    batch = procedural_conditions(3, list(range(num_pairs)), num_frames, 32, 48, videos=True)
    lines = []
    for k in range(num_pairs):
        iio.imwrite(
            folder / f"image-{k}.png", (batch.images[k].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        )
        write_video(folder / f"winner-{k}.mp4", batch.videos[k])
        write_video(folder / f"loser-{k}.mp4", batch.videos[k][:1].expand_as(batch.videos[k]))
        direction = ["left", "forward"][k % 2]
        lines.append(
            {"image": f"image-{k}.png", "prompt": batch.prompts[k], "direction": direction,
             "winner": f"winner-{k}.mp4", "loser": f"loser-{k}.mp4"}
        )  # fmt: skip
    manifest = folder / "pairs.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def test_offline_dpo_learns_the_manifest_preferences(tmp_path):
    """From a manifest the test writes: no rollouts and no rewards; each video encoded once; the first loss is
    log 2; after training, on noise and times it never trained on, the policy prefers every winner to its
    loser relative to the reference (a positive implicit margin)."""
    from lyra_rl.algorithms.dpo import flow_dpo_loss, velocity_errors
    from lyra_rl.data.preference_pairs import pair_batch, read_preference_pairs

    manifest = write_pairs(tmp_path)
    trainer = make_online_trainer(
        DPOTrainer, DPOConfig, tmp_path / "run", pairs=str(manifest), conditions_per_step=1, eval_conditions=0,
        learning_rate=3e-3,
    )  # fmt: skip
    encoded = []
    encode = trainer.policy.generated_latents
    trainer.policy.generated_latents = lambda videos: encoded.append(len(videos)) or encode(videos)
    history = [trainer.train_step() for _ in range(8)]
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-7) and history[0]["pairs"] == 1
    assert "reward/total" not in history[0] and "reward_margin" not in history[0]
    assert sum(encoded) == 4  # 2 pairs x (winner, loser), over 8 steps
    assert history[-1]["loss"] < math.log(2)
    pairs = read_preference_pairs(manifest, 9)
    batch, winners, losers = pair_batch(pairs, [0, 1], 9, 32, 48)
    samples = torch.cat([trainer.pair_latents(winners), trainer.pair_latents(losers)])
    cond, _ = trainer.policy_conditions(batch)
    cond = cond[torch.tensor([0, 1, 0, 1])]
    generator = torch.Generator().manual_seed(1234)
    for _ in range(4):  # fresh noise and times
        eps = torch.randn(2, *samples.shape[1:], generator=generator).repeat(2, 1, 1, 1, 1)
        t = torch.rand(2, generator=generator).repeat(2) * 0.8 + 0.1
        x_t, target = noised_sample(samples, eps, t)
        with torch.no_grad():
            errors = velocity_errors(trainer.policy.velocity(x_t, t, cond), target)
            with trainer.policy.adapters_disabled():
                reference = velocity_errors(trainer.policy.velocity(x_t, t, cond), target)
        _, margins = flow_dpo_loss(errors[:2], errors[2:], reference[:2], reference[2:], 100.0, torch.ones(2))
        assert (margins > 0).all(), margins


def test_bad_pairs_are_named_before_anything_is_built(tmp_path):
    from lyra_rl.data.preference_pairs import read_preference_pairs

    manifest = write_pairs(tmp_path)
    lines = manifest.read_text().splitlines()
    manifest.write_text(lines[0] + "\n" + lines[1].replace("loser-1.mp4", "missing.mp4") + "\n")
    with pytest.raises(ValueError, match=r"pairs.jsonl:2: loser video .*missing.mp4 does not exist"):
        read_preference_pairs(manifest, 9)
    manifest.write_text(lines[0] + "\n")
    with pytest.raises(ValueError, match=r"pairs.jsonl:1: winner video .* has 9 frames; the run's num_frames is 13"):
        read_preference_pairs(manifest, 13)
    with pytest.raises(ValueError, match="pairs.jsonl:1: .* has 9 frames"):
        make_dpo_trainer(tmp_path / "run", pairs=str(manifest), num_frames=13)
