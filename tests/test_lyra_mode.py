"""Lyra's training mode in every trainer: no LoRA, the DiT frozen, only the camera modules trained; the reference
(where an algorithm has one) is the camera modules as they were when training started."""

import math

import pytest
import torch
from grpo_helpers import make_online_trainer

from lyra_rl.training import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, NFTConfig, NFTTrainer

SMALL = dict(conditions_per_step=1, num_generations=2, num_sampling_steps=2, eval_conditions=0)


@pytest.mark.parametrize(
    "trainer_class, config_class, overrides",
    [
        (GRPOTrainer, GRPOConfig, dict(beta=0.0, epsilon=0.2, train_timestep_fraction=1.0)),  # Lyra's: no KL
        (GRPOTrainer, GRPOConfig, dict(beta=0.05, epsilon=0.2, train_timestep_fraction=1.0)),
        (DPOTrainer, DPOConfig, {}),
        (NFTTrainer, NFTConfig, {}),
    ],
)
def test_only_the_camera_modules_train_and_the_reference_is_their_start(
    tmp_path, trainer_class, config_class, overrides
):
    trainer = make_online_trainer(trainer_class, config_class, tmp_path, lora_r=0, **SMALL, **overrides)
    policy = trainer.policy
    trained = policy.trained_parameters()
    assert trained and all(".cam_encoder." in k or ".projector." in k for k in trained)
    frozen = {k: v.detach().clone() for k, v in policy.dit.named_parameters() if not v.requires_grad}
    start = {k: v.detach().clone() for k, v in trained.items()}
    latents = torch.randn(
        1,
        *policy.latent_shape(trainer.config.num_frames, trainer.config.height, trainer.config.width),
        generator=torch.Generator().manual_seed(0),
    )
    batch = trainer.condition_source(trainer.config)([0])
    cond, _ = trainer.policy_conditions(batch)
    with torch.no_grad():
        before = policy.velocity(latents, torch.tensor([0.5]), cond)
    history = [trainer.train_step() for _ in range(2)]
    assert max((trained[k] - start[k]).abs().max() for k in start) > 1e-4  # the camera modules moved
    assert all(torch.equal(v, frozen[k]) for k, v in policy.dit.named_parameters() if not v.requires_grad)
    with torch.no_grad(), policy.adapters_disabled():
        reference = policy.velocity(latents, torch.tensor([0.5]), cond)
    after = policy.velocity(latents, torch.tensor([0.5]), cond).detach()  # the trained weights are back
    assert torch.equal(reference, before) and not torch.allclose(after, before)
    if trainer_class is DPOTrainer:
        assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-7)  # the policy starts as its reference
    if "kl" in history[0]:
        assert history[0]["kl"] == pytest.approx(0.0, abs=1e-9)


def test_sft_trains_the_camera_modules_alone(tmp_path):
    """SFT in Lyra's mode (no reference needed): the camera modules learn, the DiT stays as it was."""
    from lyra_rl.training import SFTConfig, SFTTrainer, make_accelerator
    from policies import PolicyConfig, build_policy

    config = SFTConfig(output_dir=str(tmp_path), learning_rate=1e-2, conditions_per_step=2, eval_conditions=0)
    accelerator = make_accelerator("no", cpu=True)
    policy = build_policy(PolicyConfig(lora_r=0), config.seed, accelerator)
    trainer = SFTTrainer(config, policy, None, accelerator)
    frozen = {k: v.detach().clone() for k, v in policy.dit.named_parameters() if not v.requires_grad}
    start = {k: v.detach().clone() for k, v in policy.trained_parameters().items()}
    trainer.train_step()
    trained = policy.trained_parameters()
    assert all(".cam_encoder." in k or ".projector." in k for k in trained)
    assert max((trained[k] - start[k]).abs().max() for k in start) > 1e-4
    assert all(torch.equal(v, frozen[k]) for k, v in policy.dit.named_parameters() if not v.requires_grad)
