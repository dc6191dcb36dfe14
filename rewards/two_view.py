"""Two-view geometry for the rewards: pure numpy functions on pixel correspondences.

Convention:
    Points are ``(N, 2)`` float64 pixels (OpenCV pixel-center convention). Relative poses are
    ``j_from_i`` (``X_j = R X_i + t``) built from the *commanded* world-to-camera extrinsics.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

import torch

from lyra_rl.camera import camera_centers, relative_pose


@dataclass
class CommandedPair:
    """The commanded geometry of a frame pair, in float64 numpy.

    Attributes:
        K_i, K_j: ``(3, 3)`` intrinsics.
        R, t: ``j_from_i`` rotation ``(3, 3)`` and translation ``(3,)``.
        P_i, P_j: ``(3, 4)`` projection matrices ``K [R | t]`` of the world-to-camera extrinsics.
        translates: whether the commanded baseline is non-zero (else the pair is a pure rotation).
    """

    K_i: np.ndarray
    K_j: np.ndarray
    R: np.ndarray
    t: np.ndarray
    P_i: np.ndarray
    P_j: np.ndarray
    translates: bool


def commanded_pair(cam_from_world: torch.Tensor, intrinsics: torch.Tensor, i: int, j: int, min_translation: float) -> CommandedPair:
    """The commanded geometry of frames i and j from ``cam_from_world (T, 4, 4)`` and ``intrinsics (T, 3, 3)``."""
    pose = cam_from_world.double()
    rel = relative_pose(pose[i], pose[j]).numpy()
    K = intrinsics.double().numpy()
    return CommandedPair(
        K_i=K[i], K_j=K[j], R=rel[:3, :3], t=rel[:3, 3],
        P_i=K[i] @ pose[i, :3].numpy(), P_j=K[j] @ pose[j, :3].numpy(),
        translates=bool(np.linalg.norm(rel[:3, 3]) > min_translation),
    )


def path_length(cam_from_world: torch.Tensor) -> float:
    """Length of the polyline through the camera centers of ``(T, 4, 4)`` extrinsics."""
    centers = camera_centers(cam_from_world.double())
    return float((centers[1:] - centers[:-1]).norm(dim=-1).sum())


def skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])


def fundamental_from_pose(K_i: np.ndarray, K_j: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``F = K_j^-T [t]_x R K_i^-1`` so that ``x_j^T F x_i = 0``."""
    return np.linalg.inv(K_j).T @ skew(t) @ R @ np.linalg.inv(K_i)


def homogeneous(points: np.ndarray) -> np.ndarray:
    return np.concatenate([points, np.ones((len(points), 1))], axis=1)


def sampson_distance(F: np.ndarray, points_i: np.ndarray, points_j: np.ndarray) -> np.ndarray:
    """First-order geometric distance (pixels, not squared) of correspondences to ``F``, ``(N,)``."""
    x_i, x_j = homogeneous(points_i), homogeneous(points_j)
    Fx_i, Ftx_j = x_i @ F.T, x_j @ F
    algebraic = np.sum(x_j * Fx_i, axis=1)
    denom = Fx_i[:, 0] ** 2 + Fx_i[:, 1] ** 2 + Ftx_j[:, 0] ** 2 + Ftx_j[:, 1] ** 2
    return np.abs(algebraic) / np.sqrt(np.maximum(denom, 1e-300))


def rotation_transfer_error(
    K_i: np.ndarray, K_j: np.ndarray, R: np.ndarray, points_i: np.ndarray, points_j: np.ndarray
) -> np.ndarray:
    """Pixel error of the infinite homography ``K_j R K_i^-1`` (exact for a pure rotation ``R``), ``(N,)``."""
    H = K_j @ R @ np.linalg.inv(K_i)
    mapped = homogeneous(points_i) @ H.T
    return np.linalg.norm(mapped[:, :2] / mapped[:, 2:3] - points_j, axis=1)


