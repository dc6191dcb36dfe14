"""GRPO fine-tuning of the camera-conditioned Wan policy's LoRA adapters, scored by the 3D reward suite.

    accelerate launch recipes/grpo.py --config recipes/configs/grpo_tiny.yaml [--max_steps 50 ...]
    python recipes/grpo.py --config recipes/configs/grpo_tiny.yaml       # one process
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from trl import TrlParser

from lyra_rl.reward import RewardSet
from lyra_rl.trainer import GRPOConfig, GRPOTrainer
from policies.loading import load_pretrained
from policies.wan_camera import WanCameraPolicy


def main(config: GRPOConfig) -> list[dict[str, float]]:
    accelerator = Accelerator(cpu=not torch.cuda.is_available())  # cpu=True makes a real gloo group on CPU
    policy = WanCameraPolicy.from_config(config.policy, config.seed, config.camera_layout, config.num_experts, config.expert)
    load_pretrained(policy, config.wan_model_path, config.dit_path)
    policy.add_lora(config.lora_r, config.lora_alpha, config.lora_target_modules, config.train_camera_modules)
    policy.to(accelerator.device)
    reward_set = RewardSet.from_names(config.rewards, config.reward_weights, config.reward_kwargs, config.reward_workers)
    with reward_set:
        history = GRPOTrainer(config, policy, reward_set, accelerator).train()
    accelerator.end_training()  # destroys the process group (gloo can abort at exit otherwise)
    return history


if __name__ == "__main__":
    (config,) = TrlParser((GRPOConfig,)).parse_args_and_config()
    main(config)
