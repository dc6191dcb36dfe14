"""Export a training checkpoint for the tools people generate with (the formats: ``lyra_rl/export.py``).

python recipes/export_lora.py --checkpoint outputs/grpo_embedded/checkpoint-20 [--output_dir DIR] \
    [--formats peft diffusers wan merged merged_wan] [--wan_model_path ...] [--dit_path ...]

The LoRA formats need only the checkpoint; the merged ones rebuild the base model the run was trained from (its
recorded ``policy``, ``camera_layout``, ``wan_model_path``, ``dit_path`` and ``seed``, the paths overridable
here) and add the LoRA into its weights; ``merged_wan`` is also written as a ``.ckpt`` (``torch.save``), the file
the seed's ``infer_demo.py --dit_path`` reads. Writes ``export.json`` (every file and the metadata they all carry).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig
from peft.utils import SAFETENSORS_WEIGHTS_NAME
from safetensors import safe_open
from trl import TrlParser

from lyra_rl.atomic import atomic_write
from lyra_rl.export import PEFT_PREFIX, export_metadata, merge_lora, to_wan_keys, wan_lora, write_weights
from lyra_rl.training import latest_checkpoint
from lyra_rl.training.checkpoint import read_trainer_state
from policies.loading import SHIPPED_DITS, load_pretrained, read_state_dict, to_diffusers_transformer_keys
from policies.training import exit_with_error
from policies.wan_camera import CAMERA_WEIGHTS, DIT_WEIGHTS, LORA_WEIGHTS, WanCameraPolicy

LORA_FORMATS = ("peft", "diffusers", "wan")
FORMATS = (*LORA_FORMATS, "merged", "merged_wan")
DIFFUSERS_LORA_METADATA = "lora_adapter_metadata"  # where diffusers keeps a LoRA's rank, alpha and targets
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class ExportConfig:
    """What to export and where.

    > Input: checkpoint (a checkpoint folder, or a run folder: its last checkpoint).
    > Output: output_dir, formats, merged_dtype.
    > Base model of the merged formats (default: the run's): wan_model_path, dit_path.
    """

    checkpoint: str = field(default="", metadata={"help": "A checkpoint folder, or a run folder (its last one)."})
    output_dir: str | None = field(default=None, metadata={"help": "Where to write (default: <checkpoint>/export)."})
    formats: list[str] = field(
        default_factory=list,
        metadata={"help": f"Any of {', '.join(FORMATS)} (default: every one the checkpoint has weights for)."},
    )
    merged_dtype: str = field(
        default="float32", metadata={"help": "dtype of the merged DiT files: float32, bfloat16."}
    )
    wan_model_path: str | None = field(
        default=None, metadata={"help": "The base model's folder (default: the run's)."}
    )
    dit_path: str | None = field(default=None, metadata={"help": "The base camera DiT (default: the run's)."})


@dataclass
class TrainedWeights:
    """A checkpoint's trained weights in diffusers' key names without a prefix, and what the run recorded."""

    lora: dict[str, torch.Tensor]
    camera: dict[str, torch.Tensor]
    dit: dict[str, torch.Tensor]
    lora_config: dict | None  # r, lora_alpha, target_modules, as diffusers records them in the LoRA file
    recorded: dict  # the run's configs (trainer_state.pt)
    step: int

    @classmethod
    def read(cls, checkpoint: Path) -> TrainedWeights:
        trained = {
            k.removeprefix("transformer."): v for k, v in WanCameraPolicy.read_trained_weights(checkpoint).items()
        }
        if (checkpoint / DIT_WEIGHTS).is_file():  # a fully trained DiT: its whole state, as the policy saves it
            lora, camera, dit = {}, {}, trained
        else:  # the LoRA and the camera modules beside it, split as the policy saves them
            lora = {k: v for k, v in trained.items() if "lora_" in k}
            camera, dit = {k: v for k, v in trained.items() if "lora_" not in k}, {}
        state = read_trainer_state(checkpoint)
        return cls(
            lora,
            camera,
            dit,
            lora_config_of(checkpoint / LORA_WEIGHTS) if lora else None,
            state["config"],
            state["step"],
        )

    def base_model(self, config: ExportConfig) -> dict:
        """The model the LoRA adapts: the run's architecture and seed, its base weights (or the overriding ones)."""
        base = {k: self.recorded.get(k) for k in ("policy", "camera_layout", "seed")}
        return {
            **base,
            "wan_model_path": config.wan_model_path or self.recorded.get("wan_model_path"),
            "dit_path": config.dit_path or self.recorded.get("dit_path"),
        }


def lora_config_of(lora_file: Path) -> dict:
    """Rank, alpha and targets of a checkpoint's LoRA, from the metadata diffusers writes into it."""
    with safe_open(lora_file, "pt") as file:
        packed = json.loads((file.metadata() or {}).get(DIFFUSERS_LORA_METADATA, "{}"))
    config = {key.removeprefix("transformer."): value for key, value in packed.items()}
    if not {"r", "lora_alpha", "target_modules"} <= config.keys():
        raise ValueError(f"{lora_file}: no LoRA rank, alpha and targets in its metadata (not a lyra-rl checkpoint?)")
    return config


def merged_dit(weights: TrainedWeights, config: ExportConfig) -> dict[str, torch.Tensor]:
    """The whole trained DiT: a fully trained one as it is; else the base the run trained from (its recorded
    architecture, seed and weights, the paths overridable) with the camera modules and the LoRA added in."""
    if weights.dit:
        merged = weights.dit
    else:
        r, base = weights.recorded, weights.base_model(config)
        policy = WanCameraPolicy.from_config(
            r["policy"], r["seed"], r.get("camera_layout"), r.get("num_experts", 3), r.get("expert", 0)
        )
        load_pretrained(policy, base["wan_model_path"], base["dit_path"])
        # the base DiT file's modules the policy does not build (Astra's other embedders and processors) kept
        original = (
            {} if base["dit_path"] is None else read_state_dict(SHIPPED_DITS.get(base["dit_path"], base["dit_path"]))
        )
        merged = {**to_diffusers_transformer_keys(original), **policy.transformer.state_dict(), **weights.camera}
        if weights.lora:
            scaling = weights.lora_config["lora_alpha"] / weights.lora_config["r"]
            merged = merge_lora(merged, weights.lora, scaling)
    dtype = DTYPES[config.merged_dtype]
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in merged.items()}


