"""Seconds per 16-frame 256x448 video for the reward suite vs. a naive baseline, and worker scaling.

Suite: the five geometric rewards in one ``RewardSet``: SIFT once per frame, matches for consecutive and
strided pairs only, shared by every reward. Naive baseline: each reward on its own, re-detecting the
features of both frames for every pair and scoring all T(T-1)/2 pairs. Both are measured side by side in
this run (median over the videos), and their AUCs on the same clips are printed so the speed-up is at equal
ranking quality. Then the batch throughput of ``RewardSet`` with 2 worker processes vs. 1.

    python benchmarks/reward_speed.py --quick     # < 2 minutes (naive timed on one video, no naive AUC)

The last line is ``speedup=X`` (naive seconds per video / suite seconds per video).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lyra_rl.camera import Cameras
from lyra_rl.fidelity import procedural_clips, ranking_auc
from lyra_rl.reward import RewardSet
from rewards import EpipolarReward, FeatureMatchingReward, PointCloudReward, PoseConsistencyReward, ReprojectionReward
from rewards.context import VideoContext
from rewards.correspondences import VideoGeometry


class NaiveVideoGeometry(VideoGeometry):
    """Re-detects the features of both frames for every pair (no per-frame cache); one reward's own."""

    def features(self, i: int):
        self._features.pop(i, None)
        return super().features(i)


SUITE_GAPS = (1, 4)


def make_rewards(gaps: tuple[int, ...]) -> list:
    kwargs = {"method": "sift", "gaps": gaps}
    return [
        PoseConsistencyReward(**kwargs),
        EpipolarReward(**kwargs),
        ReprojectionReward(**kwargs),
        FeatureMatchingReward(**kwargs),
        PointCloudReward(**kwargs),
    ]


def score_suite(rewards: list, video: torch.Tensor, cameras: Cameras) -> dict[str, float]:
    return {name: float(value[0]) for name, value in RewardSet(rewards)(video[None], cameras, [""]).rewards.items()}


def score_naive(rewards: list, video: torch.Tensor, cameras: Cameras) -> dict[str, float]:
    scores = {}
    for reward in rewards:  # no sharing between rewards
        geometry = NaiveVideoGeometry(video, reward.correspondences)
        context = VideoContext(
            video, cameras.cam_from_world[0], cameras.intrinsics[0], {reward.correspondences: geometry}
        )
        scores[reward.name] = float(reward(video[None], cameras, [""], caches=[{VideoContext: context}]).rewards[0])
    return scores


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer clips and repeats (< 2 minutes)")
    parser.add_argument("--clips", type=int, default=3, help="clips for the AUC comparison (3 videos each)")
    parser.add_argument("--batch", type=int, default=8, help="videos per RewardSet batch for worker scaling")
    args = parser.parse_args()
    num_clips, repeats, batch = (1, 1, 4) if args.quick else (args.clips, 3, args.batch)
    torch.set_num_threads(1)
    frames = 16
    suite = make_rewards(SUITE_GAPS)
    naive = make_rewards(tuple(range(1, frames)))

    clips = [procedural_clips(seed, 256, 448, frames) for seed in range(2000, 2000 + num_clips)]
    samples = {"suite": {"consistent": [], "broken": []}, "naive": {"consistent": [], "broken": []}}
    times = {"suite": [], "naive": []}
    for clip, variants in clips:
        cameras = Cameras.from_trajectory(clip.cam_from_world, clip.intrinsics)
        for label, video in (
            ("consistent", clip.video),
            ("broken", variants["wrong_trajectory"].video),
            ("broken", variants["frozen"].video),
        ):
            for name, rewards, fn in (("suite", suite, score_suite), ("naive", naive, score_naive)):
                if name == "naive" and args.quick and times["naive"]:
                    continue  # --quick times the naive baseline on one video and skips its AUC
                result: dict = {}
                times[name].append(timed(lambda: result.update(fn(rewards, video, cameras)), 1))
                samples[name][label].append(result)
    per_video = {name: statistics.median(t) for name, t in times.items()}
    print(f"seconds per 16-frame 256x448 video (5 geometric rewards, median of {len(times['suite'])} videos):")
    print(f"  suite (shared features, gaps {SUITE_GAPS}): {per_video['suite']:.2f} s")
    print(
        f"  naive (re-detect per pair, all {frames * (frames - 1) // 2} pairs, per reward): {per_video['naive']:.2f} s"
    )
    print(f"{'AUC (wrong trajectory + frozen)':34s} {'suite':>8s} {'naive':>8s}")
    for reward in suite:
        aucs = []
        for name in ("suite", "naive"):
            if not samples[name]["broken"]:
                aucs.append(float("nan"))
                continue
            good = torch.tensor([s[reward.name] for s in samples[name]["consistent"]])
            bad = torch.tensor([s[reward.name] for s in samples[name]["broken"]])
            aucs.append(ranking_auc(good, bad))
        print(f"  {reward.name:32s} {aucs[0]:8.3f} {aucs[1]:8.3f}")
    speedup = per_video["naive"] / per_video["suite"]

    clip, _ = clips[0]
    videos = clip.video[None].expand(batch, -1, -1, -1, -1).contiguous()
    cameras = Cameras.from_trajectory(clip.cam_from_world, clip.intrinsics, batch)
    throughput = {}
    for workers in (1, 2):
        with RewardSet(make_rewards(SUITE_GAPS), num_workers=workers) as reward_set:
            reward_set(videos[:workers], cameras[:workers], [""] * workers)  # start and warm the workers
            throughput[workers] = batch / timed(lambda: reward_set(videos, cameras, [""] * batch), repeats)
    print(
        f"RewardSet throughput, batch of {batch}: 1 worker {throughput[1]:.2f} videos/s, "
        f"2 workers {throughput[2]:.2f} videos/s, ratio {throughput[2] / throughput[1]:.2f}x"
    )
    print(f"speedup={speedup:.1f}")


if __name__ == "__main__":
    main()
