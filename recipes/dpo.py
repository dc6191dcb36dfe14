"""Online Flow-DPO of the camera-conditioned Wan policy's LoRA adapters: ODE rollouts ranked by the 3D reward suite
into (winner, loser) pairs, the adapter-disabled policy as the reference.

    accelerate launch recipes/dpo.py --config recipes/configs/dpo_tiny.yaml [--max_steps 50 --beta 100 ...]
    python recipes/dpo.py --config recipes/configs/dpo_tiny.yaml       # one process
"""

from lyra_rl.training import DPOConfig, DPOTrainer
from policies.training import main

if __name__ == "__main__":
    main(DPOTrainer, DPOConfig)
