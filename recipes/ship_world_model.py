"""Ship an SFT checkpoint of the embedded world model with the package: its DiT weights, its training log and
a model card (``policies/embedded/``), which ``--dit_path embedded`` then loads.

    python recipes/ship_world_model.py --checkpoint outputs/sft_embedded/checkpoint-2000 \
        --bar bar.txt          # the output of benchmarks/world_model_bar.py on that checkpoint

The card records what a user needs to trust and reproduce the weights: the architecture, the file's size and
SHA-256, the recipe and config it was trained with, the steps, the CPU time, the seed, and the held-out
metrics of ``benchmarks/world_model_bar.py``. ``tests/policies/test_shipped_weights.py`` checks the card
against the file.
"""

from __future__ import annotations

import csv
import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from trl import TrlParser

from lyra_rl.training.checkpoint import read_trainer_state
from policies.loading import SHIPPED_DITS
from policies.training import exit_with_error
from policies.wan_camera import CODEC_CONFIGS, DIT_WEIGHTS, TRANSFORMER_CONFIGS

LOG_COLUMNS = ("step", "loss", "grad_norm", "learning_rate", "time/conditions", "time/update")


@dataclass
class ShipConfig:
    """Arguments of shipping.

    > checkpoint, bar, recipe_config.
    """

    checkpoint: str = field(metadata={"help": "An SFT checkpoint folder of the embedded policy (full fine-tuning)."})
    bar: str = field(metadata={"help": "The output of benchmarks/world_model_bar.py on that checkpoint."})
    recipe_config: str = field(
        default="recipes/configs/sft_embedded.yaml", metadata={"help": "The config the checkpoint was trained with."}
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_log(history: list[dict[str, float]], path: Path) -> list[str]:
    """The history as CSV: the training columns, then every evaluation metric logged; returns the columns."""
    evaluated = sorted({k for row in history for k in row if k.startswith("eval/")})
    columns = [*LOG_COLUMNS, *evaluated]
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
    return columns


def table(rows: dict[str, object]) -> str:
    """A two-column Markdown table without a header."""
    return "\n".join(["| | |", "|---|---|", *(f"| {key} | {value} |" for key, value in rows.items())])


def model_card(state: dict, checkpoint: Path, weights: Path, bar: str, recipe_config: Path) -> str:
    history = state["history"]
    step_seconds = [row.get("time/conditions", 0.0) + row.get("time/update", 0.0) for row in history]  # wall time
    config = yaml.safe_load(recipe_config.read_text())
    last_eval = next(row for row in reversed(history) if "eval/loss" in row)
    architecture = {**TRANSFORMER_CONFIGS["embedded"], "codec": CODEC_CONFIGS["embedded"]}
    weights_table = {
        "file": f"`{weights.name}` (diffusers `WanTransformer3DModel` keys, float32)",
        "bytes": weights.stat().st_size,
        "sha256": f"`{sha256(weights)}`",
        "architecture": ", ".join(f"{k}={v}" for k, v in architecture.items()),
        "camera layout": "dense (conditioning frame, frame 0 warped into each commanded camera, Plücker rays)",
        "text encoder": "the tiny random UMT5 built from the seed (not trained; the prompts are the procedural ones)",
    }
    training_table = {
        "recipe": f"`accelerate launch recipes/sft.py --config {recipe_config}` (resumed with `--resume true`)",
        "data": "procedural rooms (`lyra_rl.data.scenes`, scene `seed * 100003 + i`) rendered on the fly along random "
        f"smooth camera paths, {config['num_frames']} frames at {config['height']}x{config['width']}",
        "steps": state["step"],
        "batch": f"{config['conditions_per_step']} clips per step",
        "wall time": f"{sum(step_seconds) / 3600:.1f} hours of data and updates on 2 CPU cores shared with other work",
        "seed": config["seed"],
        "final losses": f"train {history[-1]['loss']:.4f}, held-out {last_eval['eval/loss']:.4f} "
        f"(step {last_eval['step']})",
        "log": f"`training_log.csv` (every step; evaluation metrics every {config['save_steps']} steps)",
    }
    return f"""# The embedded world model

A camera-conditioned Wan2.1 DiT small enough to train and run on a CPU: lyra-rl's default policy for the main
job (`bash scripts/train.sh`), where GRPO with LoRA adapters makes it follow its camera commands better.
Load it with `PolicyConfig(policy="embedded", dit_path="embedded")` (docs/policies.md).

## Weights

{table(weights_table)}

## Training

{table(training_table)}

## Held-out metrics

Scenes and paths of seed {config["seed"] + 1}, never trained on (`python benchmarks/world_model_bar.py
--checkpoint {checkpoint.name}`):

```
{bar.strip()}
```
"""


def main() -> None:
    (config,) = TrlParser((ShipConfig,)).parse_args_and_config()
    checkpoint, bar = Path(config.checkpoint), Path(config.bar)
    for path in (checkpoint / DIT_WEIGHTS, bar, Path(config.recipe_config)):
        if not path.is_file():
            exit_with_error(FileNotFoundError(f"{path}: no such file"))
    state = read_trainer_state(checkpoint)
    weights = SHIPPED_DITS["embedded"]
    weights.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(checkpoint / DIT_WEIGHTS, weights)
    write_log(state["history"], weights.parent / "training_log.csv")
    card = weights.parent / "README.md"
    card.write_text(model_card(state, checkpoint, weights, bar.read_text(), Path(config.recipe_config)))
    print(f"Wrote {weights.parent}/: {weights.name}, training_log.csv, README.md")


if __name__ == "__main__":
    main()
