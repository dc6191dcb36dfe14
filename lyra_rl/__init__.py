"""lyra-rl: 3D-aware reinforcement fine-tuning of camera-controlled video world models."""

__version__ = "0.1.0"
