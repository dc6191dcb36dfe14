"""The MultiCamVideo reader, its condition source and the preprocess recipe's latent cache, on a tiny folder in the
data set's layout: procedural scenes rendered along known cameras, the extrinsics written in Unreal's convention."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from lyra_rl.camera import (
    axis_angle_to_matrix,
    compose_poses,
    from_multicam_extrinsics,
    invert_pose,
    make_pose,
    trajectory_preset,
    yaw_matrix,
)
from lyra_rl.data.conditions import ConditionSource, condition_prompts
from lyra_rl.data.multicam import DEFAULT_PROMPT, SENSOR_SIZE_MM, list_clips, load_clip, sampled_frames
from lyra_rl.data.renderer import render
from lyra_rl.data.scenes import make_scene
from lyra_rl.video import write_video

ROOT = Path(__file__).resolve().parents[2]
SIDE, NUM_FRAMES, FOCAL_MM = 48, 13, 24.0  # square 48x48 videos of 13 frames, a 24 mm lens
SOURCE_K = torch.tensor(
    [
        [FOCAL_MM / SENSOR_SIZE_MM * SIDE, 0, (SIDE - 1) / 2],
        [0, FOCAL_MM / SENSOR_SIZE_MM * SIDE, (SIDE - 1) / 2],
        [0, 0, 1],
    ]
)
CAMERAS = {"cam01": "forward_left", "cam02": "s_curve"}
#: Our world (x right, y down, z forward) in Unreal's (x forward, y right, z up): a reflection, as Unreal's
#: world is left-handed.
TO_UNREAL = torch.tensor([[0.0, 0, 1], [1, 0, 0], [0, -1, 0]], dtype=torch.float64)


def unreal_matrix(cam_from_world: torch.Tensor) -> str:
    """An OpenCV ``cam_from_world (4, 4)`` as MultiCamVideo stores a camera: Unreal's row-vector camera-to-world
    matrix (rows: forward, right, up axes, then the location in centimetres)."""
    world_from_cam = invert_pose(cam_from_world.double())
    right, down, forward, center = world_from_cam[:3].unbind(-1)
    rows = [TO_UNREAL @ forward, TO_UNREAL @ right, TO_UNREAL @ -down, 100 * TO_UNREAL @ center]
    return " ".join(f"[{' '.join(repr(float(x)) for x in row)} {w}]" for row, w in zip(rows, (0, 0, 0, 1)))


def absolute_cameras(scene: int, k: int) -> torch.Tensor:
    """Camera ``k`` of a scene: its preset, started from a yawed, pitched and rolled pose off the world origin."""
    rotation = yaw_matrix(0.2 + 0.3 * k + 0.1 * scene) @ axis_angle_to_matrix(torch.tensor([0.1, 0.0, 0.05]).double())
    cam0_from_world = invert_pose(make_pose(rotation, torch.tensor([0.3 - 0.4 * k, -0.2, -0.5 + 0.2 * scene])))
    relative = trajectory_preset(CAMERAS[f"cam0{k + 1}"], NUM_FRAMES).double()
    return compose_poses(relative, cam0_from_world)


@pytest.fixture(scope="module")
def multicam(tmp_path_factory):
    """``train/f24_aperture5/scene{1,2}`` with cam01 and cam02; returns the folder of scenes and the renders."""
    root = tmp_path_factory.mktemp("multicam") / "train" / "f24_aperture5"
    renders = {}
    for s in (1, 2):
        scene, folder = make_scene(s, texture_size=64), root / f"scene{s}"
        extrinsics = {f"frame{t}": {} for t in range(NUM_FRAMES)}
        for k, camera in enumerate(CAMERAS):
            cam_from_world = absolute_cameras(s, k)
            frames = render(scene, cam_from_world.float(), SOURCE_K, SIDE, SIDE).frames
            write_video(folder / "videos" / f"{camera}.mp4", frames)
            for t in range(NUM_FRAMES):
                extrinsics[f"frame{t}"][camera] = unreal_matrix(cam_from_world[t])
            renders[f"scene{s}", camera] = (scene, cam_from_world, frames)
        (folder / "cameras").mkdir()
        (folder / "cameras" / "camera_extrinsics.json").write_text(json.dumps(extrinsics))
    return root, renders


def test_reader_recovers_the_cameras_and_frames(multicam):
    root, renders = multicam
    clips = list_clips(root)
    assert [c.name for c in clips] == [f"scene{s}/videos/cam0{k}.mp4" for s in (1, 2) for k in (1, 2)]
    assert {c.focal_length_mm for c in clips} == {FOCAL_MM} and {c.prompt for c in clips} == {DEFAULT_PROMPT}
    assert list_clips(root.parent) == [  # the data set's train/: the same clips, named from there
        c.__class__(c.scene, c.camera, f"f24_aperture5/{c.name}", c.focal_length_mm, c.prompt) for c in clips
    ]
    for clip in clips:
        _, cam_from_world, rendered = renders[clip.scene.name, clip.camera]
        frames, cameras, prompt = load_clip(clip, 5, SIDE, SIDE)  # stride 12 // 4 = 3
        sampled = [0, 3, 6, 9, 12]
        expected = compose_poses(cam_from_world[sampled], invert_pose(cam_from_world[0]))
        torch.testing.assert_close(cameras.cam_from_world[0].double(), expected, atol=1e-4, rtol=0)
        torch.testing.assert_close(cameras.intrinsics[0], SOURCE_K.expand(5, 3, 3), atol=1e-4, rtol=0)
        assert frames.shape == (5, 3, SIDE, SIDE) and prompt == DEFAULT_PROMPT
        assert (frames - rendered[sampled]).abs().mean() < 0.04  # H.264 (another clip's frames: 0.14)


def test_intrinsics_follow_the_crop_and_resize(multicam):
    """The frames read at 24x36 (a 32x48 center crop, scaled by 3/4) are the scene rendered there with the
    returned intrinsics."""
    root, renders = multicam
    clip = list_clips(root)[3]
    frames, cameras, _ = load_clip(clip, 3, 24, 36, frame_stride=2)
    scene, cam_from_world, _ = renders[clip.scene.name, clip.camera]
    f = FOCAL_MM / SENSOR_SIZE_MM * SIDE * 0.75
    torch.testing.assert_close(cameras.intrinsics[0, 0], torch.tensor([[f, 0, 17.5], [0, f, 11.5], [0, 0, 1]]))
    direct = render(scene, cam_from_world[[0, 2, 4]].float(), cameras.intrinsics[0, 0], 24, 36).frames
    assert (frames - direct).abs().mean() < 0.05  # 70-degree intrinsics instead: 0.1


def test_unreal_yaw_to_the_right_is_negative_yaw():
    """Unreal's yaw turns right (x forward towards y right); lyra-rl's positive yaw turns left."""
    angles = [math.radians(10.0 * t) for t in range(4)]
    data = {
        f"frame{t}": {
            "cam01": f"[{math.cos(a)} {math.sin(a)} 0 0] [{-math.sin(a)} {math.cos(a)} 0 0] [0 0 1 0] [0 0 0 1]"
        }
        for t, a in enumerate(angles)
    }
    expected = torch.stack([make_pose(yaw_matrix(-a).transpose(-1, -2), torch.zeros(3)) for a in angles])
    torch.testing.assert_close(from_multicam_extrinsics(data, "cam01").double(), expected, atol=1e-6, rtol=0)


def test_prompts_and_errors(multicam, tmp_path):
    root, _ = multicam
    assert sampled_frames(81, 9) == list(range(0, 81, 10)) and sampled_frames(81, 17, 4) == list(range(0, 65, 4))
    with pytest.raises(ValueError, match="span 17; the clip has 13"):
        load_clip(list_clips(root)[0], 9, SIDE, SIDE, frame_stride=2)
    copy = tmp_path / "f35_aperture2.4"
    copy.mkdir()
    (copy / "scene1").symlink_to(root / "scene1", target_is_directory=True)
    (copy / "metadata.csv").write_text('file_name,text\nscene1/videos/cam01.mp4,"a dancer, on a street"\n')
    with pytest.raises(ValueError, match="no row for scene1/videos/cam02.mp4"):
        list_clips(copy)
    (copy / "metadata.csv").write_text(
        "file_name,text\nscene1/videos/cam01.mp4,a dancer\nscene1/videos/cam02.mp4,a bar\n"
    )
    assert [(c.prompt, c.focal_length_mm) for c in list_clips(copy)] == [("a dancer", 35.0), ("a bar", 35.0)]
    bare = tmp_path / "bare" / "scene7"
    (bare / "videos").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="scene7/cameras/camera_extrinsics.json is missing"):
        list_clips(bare.parent)
    (bare / "cameras").mkdir()
    (bare / "cameras" / "camera_extrinsics.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="holds no camNN.mp4"):
        list_clips(bare.parent)
    (bare / "videos" / "cam01.mp4").symlink_to(root / "scene1" / "videos" / "cam01.mp4")
    with pytest.raises(ValueError, match="no focal length"):
        list_clips(bare.parent)
    assert list_clips(bare.parent, focal_length_mm=50.0)[0].focal_length_mm == 50.0
    with pytest.raises(ValueError, match="camera_extrinsics.json: cannot read cam01"):
        load_clip(list_clips(bare.parent, focal_length_mm=50.0)[0], 2, SIDE, SIDE)


def test_condition_source_holds_out_whole_scenes(multicam):
    root, renders = multicam
    source = ConditionSource(
        str(root), 0, 1, 5, 32, 48, videos=True
    )  # scene2/cam02 held out, so scene2 is not trained
    assert [c.name for c in source.entries] == ["scene1/videos/cam01.mp4", "scene1/videos/cam02.mp4"]
    assert [c.name for c in source.held_out_entries] == ["scene2/videos/cam02.mp4"]
    batch = source([0, 1, 2])
    assert batch.videos.shape == (3, 5, 3, 32, 48) and torch.equal(batch.videos[:, 0], batch.images)
    assert batch.cameras.cam_from_world.shape == (3, 5, 4, 4) and batch.prompts == [DEFAULT_PROMPT] * 3
    torch.testing.assert_close(batch.cameras.cam_from_world[2], batch.cameras.cam_from_world[0])  # modulo the clips
    first_frames = ConditionSource(str(root), 0, 1, 5, 32, 48)([1], held_out=True)  # GRPO: no videos read
    assert first_frames.videos is None and first_frames.images.shape == (1, 3, 32, 48)
    assert condition_prompts(str(root)) == [DEFAULT_PROMPT] * 4
    with pytest.raises(ValueError, match="leaves none to train on"):
        ConditionSource(str(root), 0, 3, 5, 32, 48, videos=True)


def load_preprocess():
    spec = importlib.util.spec_from_file_location("recipe_preprocess", ROOT / "recipes" / "preprocess.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_preprocess_caches_latents_resumes_and_sft_trains_from_the_cache(multicam, tmp_path, capsys):
    from lyra_rl.data.latent_cache import load_cached_clip
    from lyra_rl.training import SFTConfig, SFTTrainer, make_accelerator
    from policies import PolicyConfig, build_policy
    from policies.prompts import load_prompt_embeddings

    root, _ = multicam
    recipe, policy_config = load_preprocess(), PolicyConfig(policy="embedded")
    config = recipe.PreprocessConfig(source=str(root), output_dir=str(tmp_path / "cache"), num_frames=5)
    output = recipe.main(policy_config, config)
    files = sorted(p.name for p in output.glob("*.safetensors"))
    assert files == [
        "prompt_embeddings.safetensors",
        *[f"scene{s}__cam0{k}.safetensors" for s in (1, 2) for k in (1, 2)],
    ]
    tensors, metadata = load_cached_clip(output / "scene2__cam01.safetensors")
    frames, cameras, _ = load_clip(list_clips(root)[2], 5, 32, 48)
    policy = build_policy(policy_config)
    torch.testing.assert_close(tensors["latents"], policy.generated_latents(frames[None])[0])  # the lossless codec
    torch.testing.assert_close(tensors["cam_from_world"], cameras.cam_from_world[0])
    torch.testing.assert_close(tensors["prompt_embedding"], policy.encode_prompts([DEFAULT_PROMPT])[0])
    assert metadata["scene"] == "scene2" and metadata["camera"] == "cam01" and torch.equal(tensors["image"], frames[0])
    assert set(load_prompt_embeddings(output / "prompt_embeddings.safetensors")) == {DEFAULT_PROMPT, ""}

    kept = (output / "scene1__cam01.safetensors").stat().st_mtime_ns
    (output / "scene2__cam02.safetensors").unlink()
    capsys.readouterr()
    recipe.main(policy_config, config)  # resumes: writes the missing clip only
    assert "1 clips (3 already there)" in capsys.readouterr().out
    assert (output / "scene2__cam02.safetensors").is_file()
    assert (output / "scene1__cam01.safetensors").stat().st_mtime_ns == kept
    with pytest.raises(ValueError, match="num_frames: 5 -> 9"):
        recipe.main(policy_config, recipe.PreprocessConfig(source=str(root), output_dir=str(output)))

    sft = SFTConfig(
        output_dir=str(tmp_path / "sft"),
        conditions=str(output),
        num_frames=5,
        eval_conditions=1,
        eval_sampling_steps=2,
    )
    accelerator = make_accelerator("no", cpu=True)
    trainer = SFTTrainer(sft, build_policy(policy_config, sft.seed, accelerator), None, accelerator)
    cached, read = trainer.conditions([0, 1]), ConditionSource(str(root), 0, 1, 5, 32, 48, videos=True)([0, 1])
    assert cached.videos is None and cached.prompts == read.prompts
    torch.testing.assert_close(trainer.targets(cached), trainer.targets(read))
    assert math.isfinite(trainer.train_step()["loss"]) and math.isfinite(trainer.evaluate()["eval/loss"])
    with pytest.raises(ValueError, match="caches .*'num_frames': 5.* asks for num_frames=9"):
        ConditionSource(str(output), 0, 1, 9, 32, 48, videos=True)
