"""``lyra-rl evaluate``: how well videos follow their commanded cameras and how 3D-consistent they are.

Per video: the camera path estimated from its frames (by the first reward of the set that estimates paths,
``pose_consistency``'s ``estimate_trajectory``) against the commanded one, as CamI2V (``rot_err`` in radians,
``trans_err``, ``cam_mc``, summed over frames) and WorldScore (``rot_err_deg``, ``trans_err_scaled``,
``camera_control``) report it (:func:`lyra_rl.camera.trajectory_errors`); every reward of the set
(``reward/<name>``, ``failed/<name>``; Sampson error and friends among ``diagnostics/...``); and, where a
reference video exists (the true render of a procedural condition), ``psnr`` to it, and ``lpips`` (AlexNet, the
mean over frames) where torchvision's ImageNet backbone is in the torch hub cache (it cannot be downloaded
here; see :func:`rewards.perceptual.build_lpips`), and what a policy may learn to do to please a reward instead
of following its camera: ``motion_ratio`` (its frame-to-frame change over the reference's: 0 for a frozen
video) and ``sharpness_ratio`` (its Laplacian energy over the reference's: below 1 for a blurred or
textureless one). A video whose path
cannot be estimated gets NaN camera metrics and ``camera_failed = 1``.

Rows are aggregated per metric (mean, std, count of finite values) and written as JSON and a Markdown
table; two evaluations (before / after training) are compared with their deltas and, when rows carry a
``seed``, the spread of the per-seed deltas.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor

from .camera import Cameras, trajectory_errors
from .reward import RewardSet

CAMERA_METRICS = ("rot_err", "trans_err", "cam_mc", "rot_err_deg", "trans_err_scaled", "camera_control")
#: Keys of a row that name its video rather than measure it (left out of summaries).
ROW_IDS = ("video", "seed", "condition")


def psnr(video: Tensor, reference: Tensor) -> float:
    """Peak signal-to-noise ratio in dB of ``video`` against ``reference`` (both ``(T, 3, H, W)`` in [0, 1])."""
    mse = float((video.float() - reference.float()).square().mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


@functools.cache
def reference_lpips():
    """LPIPS (AlexNet) to measure fidelity to a reference, or None where its ImageNet backbone is not cached."""
    from rewards.perceptual import build_lpips, find_backbone_weights  # the plugin package that ships LPIPS

    return build_lpips("alex") if find_backbone_weights("alex") is not None else None


def lpips_distance(video: Tensor, reference: Tensor, model) -> float:
    """Mean over frames of the LPIPS distance between ``video`` and ``reference`` (both ``(T, 3, H, W)`` in
    [0, 1])."""
    with torch.no_grad():
        return float(model(2 * video.float() - 1, 2 * reference.float() - 1).mean())


def frame_motion(video: Tensor) -> float:
    """Mean absolute change between consecutive frames of ``video (T, 3, H, W)`` in [0, 1]."""
    return float((video[1:].float() - video[:-1].float()).abs().mean())


def sharpness(video: Tensor) -> float:
    """Mean squared Laplacian of the luma of ``video (T, 3, H, W)`` in [0, 1] (its fine detail)."""
    luma = torch.einsum("tchw,c->thw", video.float(), torch.tensor([0.299, 0.587, 0.114]))[:, None]
    laplacian = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])[None, None]
    return float(torch.nn.functional.conv2d(luma, laplacian).square().mean())


def path_estimator(reward_set: RewardSet):
    """The first reward of the set that estimates camera paths (``estimate_trajectory``, as ``pose_consistency``
    does); a ``ValueError`` if none does."""
    estimator = next((r for r in reward_set.rewards if hasattr(r, "estimate_trajectory")), None)
    if estimator is None:
        raise ValueError(
            "evaluation estimates camera paths with a reward that has estimate_trajectory "
            "(pose_consistency): add it to the rewards"
        )
    return estimator


def evaluate_videos(
    videos: Tensor,
    cameras: Cameras,
    prompts: Sequence[str],
    reward_set: RewardSet,
    references: Tensor | None = None,
    images: Tensor | None = None,
) -> tuple[list[dict[str, float]], list[Tensor | None]]:
    """Scores videos ``(B, T, 3, H, W)`` in [0, 1] against their commanded ``cameras`` (see the module), with
    ``psnr`` to ``references (B, T, 3, H, W)`` where given; ``images (B, 3, H, W)``, the conditioning first
    frames, go to the rewards.

    Returns:
        one row of metrics per video, and the estimated paths ``(T, 4, 4)`` (``None`` where none was found).
    """
    estimator = path_estimator(reward_set)
    perceptual = reference_lpips() if references is not None else None
    scores = reward_set(videos, cameras, prompts, images=images)
    rows, paths = [], []
    for k in range(len(videos)):
        commanded = cameras.cam_from_world[k]
        estimated = estimator.estimate_trajectory(videos[k], commanded, cameras.intrinsics[k])
        row = (
            dict.fromkeys(CAMERA_METRICS, math.nan)
            if estimated is None
            else asdict(trajectory_errors(estimated, commanded))
        )
        row["camera_failed"] = float(estimated is None)
        row.update({f"reward/{name}": float(values[k]) for name, values in scores.rewards.items()})
        row.update({f"failed/{name}": float(values[k]) for name, values in scores.failed.items()})
        row.update({f"diagnostics/{name}": float(values[k]) for name, values in scores.diagnostics.items()})
        row["reward/total"] = float(scores.total[k])
        if references is not None:
            row["psnr"] = psnr(videos[k], references[k])
            row["motion_ratio"] = frame_motion(videos[k]) / max(frame_motion(references[k]), 1e-12)
            row["sharpness_ratio"] = sharpness(videos[k]) / max(sharpness(references[k]), 1e-12)
            if perceptual is not None:
                row["lpips"] = lpips_distance(videos[k], references[k], perceptual)
        rows.append(row)
        paths.append(estimated)
    return rows, paths


def summarize(rows: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per metric: ``mean`` and ``std`` over the rows where it is finite, and their ``count``."""
    summary = {}
    for name in dict.fromkeys(k for row in rows for k in row if k not in ROW_IDS):
        values = torch.tensor([row[name] for row in rows if name in row], dtype=torch.float64)
        finite = values[torch.isfinite(values)]
        std = float(finite.std()) if len(finite) > 1 else 0.0
        summary[name] = {"mean": float(finite.mean()) if len(finite) else math.nan, "std": std, "count": len(finite)}
    return summary


