"""How well each reward ranks a 3D-consistent video above a broken one (AUC), on known geometry.

Procedural scenes on fresh seeds (the rewards were tuned on seeds < 100; this uses 1000+), each along one
of the seven presets, against seven kinds of breakage, at 256x448 (SIFT) and 64x96 (dense flow); plus the
real rectified stereo pair that scikit-image ships, and optionally a folder of frames with known cameras
(layout: ``lyra_rl.fidelity.load_frames_folder``).

    python benchmarks/reward_fidelity.py --quick            # < 2 minutes
    python benchmarks/reward_fidelity.py --frames-dir DIR   # also score your own multi-view data

The last line is ``min_auc=X`` over the (reward, variant) pairs each reward is meant to catch, at both
resolutions.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from skimage import data as skdata

from lyra_rl.fidelity import (
    VARIANTS,
    folder_variants,
    load_frames_folder,
    procedural_clips,
    score_with_variants,
    variant_aucs,
)
from lyra_rl.reward import RewardSet
from rewards import EpipolarReward, FeatureMatchingReward, PointCloudReward, PoseConsistencyReward, ReprojectionReward

# What the pose, epipolar/reprojection and matching rewards are designed to catch (README, reward table):
# gated by min_auc. Everything else, and the point-cloud reward, is reported, not gated.
MEANT_TO_CATCH = {
    "pose_consistency": ("wrong_trajectory", "shuffled", "frozen"),
    "epipolar": ("wrong_trajectory", "frozen", "warped"),
    "reprojection": ("wrong_trajectory", "shuffled", "frozen", "warped", "wrong_speed"),
    "feature_matching": ("frozen", "warped", "blurred"),
}


def make_reward_set(workers: int) -> RewardSet:
    rewards = [
        PoseConsistencyReward(),
        EpipolarReward(),
        ReprojectionReward(),
        FeatureMatchingReward(),
        PointCloudReward(),
    ]
    return RewardSet(rewards, num_workers=workers)


def procedural_aucs(reward_set: RewardSet, seeds: range, height: int, width: int) -> dict[str, dict[str, float]]:
    scored = [score_with_variants(reward_set, *procedural_clips(seed, height, width)) for seed in seeds]
    return variant_aucs([c for c, _ in scored], [b for _, b in scored])


def print_table(title: str, aucs: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}")
    print(f"{'reward':18s}" + "".join(f"{v:>17s}" for v in VARIANTS))
    for name, row in aucs.items():
        cells = []
        for v in VARIANTS:
            mark = "*" if v in MEANT_TO_CATCH.get(name, ()) else " "
            cells.append(f"{row[v]:16.3f}{mark}" if not math.isnan(row[v]) else f"{'n/a':>16s}{mark}")
        print(f"{name:18s}" + "".join(cells))
    print("(* = meant to catch; gated by min_auc)")


def stereo_motorcycle_folder(root: Path) -> Path:
    """Writes scikit-image's rectified Middlebury stereo pair in the frames-folder layout."""
    left, right, _ = skdata.stereo_motorcycle()
    folder = root / "stereo_motorcycle"
    (folder / "frames").mkdir(parents=True)
    iio.imwrite(folder / "frames" / "0.png", left)
    iio.imwrite(folder / "frames" / "1.png", right)
    # Middlebury calibration shipped with the pair: f, principal points (cx differs by doffs), baseline (m).
    f, cx, cy, doffs, baseline = 994.978, 311.193, 254.877, 31.086, 0.193001
    K = lambda c: [[f, 0, c], [0, f, cy], [0, 0, 1]]  # noqa: E731
    right_from_world = np.eye(4)
    right_from_world[0, 3] = -baseline
    cameras = {"intrinsics": [K(cx), K(cx + doffs)], "cam_from_world": [np.eye(4).tolist(), right_from_world.tolist()]}
    (folder / "cameras.json").write_text(json.dumps(cameras))
    return folder


def folder_scores(reward_set: RewardSet, folder: Path) -> dict[str, dict[str, float]]:
    """Rewards of a real clip and of its broken variants: name -> {"consistent" or variant: score}."""
    clip = load_frames_folder(folder)
    consistent, broken_scores = score_with_variants(reward_set, clip, folder_variants(clip))
    return {
        name: {"consistent": value, **{v: broken_scores[v][name] for v in broken_scores}}
        for name, value in consistent.items()
    }


def print_folder(title: str, scores: dict[str, dict[str, float]]) -> float:
    """Prints the scores; returns the fraction of (reward, variant) pairs ranked correctly."""
    print(f"\n{title}")
    labels = list(next(iter(scores.values())))
    print(f"{'reward':18s}" + "".join(f"{label:>17s}" for label in labels))
    correct, total = 0, 0
    for name, row in scores.items():
        print(f"{name:18s}" + "".join(f"{row[label]:17.3f}" for label in labels))
        for label in labels[1:]:
            if not math.isnan(row[label]) and not math.isnan(row["consistent"]):
                total += 1
                correct += row["consistent"] > row[label]
    return correct / max(total, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer scenes (< 2 minutes)")
    parser.add_argument("--scenes", type=int, default=21, help="procedural scenes per resolution (3 per preset)")
    parser.add_argument("--first-seed", type=int, default=1000, help="first scene seed (fresh: never tuned on)")
    parser.add_argument("--workers", type=int, default=2, help="RewardSet worker processes")
    parser.add_argument("--frames-dir", type=Path, help="also score a folder of frames with known cameras")
    parser.add_argument("--json", type=Path, help="write all numbers to this JSON file")
    args = parser.parse_args()
    resolutions = {
        "256x448": (256, 448, 3 if args.quick else args.scenes),
        "64x96": (64, 96, 8 if args.quick else args.scenes),
    }
    start = time.perf_counter()
    results: dict = {"procedural": {}}
    gated: list[float] = []
    with make_reward_set(args.workers) as reward_set:
        for label, (height, width, count) in resolutions.items():
            aucs = procedural_aucs(reward_set, range(args.first_seed, args.first_seed + count), height, width)
            print_table(f"AUC, {count} procedural scenes at {label} (16 frames)", aucs)
            results["procedural"][label] = aucs
            gated += [
                aucs[name][v] for name, vs in MEANT_TO_CATCH.items() for v in vs if not math.isnan(aucs[name][v])
            ]
        with tempfile.TemporaryDirectory() as tmp:
            stereo = folder_scores(reward_set, stereo_motorcycle_folder(Path(tmp)))
        results["stereo_motorcycle"] = stereo
        ranked = print_folder("Real rectified stereo pair (scikit-image stereo_motorcycle, true calibration)", stereo)
        print(f"stereo pair: consistent ranked above broken in {ranked:.0%} of (reward, variant) pairs")
        if args.frames_dir:
            results["frames_dir"] = folder_scores(reward_set, args.frames_dir)
            print_folder(f"Frames folder {args.frames_dir}", results["frames_dir"])
    print(f"\nelapsed {time.perf_counter() - start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(f"min_auc={min(gated):.3f}")


if __name__ == "__main__":
    main()
