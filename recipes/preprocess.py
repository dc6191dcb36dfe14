"""Cache a MultiCamVideo folder as the policy's latents and prompt embeddings (the seed's ``--task data_process``),
so that SFT neither decodes videos nor runs the codec or the text encoder.

Writes one safetensors file per clip (latents, first frame, cameras, prompt embedding; see
``lyra_rl.data.latent_cache``), ``cache.json`` and ``prompt_embeddings.safetensors`` into ``output_dir``. Resumable:
a rerun with the same arguments skips the clips already written (each file is written whole, then renamed).

    python recipes/preprocess.py --source data/MultiCamVideo-Dataset/train/f18_aperture10 --output_dir data/f18_cache \
        --policy wan2.1-1.3b --wan_model_path models/Wan-AI/Wan2.1-T2V-1.3B --num_frames 81 --height 480 --width 832
    accelerate launch recipes/sft.py --config ... --conditions data/f18_cache \
        --prompt_embeddings data/f18_cache/prompt_embeddings.safetensors
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm
from trl import TrlParser

from lyra_rl.data.latent_cache import (
    MANIFEST,
    PROMPT_EMBEDDINGS,
    cache_file_name,
    cached_clip,
    cached_prompt_embedding,
    save_cached_clip,
    write_manifest,
)
from lyra_rl.data.multicam import list_clips, load_clip
from lyra_rl.training import make_accelerator
from policies import PolicyConfig, build_policy
from policies.prompts import save_prompt_embeddings
from policies.wan_camera import WanCameraPolicy


@dataclass
class PreprocessConfig:
    """Arguments of preprocessing (the policy's are ``PolicyConfig``'s: its codec and text encoder are used).

    > source, output_dir, num_frames, height, width, frame_stride, negative_prompt, seed.
    """

    source: str = field(metadata={"help": "MultiCamVideo folder: a scene, scenes, or folders of scenes (train/)."})
    output_dir: str = field(default="outputs/multicam_cache", metadata={"help": "The cache folder written."})
    num_frames: int = field(default=9, metadata={"help": "Frames per clip (the policy's rule: Wan's is 4k+1)."})
    height: int = field(default=32, metadata={"help": "Frame height, after the center crop to the aspect."})
    width: int = field(default=48, metadata={"help": "Frame width, after the center crop to the aspect."})
    frame_stride: int | None = field(
        default=None, metadata={"help": "Frames 0, s, 2s, ... of each clip (default: the largest s that fits)."}
    )
    negative_prompt: str = field(
        default="", metadata={"help": "Also embedded (the unconditional branch of classifier-free guidance)."}
    )
    seed: int = field(
        default=0, metadata={"help": "Seed of the policy's initial weights (the tiny policy's codec is random)."}
    )


def main(policy_config: PolicyConfig, config: PreprocessConfig) -> Path:
    WanCameraPolicy.check_video_size(config.num_frames, config.height, config.width, policy_config.policy)
    clips, output = list_clips(config.source), Path(config.output_dir)
    settings = {
        "source": str(Path(config.source).absolute()),
        **{key: getattr(policy_config, key) for key in ("policy", "wan_model_path", "prompt_embeddings")},
        **{key: getattr(config, key) for key in ("seed", "num_frames", "height", "width", "frame_stride")},
    }
    if (output / MANIFEST).is_file():  # resuming: only into a cache made with the same settings
        before = json.loads((output / MANIFEST).read_text()).get("settings", {})
        changed = [
            f"{key}: {before.get(key)!r} -> {value!r}" for key, value in settings.items() if before.get(key) != value
        ]
        if changed:
            raise ValueError(
                f"{output / MANIFEST} was made with other settings ({', '.join(changed)}): rerun with its arguments "
                "or choose another output_dir"
            )
    write_manifest(output, settings, [cached_clip(clip) for clip in clips])
    accelerator = make_accelerator("no")
    policy = build_policy(policy_config, config.seed, accelerator)
    skipped = 0
    progress = tqdm(clips, desc="preprocessing", unit="clip")
    for clip in progress:
        path = output / cache_file_name(clip)
        if path.is_file():
            skipped += 1
            progress.set_postfix(skipped=skipped)
            continue
        frames, cameras, prompt = load_clip(clip, config.num_frames, config.height, config.width, config.frame_stride)
        latents = policy.generated_latents(frames[None].to(accelerator.device))[0]
        embedding = policy.encode_prompts([prompt])[0]
        metadata = {"prompt": prompt, "scene": cached_clip(clip).scene, "camera": clip.camera}
        save_cached_clip(
            path, latents, frames[0], cameras.cam_from_world[0], cameras.intrinsics[0], embedding, metadata
        )
    first_clip = {}
    for clip in clips:
        first_clip.setdefault(clip.prompt, output / cache_file_name(clip))
    embeddings = {prompt: cached_prompt_embedding(path) for prompt, path in first_clip.items()}
    embeddings.setdefault(config.negative_prompt, policy.encode_prompts([config.negative_prompt])[0].cpu())
    save_prompt_embeddings(embeddings, output / PROMPT_EMBEDDINGS)
    print(f"Wrote {output}/: {len(clips) - skipped} clips ({skipped} already there), {MANIFEST}, {PROMPT_EMBEDDINGS}")
    return output


if __name__ == "__main__":
    main(*TrlParser((PolicyConfig, PreprocessConfig)).parse_args_and_config())
