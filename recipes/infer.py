"""Generate a video with the camera-conditioned Wan policy: the seed's ``infer_demo.py`` flags, plus LoRA adapters.

python recipes/infer.py --dit_path ../models/Astra/checkpoints/diffusion_pytorch_model.ckpt \
    --wan_model_path ../models/Wan-AI/Wan2.1-T2V-1.3B --condition_image garden_1.png \
    --direction forward_left --prompt "A sunlit European street ..." --output_path output.mp4
python recipes/infer.py --config embedded --condition_image room.png --direction left --lora outputs/grpo_embedded
"""

from policies.inference import main

if __name__ == "__main__":
    main()
