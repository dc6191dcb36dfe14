"""Two-view geometry for the rewards: pure numpy functions on pixel correspondences.

Convention:
    Points are ``(N, 2)`` float64 pixels (OpenCV pixel-center convention). Relative poses are
    ``j_from_i`` (``X_j = R X_i + t``) built from the *commanded* world-to-camera extrinsics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from lyra_rl.camera import skew
from lyra_rl.reward import EstimationError


@dataclass
class CommandedPair:
    """The commanded geometry of a frame pair, in float64 numpy.

    Attributes:
        K_i, K_j: ``(3, 3)`` intrinsics; ``K_i_inv``, ``K_j_inv`` their inverses.
        R, t: ``j_from_i`` rotation ``(3, 3)`` and translation ``(3,)``.
        P_i, P_j: ``(3, 4)`` projection matrices ``K [R | t]`` of the world-to-camera extrinsics.
        translates: whether the commanded baseline is non-zero (else the pair is a pure rotation).
    """

    K_i: np.ndarray
    K_j: np.ndarray
    K_i_inv: np.ndarray
    K_j_inv: np.ndarray
    R: np.ndarray
    t: np.ndarray
    P_i: np.ndarray
    P_j: np.ndarray
    translates: bool


class CommandedCameras:
    """The commanded cameras of one video in float64 numpy, with memoised frame pairs.

    Args:
        cam_from_world: ``(T, 4, 4)`` extrinsics.
        intrinsics: ``(T, 3, 3)`` pixel intrinsics.
        min_translation: commanded baselines shorter than this count as pure rotations.
    """

    def __init__(self, cam_from_world: torch.Tensor, intrinsics: torch.Tensor, min_translation: float):
        self.cam_from_world = cam_from_world.double().numpy()
        self.K = intrinsics.double().numpy()
        self.K_inv = np.linalg.inv(self.K)
        self.P = self.K @ self.cam_from_world[:, :3]
        self.min_translation = min_translation
        self._pairs: dict[tuple[int, int], CommandedPair] = {}

    def pair(self, i: int, j: int) -> CommandedPair:
        if (i, j) not in self._pairs:
            pose_i, pose_j = self.cam_from_world[i], self.cam_from_world[j]
            R = pose_j[:3, :3] @ pose_i[:3, :3].T
            t = pose_j[:3, 3] - R @ pose_i[:3, 3]
            self._pairs[i, j] = CommandedPair(
                K_i=self.K[i],
                K_j=self.K[j],
                K_i_inv=self.K_inv[i],
                K_j_inv=self.K_inv[j],
                R=R,
                t=t,
                P_i=self.P[i],
                P_j=self.P[j],
                translates=bool(np.linalg.norm(t) > self.min_translation),
            )
        return self._pairs[i, j]


def fundamental_from_pose(pair: CommandedPair) -> np.ndarray:
    """``F = K_j^-T [t]_x R K_i^-1`` of the commanded pair, so that ``x_j^T F x_i = 0``."""
    return pair.K_j_inv.T @ skew(torch.from_numpy(pair.t)).numpy() @ pair.R @ pair.K_i_inv


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
    pair: CommandedPair, R: np.ndarray, points_i: np.ndarray, points_j: np.ndarray
) -> np.ndarray:
    """Pixel error of the infinite homography ``K_j R K_i^-1`` (exact for a pure rotation ``R``), ``(N,)``."""
    H = pair.K_j @ R @ pair.K_i_inv
    mapped = homogeneous(points_i) @ H.T
    return np.linalg.norm(mapped[:, :2] / mapped[:, 2:3] - points_j, axis=1)


def bearings(K_inv: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Unit viewing rays ``(N, 3)`` of pixels, given the inverse intrinsics."""
    rays = homogeneous(points) @ K_inv.T
    return rays / np.linalg.norm(rays, axis=1, keepdims=True)


@dataclass(frozen=True)
class MotionEvidence:
    """What the static-video guard measured on the correspondences of a pair.

    Attributes:
        moves: the correspondences show the commanded motion (see :func:`moves_as_commanded`).
        motion_px: median pixel displacement of the correspondences.
        parallax_px: median signed parallax left after the commanded rotation, positive towards the commanded
            translation, in pixels at frame j's focal length; NaN for a commanded pure rotation.
    """

    moves: bool
    motion_px: float
    parallax_px: float


