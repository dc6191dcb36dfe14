"""Action-conditioned SFT of the camera-conditioned Wan policy: flow matching on procedural videos rendered
along their commanded cameras (whole DiT, LoRA or camera modules: whatever the policy config trains);
``rewards`` (none: ``rewards: []``) score the held-out samples.

    accelerate launch recipes/sft.py --config recipes/configs/sft_tiny.yaml [--max_steps 500 --resume true ...]
    python recipes/sft.py --config recipes/configs/sft_tiny.yaml       # one process
"""

from lyra_rl.training import SFTConfig, SFTTrainer
from policies.training import main

if __name__ == "__main__":
    main(SFTTrainer, SFTConfig)
