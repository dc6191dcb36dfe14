"""Correspondences of one video, computed once and shared by every geometric reward.

Two sources, chosen by resolution or config:
    - ``sift``: OpenCV SIFT keypoints per frame (detected once per frame), matched per pair with a
      ratio test. Best at 256x448 and above. ``kornia_sift`` uses kornia's differentiable SIFT instead.
    - ``flow``: dense correspondences from OpenCV's DIS optical flow on a pixel grid, kept where the
      forward-backward check passes and the image has texture (minimum eigenvalue of the structure
      tensor). Small, soft videos (64x96 to 128x224, what tiny or half-trained world models make) give
      SIFT too few keypoints; flow still gives hundreds of correspondences there.

Pairs are consecutive and strided: ``(i, i + g)`` for every gap ``g`` of the reward asking.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class CorrespondenceConfig:
    """How correspondences are found.

    Args:
        method: ``"sift"`` (OpenCV), ``"kornia_sift"`` (kornia's differentiable SIFT; about 20x slower on
            CPU), ``"flow"`` or ``"auto"`` (OpenCV SIFT when the shorter side is >= ``auto_min_side``, else
            flow).
        max_features: SIFT keypoints per frame.
        ratio: Lowe ratio-test threshold.
        flow_step: grid stride in pixels for flow correspondences.
        fb_threshold: forward-backward consistency threshold in pixels.
        min_texture: minimum eigenvalue of the 5x5 structure tensor (intensities in [0, 1]) for a flow point.
        auto_min_side: shorter image side from which ``auto`` picks SIFT.
    """

    method: str = "auto"
    max_features: int = 2000
    ratio: float = 0.8
    flow_step: int = 4
    fb_threshold: float = 0.5
    min_texture: float = 1e-4
    auto_min_side: int = 192

    def __post_init__(self) -> None:
        if self.method not in ("sift", "kornia_sift", "flow", "auto"):
            raise ValueError(f"method must be 'sift', 'kornia_sift', 'flow' or 'auto', got {self.method!r}")

    def resolve(self, height: int, width: int) -> str:
        if self.method != "auto":
            return self.method
        return "sift" if min(height, width) >= self.auto_min_side else "flow"


@dataclass
class Matches:
    """Correspondences between frames i and j.

    Attributes:
        points_i: ``(N, 2)`` float64 pixel coordinates in frame i.
        points_j: ``(N, 2)`` float64 pixel coordinates in frame j.
        ids_i: ``(N,)`` int64 ids of the frame-i points (keypoint index or grid index), so that matches
            of ``(i, j)`` and ``(i, k)`` can be joined into three-view tracks.
    """

    points_i: np.ndarray
    points_j: np.ndarray
    ids_i: np.ndarray

    def __len__(self) -> int:
        return len(self.ids_i)


def to_gray_u8(video: Tensor) -> np.ndarray:
    """``(T, 3, H, W)`` in [0, 1] to ``(T, H, W)`` uint8 luma (Rec. 601)."""
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=video.dtype, device=video.device)
    gray = torch.einsum("tchw,c->thw", video, weights)
    return (gray.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()


class VideoGeometry:
    """Lazily computed, cached features and matches of one video.

    Args:
        video: ``(T, 3, H, W)`` in [0, 1].
        config: how to find correspondences.
    """

    def __init__(self, video: Tensor, config: CorrespondenceConfig):
        self.gray = to_gray_u8(video)
        self.num_frames, self.height, self.width = self.gray.shape
        self.config = config
        self.method = config.resolve(self.height, self.width)
        self._features: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._flows: dict[tuple[int, int], np.ndarray] = {}
        self._texture: dict[int, np.ndarray] = {}
        self._matches: dict[tuple[int, int], Matches] = {}
        self._kornia_sift = None

    @property
    def pixel_scale(self) -> float:
        """Pixel tolerances are given at 448 px width; they scale with the image, down to one half."""
        return max(max(self.height, self.width) / 448, 0.5)

    def pairs(self, gaps: tuple[int, ...]) -> list[tuple[int, int]]:
        """Scored pairs ``(i, i + g)``, ordered by gap then by i."""
        return [(i, i + g) for g in gaps for i in range(self.num_frames - g)]

    def matches(self, i: int, j: int) -> Matches:
        if (i, j) not in self._matches:
            self._matches[i, j] = self._flow_matches(i, j) if self.method == "flow" else self._sift_matches(i, j)
        return self._matches[i, j]

    def features(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """SIFT keypoint coordinates ``(N, 2)`` and descriptors ``(N, 128)`` float32 of frame i."""
        if i not in self._features:
            if self.method == "kornia_sift":
                import kornia.feature as KF  # only this option needs kornia

                if self._kornia_sift is None:
                    self._kornia_sift = KF.SIFTFeature(num_features=self.config.max_features)
                image = torch.from_numpy(self.gray[i]).float()[None, None] / 255
                with torch.no_grad():
                    lafs, _, descriptors = self._kornia_sift(image)
                points = KF.get_laf_center(lafs)[0].double().numpy()
                self._features[i] = (points, descriptors[0].numpy().astype(np.float32))
            else:
                sift = cv2.SIFT_create(nfeatures=self.config.max_features)
                keypoints, descriptors = sift.detectAndCompute(self.gray[i], None)
                points = np.array([kp.pt for kp in keypoints], dtype=np.float64).reshape(-1, 2)
                self._features[i] = (
                    points,
                    descriptors if descriptors is not None else np.zeros((0, 128), np.float32),
                )
        return self._features[i]

    def _sift_matches(self, i: int, j: int) -> Matches:
        points_i, desc_i = self.features(i)
        points_j, desc_j = self.features(j)
        if len(desc_i) < 2 or len(desc_j) < 2:
            return Matches(np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0, np.int64))
        knn = cv2.BFMatcher(cv2.NORM_L2).knnMatch(desc_i, desc_j, k=2)
        best: dict[int, tuple[float, int]] = {}
        for pair in knn:
            if len(pair) == 2 and pair[0].distance < self.config.ratio * pair[1].distance:
                m = pair[0]
                if m.trainIdx not in best or m.distance < best[m.trainIdx][0]:
                    best[m.trainIdx] = (m.distance, m.queryIdx)
        ids_i = np.array(sorted(q for _, q in best.values()), dtype=np.int64)
        to_j = {q: t for t, (_, q) in best.items()}
        ids_j = np.array([to_j[q] for q in ids_i], dtype=np.int64)
        return Matches(points_i[ids_i], points_j[ids_j], ids_i)

    def flow(self, i: int, j: int) -> np.ndarray:
        """Optical flow from frame i to frame j, ``(H, W, 2)`` float32.

        Adjacent frames use DIS directly; larger gaps compose the adjacent flows, which follows motions
        far larger than DIS's pyramid resolves at low resolution.
        """
        if (i, j) not in self._flows:
            if abs(j - i) == 1:
                dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
                self._flows[i, j] = dis.calc(self.gray[i], self.gray[j], None)
            else:
                step = 1 if j > i else -1
                head, tail = self.flow(i, j - step), self.flow(j - step, j)
                ys, xs = np.mgrid[0 : self.height, 0 : self.width].astype(np.float32)
                moved = cv2.remap(
                    tail, xs + head[..., 0], ys + head[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
                )
                self._flows[i, j] = head + moved
        return self._flows[i, j]

    def texture(self, i: int) -> np.ndarray:
        """Minimum eigenvalue of the structure tensor of frame i, ``(H, W)`` (intensities in [0, 1])."""
        if i not in self._texture:
            self._texture[i] = cv2.cornerMinEigenVal(self.gray[i].astype(np.float32) / 255, blockSize=5)
        return self._texture[i]

    def _grid(self) -> tuple[np.ndarray, np.ndarray]:
        step = self.config.flow_step
        ys, xs = np.mgrid[step // 2 : self.height : step, step // 2 : self.width : step]
        return xs.ravel(), ys.ravel()

    def _flow_matches(self, i: int, j: int) -> Matches:
        xs, ys = self._grid()
        forward = self.flow(i, j)[ys, xs].astype(np.float64)
        targets = np.stack([xs, ys], axis=1) + forward
        backward = cv2.remap(
            self.flow(j, i),
            targets[:, 0].astype(np.float32)[:, None],
            targets[:, 1].astype(np.float32)[:, None],
            cv2.INTER_LINEAR,
        ).reshape(-1, 2)
        round_trip = np.linalg.norm(forward + backward, axis=1)
        inside = (
            (targets[:, 0] >= 0)
            & (targets[:, 0] <= self.width - 1)
            & (targets[:, 1] >= 0)
            & (targets[:, 1] <= self.height - 1)
        )
        textured = self.texture(i)[ys, xs] > self.config.min_texture
        keep = inside & textured & (round_trip < self.config.fb_threshold)
        ids = np.flatnonzero(keep)
        return Matches(np.stack([xs, ys], axis=1)[ids].astype(np.float64), targets[ids], ids.astype(np.int64))
