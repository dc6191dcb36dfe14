"""Perceptual fidelity to the conditioning image and temporal flicker (LPIPS)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import lpips
import torch
import torch.nn.functional as F
from torch import Tensor

from lyra_rl.reward import VideoReward

logger = logging.getLogger(__name__)

# torchvision's file names for the ImageNet backbones LPIPS builds on (torch hub cache).
BACKBONE_FILES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}


def find_backbone_weights(net: str, path: str | None = None) -> Path | None:
    """The ImageNet backbone weights: ``path`` if given, else torchvision's file in the torch hub cache."""
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"LPIPS backbone weights not found at {path}")
        return Path(path)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / BACKBONE_FILES[net]
    return cached if cached.is_file() else None


def build_lpips(
    net: str = "alex", backbone_weights: str | None = None, allow_random_backbone: bool = False
) -> lpips.LPIPS:
    """LPIPS with its linear heads (shipped in the ``lpips`` package) and a locally loaded backbone.

    The ImageNet backbone cannot be downloaded here: it is read from ``backbone_weights`` or the torch hub
    cache. Without it, ``allow_random_backbone=True`` (tests only) keeps a randomly initialised backbone,
    which makes the distances meaningless as perceptual judgements; otherwise this raises.
    """
    if net not in BACKBONE_FILES:
        raise ValueError(f"net must be one of {sorted(BACKBONE_FILES)}, got {net!r}")
    weights = find_backbone_weights(net, backbone_weights)
    if weights is None and not allow_random_backbone:
        raise FileNotFoundError(
            f"LPIPS needs torchvision's ImageNet '{net}' backbone ({BACKBONE_FILES[net]}), which cannot be "
            f"downloaded here: pass backbone_weights=PATH or place it in {Path(torch.hub.get_dir()) / 'checkpoints'}"
        )
    model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False).eval()
    if weights is None:
        logger.warning("LPIPS runs with a RANDOM %s backbone: perceptual scores are not meaningful", net)
    else:
        features = torch.load(weights, map_location="cpu", weights_only=True)
        for slice_name, block in model.net.named_children():
            for index, layer in block.named_children():
                for param_name, param in layer.named_parameters(recurse=False):
                    param.data.copy_(features[f"features.{index}.{param_name}"])
    model.requires_grad_(False)
    return model


class PerceptualReward(VideoReward):
    """``1 - LPIPS(frame 0, conditioning image) - flicker_weight * flicker``.

    ``flicker`` is the mean absolute change of the LPIPS distance between consecutive frames: a camera
    that moves smoothly changes the picture at a steady rate, while flicker, pops and cuts make the
    distance jump. Without a conditioning image the fidelity term is left out.

    Range ``(-inf, 1]`` (in practice ``[-1, 1]``); floor ``-1``. Blind to geometry: a rigid video along the
    wrong path scores as well as the right one.
    """

    name = "perceptual"
    floor = -1.0

    def __init__(
        self,
        net: str = "alex",
        backbone_weights: str | None = None,
        allow_random_backbone: bool = False,
        flicker_weight: float = 1.0,
    ):
        self.flicker_weight = flicker_weight
        self.model = build_lpips(net, backbone_weights, allow_random_backbone)

    @torch.no_grad()
    def score_video(self, video: Tensor, cam_from_world: Tensor, intrinsics: Tensor, *, image, cache):
        frames = video.float() * 2 - 1
        steps = self.model(frames[:-1], frames[1:]).flatten()
        flicker = float((steps[1:] - steps[:-1]).abs().mean()) if len(steps) > 1 else 0.0
        value = 1.0 - self.flicker_weight * flicker
        diagnostics = {"flicker": flicker, "frame_change": float(steps.mean())}
        if image is not None:
            target = F.interpolate(image[None].float(), size=video.shape[-2:], mode="bilinear", align_corners=False)
            fidelity = float(self.model(frames[:1], target * 2 - 1))
            value -= fidelity
            diagnostics["first_frame_lpips"] = fidelity
        return value if math.isfinite(value) else self.floor, diagnostics
