"""``lyra-rl`` command line: score any video against a commanded camera trajectory.

lyra-rl score VIDEO --direction forward [--fov 70 | --intrinsics fx fy cx cy] [--rewards ...]
lyra-rl evaluate FOLDER --out DIR [--direction forward] [--references DIR]   # camera metrics and rewards
lyra-rl compare BEFORE.json AFTER.json    # two evaluations side by side, with deltas
lyra-rl rewards                       # list the registered reward plugins
lyra-rl plot-presets OUT.png          # the seven presets drawn from above
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from .camera import DIRECTIONS, Cameras, default_intrinsics, get_trajectory
from .evaluate import compare, comparison_table, evaluate_videos, markdown_table, summarize, write_evaluation
from .reward import RewardSet, available_rewards, resolve_reward_class
from .video import plot_trajectories, read_video

DEFAULT_REWARDS = ("pose_consistency", "epipolar", "reprojection", "feature_matching", "point_cloud")


def _intrinsics(args: argparse.Namespace, height: int, width: int) -> torch.Tensor:
    if args.intrinsics:
        fx, fy, cx, cy = args.intrinsics
        return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    return default_intrinsics(height, width, args.fov)


def _accepts(reward_name: str, option: str) -> bool:
    """Whether a reward's constructor takes ``option`` (by name or through ``**kwargs``)."""
    parameters = inspect.signature(resolve_reward_class(reward_name)).parameters.values()
    return any(p.name == option or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def score(args: argparse.Namespace) -> int:
    video, _ = read_video(args.video, args.max_frames)
    num_frames, _, height, width = video.shape
    trajectory = get_trajectory(args.direction, num_frames, distance=args.distance, angle_degrees=args.angle)
    cameras = Cameras.from_trajectory(trajectory, _intrinsics(args, height, width))
    reward_kwargs = {
        name: {"method": args.method} for name in args.rewards if args.method and _accepts(name, "method")
    }
    with RewardSet.from_names(args.rewards, reward_kwargs=reward_kwargs) as reward_set:
        out = reward_set(video[None], cameras, [args.prompt])
    rows = {name: {"reward": float(out.rewards[name][0]), "failed": bool(out.failed[name][0])} for name in out.rewards}
    for key, value in out.diagnostics.items():
        name, _, diag = key.partition("/")
        rows[name][diag] = float(value[0])
    if args.json:
        print(
            json.dumps(
                {"video": str(args.video), "frames": num_frames, "total": float(out.total[0]), "rewards": rows},
                indent=2,
            )
        )
        return 0
    print(f"{args.video}: {num_frames} frames {width}x{height}, commanded: {args.direction}")
    print(f"{'reward':18s} {'value':>8s}  diagnostics")
    for name, row in rows.items():
        value = "FAILED" if row["failed"] else ("n/a" if math.isnan(row["reward"]) else f"{row['reward']:.3f}")
        diags = "  ".join(f"{k}={v:.3g}" for k, v in row.items() if k not in ("reward", "failed"))
        print(f"{name:18s} {value:>8s}  {diags}")
    print(f"{'total':18s} {float(out.total[0]):8.3f}")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    """Every video of a folder against its commanded path: ``<stem>.direction`` beside it (a preset name or a
    trajectory file relative to the folder), else ``--direction`` (a preset or a file); the reference
    ``<stem>.mp4`` of ``--references`` where given. Every input is checked before any work."""
    if not args.folder.is_dir():
        raise FileNotFoundError(f"{args.folder}: no such folder")
    paths = sorted(p for p in args.folder.iterdir() if p.suffix.lower() in (".mp4", ".webm", ".mov", ".avi"))
    if not paths:
        raise ValueError(f"no videos (*.mp4) in {args.folder}")
    if not any(hasattr(resolve_reward_class(name), "estimate_trajectory") for name in args.rewards):
        raise ValueError("evaluate estimates camera paths with pose_consistency: add it to --rewards")
    directions = {}
    for path in paths:
        file = path.with_suffix(".direction")
        direction = file.read_text().strip() if file.is_file() else args.direction
        if direction is None:
            raise ValueError(f"{path}: no {file.name} beside it and no --direction given")
        if direction not in DIRECTIONS:
            direction = str(args.folder / direction) if file.is_file() else direction
            if not Path(direction).is_file():
                raise FileNotFoundError(f"{path}: its commanded path {direction} is neither a preset nor a file")
        directions[path] = direction
        if args.references is not None and not (args.references / path.name).is_file():
            raise FileNotFoundError(f"{path}: no reference {args.references / path.name}")
    rows = []
    with RewardSet.from_names(args.rewards) as reward_set:
        for path in tqdm(paths, desc="evaluate"):
            video, _ = read_video(path)
            num_frames, _, height, width = video.shape
            trajectory = get_trajectory(directions[path], num_frames, distance=args.distance, angle_degrees=args.angle)
            cameras = Cameras.from_trajectory(trajectory, _intrinsics(args, height, width))
            reference = read_video(args.references / path.name, num_frames)[0][None] if args.references else None
            (row,), (estimated,) = evaluate_videos(video[None], cameras, [""], reward_set, reference)
            rows.append({"video": path.name, **row})
            paths_drawn = {"commanded": trajectory, **({"estimated": estimated} if estimated is not None else {})}
            plot_trajectories(paths_drawn, args.out / "trajectories" / f"{path.stem}.png", path.name)
    print(f"Wrote {write_evaluation(rows, args.out)}, evaluation.md, trajectories/*.png")
    print(markdown_table(summarize(rows)))
    return 0


def compare_evaluations(args: argparse.Namespace) -> int:
    before, after = (json.loads(path.read_text())["videos"] for path in (args.before, args.after))
    print(comparison_table(compare(before, after)))
    return 0


def add_camera_arguments(p: argparse.ArgumentParser) -> None:
    """The commanded camera's options: a preset's size, the field of view or pixel intrinsics."""
    p.add_argument("--distance", type=float, default=1.5, help="preset: total forward distance (trajectory units)")
    p.add_argument("--angle", type=float, default=40.0, help="preset: total yaw in degrees")
    p.add_argument("--fov", type=float, default=70.0, help="horizontal field of view in degrees, if no --intrinsics")
    p.add_argument("--intrinsics", type=float, nargs=4, metavar=("FX", "FY", "CX", "CY"), help="pixel intrinsics")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lyra-rl", description="3D-aware rewards for camera-controlled video")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("score", help="score a video against a commanded camera trajectory")
    p.add_argument("video", type=Path, help="an mp4 (or any format ffmpeg reads)")
    p.add_argument("--direction", required=True, help=f"a preset ({', '.join(DIRECTIONS)}) or a trajectory file")
    add_camera_arguments(p)
    p.add_argument("--rewards", nargs="+", default=list(DEFAULT_REWARDS), help="reward names or module:Class paths")
    p.add_argument(
        "--method",
        choices=("auto", "sift", "kornia_sift", "flow"),
        help="correspondences of the geometric rewards (default: their own, auto)",
    )
    p.add_argument("--prompt", default="", help="the prompt the video was generated from")
    p.add_argument("--max-frames", type=int, help="score only the first N frames")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=score)
    p = commands.add_parser("evaluate", help="camera accuracy and rewards of a folder of videos")
    p.add_argument(
        "folder", type=Path, help="videos, each with an optional <stem>.direction (preset or trajectory file)"
    )
    p.add_argument("--out", type=Path, required=True, help="folder for evaluation.json, evaluation.md, trajectories/")
    p.add_argument("--direction", help="the commanded path of videos without a .direction file")
    p.add_argument("--references", type=Path, help="a folder of reference videos of the same names (PSNR)")
    add_camera_arguments(p)
    p.add_argument("--rewards", nargs="+", default=list(DEFAULT_REWARDS), help="reward names (pose_consistency first)")
    p.set_defaults(run=evaluate)
    p = commands.add_parser("compare", help="two evaluations (before / after) side by side, with deltas")
    p.add_argument("before", type=Path, help="evaluation.json")
    p.add_argument("after", type=Path, help="evaluation.json")
    p.set_defaults(run=compare_evaluations)
    p = commands.add_parser("rewards", help="list the registered reward plugins")
    p.set_defaults(run=lambda args: print("\n".join(available_rewards())) or 0)
    p = commands.add_parser("plot-presets", help="draw the seven presets from above into a PNG")
    p.add_argument("out", type=Path)
    p.add_argument("--frames", type=int, default=33)
    p.set_defaults(
        run=lambda args: (
            print(
                plot_trajectories(
                    {d: get_trajectory(d, args.frames) for d in DIRECTIONS},
                    args.out,
                    "the seven presets (top view; red: viewing direction)",
                )
            )
            or 0
        )
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return args.run(args)
    except (FileNotFoundError, ValueError) as error:
        print(f"lyra-rl: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