def markdown_table(summary: dict[str, dict[str, float]]) -> str:
    """``summarize``'s result as a Markdown table (metric, mean ± std, count)."""
    lines = ["| metric | mean ± std | n |", "|---|---|---|"]
    lines += [f"| `{name}` | {s['mean']:.4g} ± {s['std']:.2g} | {s['count']} |" for name, s in summary.items()]
    return "\n".join(lines)


def row_key(row: dict) -> tuple:
    """What names a row's video across evaluations: its ``seed``, ``condition`` and ``video``, where present."""
    return tuple(row.get(key) for key in ROW_IDS)


def compare(before: Sequence[dict[str, float]], after: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per metric, on the same videos (rows paired by :func:`row_key`; each metric over the pairs where both
    sides have it finite, so that a camera error found after training on a video it was not found on before does
    not enter one side only): the means before and after, their ``delta`` and ``relative`` change, ``count``
    (pairs), ``delta_sem``: the standard error of ``delta`` over the paired videos (the std of their deltas over
    the square root of their count), and, with rows that carry a ``seed``, ``delta_std``: the std of the per-seed
    deltas (the spread a result must beat). Metrics only one side has are left out.

    Raises:
        ValueError: the two sides share no video.
    """
    after_rows = {row_key(row): row for row in after}
    pairs = [(row, after_rows[row_key(row)]) for row in before if row_key(row) in after_rows]
    if not pairs:
        raise ValueError("the evaluations share no video (rows are paired by seed, condition and video name)")
    names = dict.fromkeys(k for row, other in pairs for k in row if k in other and k not in ROW_IDS)
    table = {}
    for name in names:  # a row may lack a diagnostic its reward could not compute for that video
        finite = [(b, a) for b, a in pairs if math.isfinite(b.get(name, math.nan) + a.get(name, math.nan))]
        if not finite:
            continue
        values = torch.tensor([(b[name], a[name]) for b, a in finite], dtype=torch.float64)
        before_mean, after_mean = (float(m) for m in values.mean(0))
        deltas = values[:, 1] - values[:, 0]
        seeds = sorted({b.get("seed") for b, _ in finite if "seed" in b}, key=str)
        per_seed = torch.tensor(
            [float(deltas[[b.get("seed") == s for b, _ in finite]].mean()) for s in seeds], dtype=torch.float64
        )
        delta = after_mean - before_mean
        table[name] = {
            "before": before_mean,
            "after": after_mean,
            "delta": delta,
            "relative": delta / abs(before_mean) if before_mean else math.nan,
            "delta_sem": float(deltas.std() / math.sqrt(len(deltas))) if len(deltas) > 1 else math.nan,
            "delta_std": float(per_seed.std()) if len(per_seed) > 1 else math.nan,
            "count": len(finite),
        }
    return table


def comparison_table(comparison: dict[str, dict[str, float]]) -> str:
    """``compare``'s result as a Markdown table."""
    lines = [
        "| metric | before | after | delta | ± s.e. (videos) | ± over seeds | relative | videos |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, c in comparison.items():
        sem, spread = ("" if math.isnan(c[key]) else f"{c[key]:.2g}" for key in ("delta_sem", "delta_std"))
        lines.append(
            f"| `{name}` | {c['before']:.4g} | {c['after']:.4g} | {c['delta']:+.4g} | {sem} | {spread} "
            f"| {c['relative']:+.1%} | {c['count']} |"
        )
    return "\n".join(lines)


def write_evaluation(rows: Sequence[dict], output_dir: str | Path) -> Path:
    """``evaluation.json`` (the rows and their summary) and ``evaluation.md`` in ``output_dir``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    (output_dir / "evaluation.json").write_text(json.dumps({"summary": summary, "videos": list(rows)}, indent=1))
    (output_dir / "evaluation.md").write_text(f"# Evaluation ({len(rows)} videos)\n\n{markdown_table(summary)}\n")
    return output_dir / "evaluation.json"
