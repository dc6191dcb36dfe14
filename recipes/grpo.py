"""GRPO fine-tuning of the camera-conditioned Wan policy's LoRA adapters, scored by the 3D reward suite.

accelerate launch recipes/grpo.py --config recipes/configs/grpo_tiny.yaml [--max_steps 50 ...]
python recipes/grpo.py --config recipes/configs/grpo_tiny.yaml       # one process
"""

from lyra_rl.training import GRPOConfig, GRPOTrainer
from policies.training import main

if __name__ == "__main__":
    main(GRPOTrainer, GRPOConfig)
