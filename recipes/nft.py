"""DiffusionNFT of the camera-conditioned Wan policy (LoRA and/or camera modules): ODE rollouts scored by the 3D
reward suite, trained on the forward (noising) process with the implicit positive and negative policies.

    accelerate launch recipes/nft.py --config recipes/configs/nft_tiny.yaml [--max_steps 50 --nft_beta 1 ...]
    python recipes/nft.py --config recipes/configs/nft_tiny.yaml       # one process
"""

from lyra_rl.training import NFTConfig, NFTTrainer
from policies.training import main

if __name__ == "__main__":
    main(NFTTrainer, NFTConfig)