def moves_as_commanded(
    pair: CommandedPair, points_i: np.ndarray, points_j: np.ndarray, min_motion_px: float
) -> MotionEvidence:
    """Static-video guard: do the correspondences show the commanded motion, whatever the depth of the scene?

    A frozen video is epipolar-consistent with a forward motion (a scene at infinity), a video that only
    rotates satisfies every epipolar geometry with its rotation, and in an orbit a frozen video is
    epipolar-consistent with a scene around the pivot. The test reads only what two views fix without a depth:

    - Commanded pure rotation: rays move along the commanded rotation (``u = R r_i``), by depth-free
      amounts. The median component of ``r_j - r_i`` along ``u - r_i`` must reach half the median of
      ``|u - r_i|``; a rotation below ``min_motion_px`` (e.g. a static camera) demands nothing.
    - Commanded translation: a point at any positive depth is seen, after the commanded rotation, displaced
      from ``u`` towards the commanded translation ``t`` (``r_j ~ u + t / depth``): the signed parallax
      ``atan2(r_j . d, r_j . u)``, with ``d`` the unit component of ``t`` orthogonal to ``u``, is positive.
      Its median must reach ``min_motion_px`` (a rotating-only video has none, a video moving backwards a
      negative one), and so must the median pixel displacement (a frozen video has none, whatever the
      intrinsics: a frozen stereo pair with shifted principal points is epipolar-consistent with a plane).

    Args:
        pair: the commanded geometry of frames ``(i, j)``.
        points_i, points_j: ``(N, 2)`` pixel correspondences, ``N >= 1`` (too few to judge the motion is the
            caller's call).
        min_motion_px: the smallest median motion and parallax (pixels) that show a commanded translation.
    """
    rays_i, rays_j = bearings(pair.K_i_inv, points_i), bearings(pair.K_j_inv, points_j)
    rotated = rays_i @ pair.R.T
    focal = float(np.mean([pair.K_j[0, 0], pair.K_j[1, 1]]))
    motion = float(np.median(np.linalg.norm(points_j - points_i, axis=1)))
    if not pair.translates:
        rotation_flow = rotated - rays_i
        length = np.linalg.norm(rotation_flow, axis=1)
        along = np.sum((rays_j - rays_i) * rotation_flow, axis=1) / np.maximum(length, 1e-12)
        moves = focal * np.median(length) < min_motion_px or np.median(along) >= 0.5 * np.median(length)
        return MotionEvidence(bool(moves), motion, math.nan)
    towards = pair.t - (rotated @ pair.t)[:, None] * rotated
    towards /= np.maximum(np.linalg.norm(towards, axis=1, keepdims=True), 1e-12)
    signed = np.arctan2(np.sum(rays_j * towards, axis=1), np.sum(rays_j * rotated, axis=1))
    parallax = focal * float(np.median(signed))
    return MotionEvidence(motion >= min_motion_px and parallax >= min_motion_px, motion, parallax)


def triangulate(P_i: np.ndarray, P_j: np.ndarray, points_i: np.ndarray, points_j: np.ndarray) -> np.ndarray:
    """DLT triangulation of correspondences with projection matrices ``(3, 4)``; world points ``(N, 4)``
    homogeneous."""
    X = cv2.triangulatePoints(P_i, P_j, points_i.T, points_j.T).T
    return X / np.where(np.abs(X[:, 3:]) > 1e-12, X[:, 3:], 1e-12)


def project(P: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels ``(N, 2)`` and depths ``(N,)`` of homogeneous world points ``(N, 4)`` under ``P = K [R | t]``."""
    x = X @ P.T
    return x[:, :2] / x[:, 2:3], x[:, 2]


def estimate_relative_pose(
    pair: CommandedPair, points_i: np.ndarray, points_j: np.ndarray, threshold_px: float, rotation_only: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Relative pose from correspondences with the commanded intrinsics (USAC).

    With ``rotation_only`` a homography fitted in normalized coordinates selects the inliers and the
    rotation is the least-squares alignment of their viewing rays (Kabsch); otherwise the 5-point
    essential matrix and ``recoverPose``.

    Returns:
        ``R (3, 3)`` and the unit translation ``(3,)`` (None for a rotation).

    Raises:
        EstimationError: no model could be fitted.
    """
    n_i = homogeneous(points_i) @ pair.K_i_inv.T
    n_j = homogeneous(points_j) @ pair.K_j_inv.T
    threshold = threshold_px / np.mean([pair.K_i[0, 0], pair.K_i[1, 1]])
    try:
        if rotation_only:
            H, mask = cv2.findHomography(n_i[:, :2], n_j[:, :2], cv2.USAC_ACCURATE, threshold)
            if H is None:
                raise EstimationError("no homography")
            inliers = mask.ravel() > 0
            rays_i, rays_j = n_i[inliers], n_j[inliers]
            rays_i /= np.linalg.norm(rays_i, axis=1, keepdims=True)
            rays_j /= np.linalg.norm(rays_j, axis=1, keepdims=True)
            U, _, Vt = np.linalg.svd(rays_j.T @ rays_i)
            return U @ np.diag([1, 1, np.linalg.det(U @ Vt)]) @ Vt, None
        E, mask = cv2.findEssentialMat(n_i[:, :2], n_j[:, :2], np.eye(3), cv2.USAC_ACCURATE, 0.999, threshold)
        if E is None or E.shape[0] < 3:
            raise EstimationError("no essential matrix")
        _, R, t, _ = cv2.recoverPose(E[:3], n_i[:, :2], n_j[:, :2], np.eye(3), mask=mask)
    except cv2.error as error:  # degenerate point sets (e.g. all matches identical)
        raise EstimationError(f"pose estimation failed: {error.err}") from error
    return R, t.ravel()


def fundamental_inliers(points_i: np.ndarray, points_j: np.ndarray, threshold_px: float) -> np.ndarray:
    """Inlier mask ``(N,)`` of a fundamental matrix fitted with USAC.

    Raises:
        EstimationError: no fundamental matrix could be fitted.
    """
    try:
        _, mask = cv2.findFundamentalMat(points_i, points_j, cv2.USAC_ACCURATE, threshold_px, 0.999)
    except cv2.error as error:
        raise EstimationError(f"fundamental matrix estimation failed: {error.err}") from error
    return np.zeros(len(points_i), bool) if mask is None else mask.ravel() > 0


def grid_coverage(points: np.ndarray, height: int, width: int, cells: int = 4) -> float:
    """Fraction of the ``cells x cells`` image grid that holds at least one point."""
    if len(points) == 0:
        return 0.0
    cx = np.clip((points[:, 0] / width * cells).astype(int), 0, cells - 1)
    cy = np.clip((points[:, 1] / height * cells).astype(int), 0, cells - 1)
    return len(set(zip(cx.tolist(), cy.tolist()))) / cells**2
