"""GRPO fine-tuning of the camera-conditioned Wan policy's LoRA adapters, scored by the 3D reward suite.

    accelerate launch recipes/grpo.py --config recipes/configs/grpo_tiny.yaml [--max_steps 50 ...]
    python recipes/grpo.py --config recipes/configs/grpo_tiny.yaml       # one process
"""

from __future__ import annotations

import torch
from trl import TrlParser

from lyra_rl.reward import RewardSet
from lyra_rl.trainer import GRPOConfig, GRPOTrainer
from lyra_rl.zero import make_accelerator
from policies.loading import load_pretrained
from policies.prompts import load_prompt_embeddings
from policies.wan_camera import WanCameraPolicy

WEIGHT_DTYPES = {"no": torch.float32, "bf16": torch.bfloat16}


def main(config: GRPOConfig) -> list[dict[str, float]]:
    accelerator = make_accelerator(config.mixed_precision)
    policy = WanCameraPolicy.from_config(config.policy, config.seed, config.camera_layout, config.num_experts, config.expert)
    load_pretrained(policy, config.wan_model_path, config.dit_path, text_encoder=config.prompt_embeddings is None)
    if config.prompt_embeddings is not None:
        policy.add_prompt_embeddings(load_prompt_embeddings(config.prompt_embeddings))
    policy.add_lora(config.lora_r, config.lora_alpha, config.lora_target_modules, config.train_camera_modules)
    if config.gradient_checkpointing:
        policy.dit.enable_gradient_checkpointing()
    if accelerator.mixed_precision not in WEIGHT_DTYPES:
        raise ValueError(f"mixed precision {accelerator.mixed_precision!r} is not supported; use 'no' or 'bf16'")
    policy.place(accelerator.device, WEIGHT_DTYPES[accelerator.mixed_precision], config.offload_vae)
    reward_set = RewardSet.from_names(config.rewards, config.reward_weights, config.reward_kwargs, config.reward_workers)
    with reward_set:
        history = GRPOTrainer(config, policy, reward_set, accelerator).train()
    if accelerator.is_main_process:
        report(config, history)
    accelerator.end_training()  # destroys the process group (gloo can abort at exit otherwise)
    return history


def report(config: GRPOConfig, history: list[dict[str, float]]) -> None:
    """Says where the run's outputs are, and which rewards could not score a single rollout."""
    if not history:
        return
    outputs = [f"checkpoint-{history[-1]['step']}/ (the LoRA as diffusers loads it, trained camera modules, training state)"]
    outputs += ["samples/*.mp4"] if config.eval_conditions else []
    print(f"Wrote {config.output_dir}/: {', '.join(outputs + ['logs/ (tensorboard --logdir)', 'reward_curve.png'])}")
    for name in [k.removeprefix("failed/") for k in history[-1] if k.startswith("failed/")]:
        if all(h[f"failed/{name}"] == 1.0 for h in history):
            print(f"Note: {name} could not score any rollout (its floor every step, so no advantage to learn from): "
                  "the videos have no geometry it can estimate, as with the randomly initialised tiny policy")


if __name__ == "__main__":
    (config,) = TrlParser((GRPOConfig,)).parse_args_and_config()
    main(config)