def bearings(K: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Unit viewing rays ``(N, 3)`` of pixels."""
    rays = homogeneous(points) @ np.linalg.inv(K).T
    return rays / np.linalg.norm(rays, axis=1, keepdims=True)


def moves_as_commanded(pair: CommandedPair, points_i: np.ndarray, points_j: np.ndarray, max_depth: float) -> bool:
    """Static-video guard: do the correspondences move at least as much as the command implies?

    A frozen video is epipolar-consistent with a forward motion if the scene were infinitely far, and
    matches perfectly. This check assumes the scene is no deeper than ``max_depth`` (trajectory units):
    the median angular motion of the viewing rays must reach half of what the commanded rotation and
    translation give for points at that depth (rotation alone for a pure rotation, any depth).
    """
    rays_i, rays_j = bearings(pair.K_i, points_i), bearings(pair.K_j, points_j)
    far = max_depth * rays_i @ pair.R.T + pair.t
    far /= np.linalg.norm(far, axis=1, keepdims=True)
    measured = np.arccos(np.clip(np.sum(rays_i * rays_j, axis=1), -1, 1))
    expected = np.arccos(np.clip(np.sum(rays_i * far, axis=1), -1, 1))
    return bool(np.median(measured) >= 0.5 * np.median(expected))


def triangulate(P_i: np.ndarray, P_j: np.ndarray, points_i: np.ndarray, points_j: np.ndarray) -> np.ndarray:
    """DLT triangulation of correspondences with projection matrices ``(3, 4)``; world points ``(N, 4)`` homogeneous."""
    X = cv2.triangulatePoints(P_i, P_j, points_i.T, points_j.T).T
    return X / np.where(np.abs(X[:, 3:]) > 1e-12, X[:, 3:], 1e-12)


def project(P: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels ``(N, 2)`` and depths ``(N,)`` of homogeneous world points ``(N, 4)`` under ``P = K [R | t]``."""
    x = X @ P.T
    return x[:, :2] / x[:, 2:3], x[:, 2]


def estimate_relative_pose(
    pair: CommandedPair, points_i: np.ndarray, points_j: np.ndarray, threshold_px: float, rotation_only: bool
) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Relative pose from correspondences with the commanded intrinsics (USAC).

    With ``rotation_only`` a homography fitted in normalized coordinates selects the inliers and the
    rotation is the least-squares alignment of their viewing rays (Kabsch); otherwise the 5-point
    essential matrix and ``recoverPose``.

    Returns:
        ``R (3, 3)``, the unit translation ``(3,)`` (None for a rotation) and the inlier count.
    """
    n_i = cv2.undistortPoints(points_i.reshape(-1, 1, 2), pair.K_i, None).reshape(-1, 2)
    n_j = cv2.undistortPoints(points_j.reshape(-1, 1, 2), pair.K_j, None).reshape(-1, 2)
    threshold = threshold_px / np.mean([pair.K_i[0, 0], pair.K_i[1, 1]])
    if rotation_only:
        H, mask = cv2.findHomography(n_i, n_j, cv2.USAC_ACCURATE, threshold)
        if H is None:
            raise cv2.error("homography estimation failed")
        inliers = mask.ravel() > 0
        rays_i, rays_j = bearings(pair.K_i, points_i[inliers]), bearings(pair.K_j, points_j[inliers])
        U, _, Vt = np.linalg.svd(rays_j.T @ rays_i)
        return U @ np.diag([1, 1, np.linalg.det(U @ Vt)]) @ Vt, None, int(inliers.sum())
    E, mask = cv2.findEssentialMat(n_i, n_j, np.eye(3), cv2.USAC_ACCURATE, 0.999, threshold)
    if E is None or E.shape[0] < 3:
        raise cv2.error("essential matrix estimation failed")
    _, R, t, mask = cv2.recoverPose(E[:3], n_i, n_j, np.eye(3), mask=mask)
    return R, t.ravel(), int((mask > 0).sum())


def grid_coverage(points: np.ndarray, height: int, width: int, cells: int = 4) -> float:
    """Fraction of the ``cells x cells`` image grid that holds at least one point."""
    if len(points) == 0:
        return 0.0
    cx = np.clip((points[:, 0] / width * cells).astype(int), 0, cells - 1)
    cy = np.clip((points[:, 1] / height * cells).astype(int), 0, cells - 1)
    return len(set(zip(cx.tolist(), cy.tolist()))) / cells**2
