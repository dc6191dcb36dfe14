"""``lyra-rl`` command line: score any video against a commanded camera trajectory.

lyra-rl score VIDEO --direction forward [--fov 70 | --intrinsics fx fy cx cy] [--rewards ...]
lyra-rl evaluate FOLDER --out DIR [--direction forward] [--references DIR]   # camera metrics and rewards
lyra-rl evaluate --config RECIPE.yaml [--checkpoint DIR] --out DIR [--num-conditions N] [--seeds 0 1 2]  # a model
lyra-rl infer --condition_image IMG --direction left --prompt "..." [--config embedded]  # generate (recipes/infer.py)
lyra-rl compare BEFORE.json AFTER.json    # two evaluations side by side, with deltas
lyra-rl rewards                       # list the registered reward plugins
lyra-rl plot-presets OUT.png          # the presets drawn from above
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from .camera import PRESETS, Cameras, default_intrinsics, get_trajectory, pinhole_intrinsics
from .data.conditions import CAMERA_PATHS, ConditionSource
from .errors import IntrinsicsError, TrajectoryError, VideoError
from .evaluate import compare, comparison_table, evaluate_videos, markdown_table, summarize, write_evaluation
from .reward import RewardSet, available_rewards, resolve_reward_class
from .video import plot_trajectories, probe_video, read_video

DEFAULT_REWARDS = ("pose_consistency", "epipolar", "reprojection", "feature_matching", "point_cloud")


def camera_intrinsics(args: argparse.Namespace) -> Callable[[int, int], torch.Tensor]:
    """The intrinsics ``(3, 3)`` of a ``height x width`` video from ``--intrinsics`` or ``--fov``, checked now
    (before any video is read): an :class:`~lyra_rl.errors.IntrinsicsError` names the flag."""
    try:
        if args.intrinsics:
            K = pinhole_intrinsics(*args.intrinsics)
            return lambda height, width: K
        default_intrinsics(2, 2, args.fov)
    except IntrinsicsError as error:
        raise IntrinsicsError(f"{'--intrinsics' if args.intrinsics else '--fov'}: {error}") from None
    return lambda height, width: default_intrinsics(height, width, args.fov)


def commanded_trajectory(args: argparse.Namespace, direction: str, video: Path, num_frames: int) -> torch.Tensor:
    """``direction`` (a preset, or a trajectory file: resampled to the video's frames with ``--resample`` only)
    for the ``num_frames`` frames of ``video``, which must be at least 2."""
    if num_frames < 2:
        raise VideoError(f"video {video} has {num_frames} frame; a camera path needs at least 2")
    try:
        return get_trajectory(direction, num_frames, args.resample, distance=args.distance, angle_degrees=args.angle)
    except TrajectoryError as error:
        raise TrajectoryError(f"{video}: {error}") from None


def _accepts(reward_name: str, option: str) -> bool:
    """Whether a reward's constructor takes ``option`` (by name or through ``**kwargs``)."""
    parameters = inspect.signature(resolve_reward_class(reward_name)).parameters.values()
    return any(p.name == option or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def reward_rows(out, index: int = 0) -> dict[str, dict[str, float]]:
    """Video ``index`` of a :class:`~lyra_rl.reward.RewardSet`'s output: reward name -> its ``reward``,
    ``failed`` and diagnostics."""
    rows = {
        name: {"reward": float(out.rewards[name][index]), "failed": bool(out.failed[name][index])}
        for name in out.rewards
    }
    for key, value in out.diagnostics.items():
        name, _, diag = key.partition("/")
        rows[name][diag] = float(value[index])
    return rows


def print_reward_table(rows: dict[str, dict[str, float]], total: float) -> None:
    """:func:`reward_rows` as a table: one line per reward (its value, or FAILED), then the weighted total."""
    print(f"{'reward':18s} {'value':>8s}  diagnostics")
    for name, row in rows.items():
        value = "FAILED" if row["failed"] else ("n/a" if math.isnan(row["reward"]) else f"{row['reward']:.3f}")
        diags = "  ".join(f"{k}={v:.3g}" for k, v in row.items() if k not in ("reward", "failed"))
        print(f"{name:18s} {value:>8s}  {diags}")
    print(f"{'total':18s} {total:8.3f}")


def score(args: argparse.Namespace) -> int:
    intrinsics = camera_intrinsics(args)
    if args.max_frames is not None and args.max_frames < 2:
        raise ValueError(f"--max-frames must be >= 2 (a camera path needs 2 frames), got {args.max_frames}")
    video, _ = read_video(args.video, args.max_frames)
    num_frames, _, height, width = video.shape
    trajectory = commanded_trajectory(args, args.direction, args.video, num_frames)
    cameras = Cameras.from_trajectory(trajectory, intrinsics(height, width))
    reward_kwargs = {
        name: {"method": args.method} for name in args.rewards if args.method and _accepts(name, "method")
    }
    with RewardSet.from_names(args.rewards, reward_kwargs=reward_kwargs) as reward_set:
        out = reward_set(video[None], cameras, [args.prompt])
    rows = reward_rows(out)
    if args.json:
        print(
            json.dumps(
                {"video": str(args.video), "frames": num_frames, "total": float(out.total[0]), "rewards": rows},
                indent=2,
            )
        )
        return 0
    print(f"{args.video}: {num_frames} frames {width}x{height}, commanded: {args.direction}")
    print_reward_table(rows, float(out.total[0]))
    return 0


#: ``evaluate``'s options of one mode only: (flag, attribute).
FOLDER_OPTIONS = (("--direction", "direction"), ("--references", "references"))
MODEL_OPTIONS = (
    ("--checkpoint", "checkpoint"),
    ("--num-conditions", "num_conditions"),
    ("--seeds", "seeds"),
    ("--sampling-steps", "sampling_steps"),
    ("--camera-paths", "camera_paths"),
    ("--batch-size", "batch_size"),
    ("--before-after", "before_after"),
)


def check_estimates_paths(rewards: list[str]) -> None:
    if not any(hasattr(resolve_reward_class(name), "estimate_trajectory") for name in rewards):
        raise ValueError("evaluate estimates camera paths with pose_consistency: add it to --rewards")


def evaluate(args: argparse.Namespace) -> int:
    """A folder of videos or, with ``--config``, a model: exactly one of the two."""
    if (args.folder is None) == (args.config is None):
        raise ValueError("evaluate takes a folder of videos or --config RECIPE.yaml (a model): exactly one of the two")
    mode, others = ("--config", FOLDER_OPTIONS) if args.config else ("a folder of videos", MODEL_OPTIONS)
    given = [flag for flag, name in others if getattr(args, name) is not None]
    if given:
        raise ValueError(f"{given[0]} does not apply to {mode}")
    return evaluate_model_command(args) if args.config else evaluate_folder(args)


def evaluate_folder(args: argparse.Namespace) -> int:
    """Every video of a folder against its commanded path: ``<stem>.direction`` beside it (a preset name or a
    trajectory file relative to the folder), else ``--direction`` (a preset or a file); the reference
    ``<stem>.mp4`` of ``--references`` where given. Every input is checked before any work."""
    if not args.folder.is_dir():
        raise FileNotFoundError(f"{args.folder}: no such folder")
    paths = sorted(p for p in args.folder.iterdir() if p.suffix.lower() in (".mp4", ".webm", ".mov", ".avi"))
    if not paths:
        raise ValueError(f"no videos (*.mp4) in {args.folder}")
    args.rewards = args.rewards or list(DEFAULT_REWARDS)
    check_estimates_paths(args.rewards)
    intrinsics = camera_intrinsics(args)
    directions = {}
    for path in tqdm(paths, desc="check videos", leave=False, disable=None):
        file = path.with_suffix(".direction")
        direction = file.read_text().strip() if file.is_file() else args.direction
        if direction is None:
            raise ValueError(f"{path}: no {file.name} beside it and no --direction given")
        if direction not in PRESETS:
            direction = str(args.folder / direction) if file.is_file() else direction
            if not Path(direction).is_file():
                raise FileNotFoundError(f"{path}: its commanded path {direction} is neither a preset nor a file")
        num_frames = probe_video(path)
        directions[path] = commanded_trajectory(args, direction, path, num_frames)
        if args.references is not None:
            if not (args.references / path.name).is_file():
                raise FileNotFoundError(f"{path}: no reference {args.references / path.name}")
            probe_video(args.references / path.name, num_frames)
    rows = []
    with RewardSet.from_names(args.rewards) as reward_set:
        for path in tqdm(paths, desc="evaluate"):
            video, _ = read_video(path)
            num_frames, _, height, width = video.shape
            trajectory = directions[path]
            cameras = Cameras.from_trajectory(trajectory, intrinsics(height, width))
            reference = read_video(args.references / path.name, num_frames)[0][None] if args.references else None
            (row,), (estimated,) = evaluate_videos(video[None], cameras, [""], reward_set, reference)
            rows.append({"video": path.name, **row})
            paths_drawn = {"commanded": trajectory, **({"estimated": estimated} if estimated is not None else {})}
            plot_trajectories(paths_drawn, args.out / "trajectories" / f"{path.stem}.png", path.name)
    print(f"Wrote {write_evaluation(rows, args.out)}, evaluation.md, trajectories/*.png")
    print(markdown_table(summarize(rows)))
    return 0


def evaluate_model_command(args: argparse.Namespace) -> int:
    """A model on its held-out conditions (:func:`lyra_rl.evaluate_model.evaluate_model`): the policy, rewards,
    conditions and sampler of a recipe's config, with the trained weights of ``--checkpoint`` (a checkpoint
    folder, or a run's folder: its last checkpoint). Every input is checked before any video is sampled."""
    from policies import WanCameraPolicy, build_policy  # the policy package: only this mode builds a policy
    from policies.training import parse_recipe_config

    from .evaluate_model import evaluate_before_after, evaluate_model
    from .training import latest_checkpoint, make_accelerator
    from .training.checkpoint import load_trained_weights

    policy_config, reward_config, config = parse_recipe_config(args.config)
    rewards = args.rewards or reward_config.rewards or list(DEFAULT_REWARDS)
    check_estimates_paths(rewards)
    procedural = config.conditions == "procedural"
    num_conditions = config.eval_conditions if args.num_conditions is None else args.num_conditions
    if num_conditions < 1:
        raise ValueError(f"--num-conditions must be >= 1, got {num_conditions} (the config's eval_conditions)")
    if not procedural and num_conditions > config.eval_conditions:
        raise ValueError(
            f"{config.conditions} holds out its last {config.eval_conditions} conditions (eval_conditions): "
            f"--num-conditions {num_conditions} is more"
        )
    if args.camera_paths is not None and not procedural:
        raise ValueError(f"--camera-paths applies to procedural conditions only, not {config.conditions}")
    seeds = args.seeds or [config.seed]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must differ, got {seeds}")
    sampling_steps = config.eval_sampling_steps if args.sampling_steps is None else args.sampling_steps
    batch_size = 4 if args.batch_size is None else args.batch_size
    if sampling_steps < 1 or batch_size < 1:
        raise ValueError(f"--sampling-steps and --batch-size must be >= 1, got {sampling_steps} and {batch_size}")
    if args.before_after and (args.checkpoint is None or policy_config.train_transformer):
        raise ValueError(
            "--before-after compares trained weights with the model they started from: it needs --checkpoint and "
            f"a config with LoRA adapters or camera modules only, Lyra's mode ({args.config} trains the whole DiT)"
            if policy_config.train_transformer
            else "--before-after compares trained weights with the model they started from: it needs --checkpoint"
        )
    state = checkpoint = None
    if args.checkpoint is not None:
        if not args.checkpoint.is_dir():
            raise FileNotFoundError(f"--checkpoint {args.checkpoint}: no such folder")
        checkpoint = latest_checkpoint(args.checkpoint) or args.checkpoint
        state = WanCameraPolicy.read_trained_weights(checkpoint)
    source = ConditionSource.from_config(config, videos=procedural, camera_paths=args.camera_paths)
    accelerator = make_accelerator(config.mixed_precision)
    policy = build_policy(policy_config, config.seed, accelerator)
    if state is not None:
        try:
            load_trained_weights(policy.trained_parameters(), state)
        except (KeyError, ValueError) as error:
            raise ValueError(f"--checkpoint {checkpoint} with {args.config}: {error.args[0]}") from error
    if args.rewards or not reward_config.rewards:
        reward_set = RewardSet.from_names(rewards)
    else:
        reward_set = reward_config.reward_set()  # the config's weights and options
    settings = dict(
        num_conditions=num_conditions,
        seeds=seeds,
        num_sampling_steps=sampling_steps,
        shift=config.shift,
        guidance_scale=config.guidance_scale,
        negative_prompt=config.negative_prompt,
        batch_size=batch_size,
        bf16=accelerator.mixed_precision == "bf16",
    )
    panels = "generated | true render | camera paths" if procedural else "generated | camera paths"
    with reward_set:
        if args.before_after:
            comparison = evaluate_before_after(policy, source, reward_set, args.out, **settings)
            panels = panels.replace("generated", "before | after")
            print(
                f"Wrote {args.out}/: comparison.md, before/ and after/ (evaluation.json, evaluation.md), "
                f"videos/*.mp4 ({panels}), trajectories/*.png"
            )
            print(comparison_table(comparison))
            return 0
        rows = evaluate_model(policy, source, reward_set, args.out, **settings)
    print(f"Wrote {args.out / 'evaluation.json'}, evaluation.md, videos/*.mp4 ({panels}), trajectories/*.png")
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
    p.add_argument(
        "--resample",
        action="store_true",
        help="resample a trajectory file of another length to the video's frames (else its length must match)",
    )


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lyra-rl", description="3D-aware rewards for camera-controlled video")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("score", help="score a video against a commanded camera trajectory")
    p.add_argument("video", type=Path, help="an mp4 (or any format ffmpeg reads)")
    p.add_argument("--direction", required=True, help=f"a preset ({', '.join(PRESETS)}) or a trajectory file")
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
    p = commands.add_parser("evaluate", help="camera accuracy and rewards of a folder of videos, or of a model's")
    p.add_argument(
        "folder",
        type=Path,
        nargs="?",
        help="videos, each with an optional <stem>.direction (preset or trajectory file); or --config",
    )
    p.add_argument(
        "--config",
        type=Path,
        help="a model instead: a recipe's YAML (its policy, rewards, held-out conditions and sampler)",
    )
    p.add_argument(
        "--out", type=Path, required=True, help="folder for evaluation.json, evaluation.md, trajectories/ (videos/)"
    )
    p.add_argument("--direction", help="folder: the commanded path of videos without a .direction file")
    p.add_argument("--references", type=Path, help="folder: reference videos of the same names (PSNR)")
    add_camera_arguments(p)
    p.add_argument(
        "--rewards",
        nargs="+",
        help=f"reward names, pose_consistency among them (default: {' '.join(DEFAULT_REWARDS)}; with --config, "
        "the config's rewards where it has some)",
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="--config: trained weights, a checkpoint folder or a run's (its last checkpoint); default: none, the "
        "config's own weights",
    )
    p.add_argument(
        "--num-conditions", type=int, help="--config: held-out conditions per seed (default: eval_conditions)"
    )
    p.add_argument("--seeds", type=int, nargs="+", help="--config: sampling seeds (default: the config's seed)")
    p.add_argument("--sampling-steps", type=int, help="--config: ODE steps (default: eval_sampling_steps)")
    p.add_argument(
        "--camera-paths", choices=CAMERA_PATHS, help="--config: procedural held-out paths (default: the config's)"
    )
    p.add_argument("--batch-size", type=int, help="--config: conditions sampled together (default 4)")
    p.add_argument(
        "--before-after",
        action="store_const",
        const=True,
        help="--config with a LoRA --checkpoint: also the model with its adapters disabled (before training), from "
        "the same noise, compared (comparison.md; videos before | after)",
    )
    p.set_defaults(run=evaluate)
    commands.add_parser(
        "infer",
        help="generate a video from a first frame, a prompt and a camera path (the seed's infer_demo.py flags; "
        "lyra-rl infer --help lists them)",
        add_help=False,
    )
    p = commands.add_parser("compare", help="two evaluations (before / after) side by side, with deltas")
    p.add_argument("before", type=Path, help="evaluation.json")
    p.add_argument("after", type=Path, help="evaluation.json")
    p.set_defaults(run=compare_evaluations)
    p = commands.add_parser("rewards", help="list the registered reward plugins")
    p.set_defaults(run=lambda args: print("\n".join(available_rewards())) or 0)
    p = commands.add_parser("plot-presets", help="draw the presets from above into a PNG")
    p.add_argument("out", type=Path)
    p.add_argument("--frames", type=int, default=33)
    p.set_defaults(
        run=lambda args: (
            print(
                plot_trajectories(
                    {d: get_trajectory(d, args.frames) for d in PRESETS},
                    args.out,
                    "the presets from above, or from the side (red: viewing direction)",
                )
            )
            or 0
        )
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["infer"]:  # the recipe's own parser (TrlParser over policies.inference.InferConfig)
        from policies.inference import main as infer

        infer(argv[1:])
        return 0
    args = make_parser().parse_args(argv)
    try:
        return args.run(args)
    except (FileNotFoundError, ValueError) as error:  # bad input: one line, as argparse prints a bad flag
        print(f"lyra-rl: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