def write_peft(out: Path, weights: TrainedWeights, metadata: dict[str, str]) -> Path:
    folder = out / "peft"
    folder.mkdir(parents=True, exist_ok=True)
    lora = weights.lora_config
    LoraConfig(
        r=lora["r"],
        lora_alpha=lora["lora_alpha"],
        target_modules=lora["target_modules"],
        base_model_name_or_path=metadata["lyra_rl.base_model"],
    ).save_pretrained(folder)
    state = {PEFT_PREFIX + k: v for k, v in weights.lora.items()}
    return write_weights(folder / SAFETENSORS_WEIGHTS_NAME, state, metadata)


def write_diffusers(out: Path, weights: TrainedWeights, metadata: dict[str, str]) -> Path:
    packed = json.dumps({f"transformer.{k}": v for k, v in weights.lora_config.items()}, sort_keys=True)
    state = {f"transformer.{k}": v for k, v in weights.lora.items()}
    return write_weights(out / LORA_WEIGHTS, state, {**metadata, DIFFUSERS_LORA_METADATA: packed})


def write_wan(out: Path, weights: TrainedWeights, metadata: dict[str, str]) -> Path:
    return write_weights(
        out / "wan_lora.safetensors", wan_lora(weights.lora, weights.lora_config["lora_alpha"]), metadata
    )


#: The LoRA formats: name -> writer.
LORA_WRITERS: dict[str, Callable[[Path, TrainedWeights, dict[str, str]], Path]] = {
    "peft": write_peft,
    "diffusers": write_diffusers,
    "wan": write_wan,
}


def check_formats(config: ExportConfig, weights: TrainedWeights, checkpoint: Path) -> list[str]:
    """The formats to write: the asked ones (each known, each with the weights it needs), else every one the
    checkpoint has weights for."""
    unknown = sorted(set(config.formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"--formats: unknown {unknown}; known: {', '.join(FORMATS)}")
    if config.merged_dtype not in DTYPES:
        raise ValueError(f"--merged_dtype must be one of {', '.join(DTYPES)}, got {config.merged_dtype!r}")
    if not config.formats:
        return [f for f in FORMATS if weights.lora or f not in LORA_FORMATS]
    missing = [f for f in config.formats if f in LORA_FORMATS and not weights.lora]
    if missing:
        raise ValueError(f"{checkpoint} holds no LoRA ({LORA_WEIGHTS}): --formats {' '.join(missing)} need one")
    return list(config.formats)


def export(config: ExportConfig) -> dict:
    """Writes the formats of ``config.checkpoint`` (:func:`check_formats`) and the camera modules; returns what
    ``export.json`` records: the checkpoint, format -> file, the metadata every file carries."""
    if not config.checkpoint or not Path(config.checkpoint).is_dir():
        raise FileNotFoundError(f"--checkpoint {config.checkpoint!r}: no such folder")
    checkpoint = latest_checkpoint(config.checkpoint) or Path(config.checkpoint)
    weights = TrainedWeights.read(checkpoint)
    formats = check_formats(config, weights, checkpoint)
    metadata = export_metadata(weights.lora_config, weights.base_model(config), weights.recorded, weights.step)
    out = Path(config.output_dir or checkpoint / "export")
    written = {name: LORA_WRITERS[name](out, weights, metadata) for name in formats if name in LORA_WRITERS}
    if weights.camera:
        written["camera_modules"] = write_weights(out / CAMERA_WEIGHTS, weights.camera, metadata)
    if {"merged", "merged_wan"} & set(formats):
        merged = merged_dit(weights, config)
        if "merged" in formats:
            written["merged"] = write_weights(out / "merged" / DIT_WEIGHTS, merged, metadata)
        if "merged_wan" in formats:  # safetensors for ComfyUI and DiffSynth; a .ckpt for the seed's torch.load
            original_names = to_wan_keys(merged)
            written["merged_wan"] = write_weights(out / "merged_wan.safetensors", original_names, metadata)
            with atomic_write(out / "merged_wan.ckpt") as tmp:
                torch.save(original_names, tmp)
            written["merged_wan_ckpt"] = out / "merged_wan.ckpt"
    record = {"checkpoint": str(checkpoint), "files": {k: str(v) for k, v in written.items()}, "metadata": metadata}
    with atomic_write(out / "export.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(args: list[str] | None = None) -> dict:
    """The command line; bad input exits with status 2 and one line ``export_lora.py: error: ...``."""
    try:
        (config,) = TrlParser((ExportConfig,)).parse_args_and_config(sys.argv[1:] if args is None else args)
        record = export(config)
    except (ValueError, FileNotFoundError) as error:
        exit_with_error(error)
    for name, path in record["files"].items():
        print(f"{name:15s} {path}")
    return record


if __name__ == "__main__":
    main()
