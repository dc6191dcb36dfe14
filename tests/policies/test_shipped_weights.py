"""The embedded world model that ships with the package: its model card describes the file beside it, and the
weights load strictly into the architecture the card names."""

import csv
import hashlib
import re

import pytest
import torch

from policies import PolicyConfig, build_policy
from policies.loading import SHIPPED_DITS, read_state_dict
from policies.wan_camera import CODEC_CONFIGS, TRANSFORMER_CONFIGS

WEIGHTS = SHIPPED_DITS["embedded"]
CARD = WEIGHTS.parent / "README.md"
LOG = WEIGHTS.parent / "training_log.csv"


def card_row(name: str) -> str:
    """The value of the card's table row ``| name | value |``."""
    match = re.search(rf"^\| {re.escape(name)} \| (.+) \|$", CARD.read_text(), re.MULTILINE)
    assert match, f"the model card has no {name!r} row"
    return match.group(1).strip("`")


def test_the_card_describes_the_file():
    """Size, SHA-256 and architecture are the shipped file's; the steps are the training log's; the held-out
    bar the card reports is met (issue 11: >= 0.9 on 50 clips, something left for RL)."""
    assert int(card_row("bytes")) == WEIGHTS.stat().st_size <= 20 * 2**20
    assert card_row("sha256") == hashlib.sha256(WEIGHTS.read_bytes()).hexdigest()
    architecture = {**TRANSFORMER_CONFIGS["embedded"], "codec": CODEC_CONFIGS["embedded"]}
    assert card_row("architecture") == ", ".join(f"{k}={v}" for k, v in architecture.items())
    with LOG.open() as file:
        steps = [int(row["step"]) for row in csv.DictReader(file)]
    assert steps == list(range(1, int(card_row("steps")) + 1))
    output = CARD.read_text().split("```")[-2].strip()  # benchmarks/world_model_bar.py's
    assert int(re.match(r"(\d+) held-out clips", output).group(1)) >= 50
    bar = {key: float(value) for key, value in (item.split("=") for item in output.splitlines()[-1].split())}
    assert bar.keys() == {"true_closer", "pose_ok", "epipolar_ok", "group_nonzero", "rot_err_deg"}
    assert min(bar["true_closer"], bar["pose_ok"], bar["epipolar_ok"], bar["group_nonzero"]) >= 0.9
    assert bar["rot_err_deg"] > 0


@pytest.mark.parametrize("lora_r", [0, 16])
def test_the_weights_load_into_the_embedded_policy(lora_r):
    """Every key of the file is a weight of the embedded DiT and every weight of the DiT is in the file (the
    loader is strict), for full fine-tuning and under LoRA adapters (the main job's)."""
    config = PolicyConfig(policy="embedded", dit_path="embedded", lora_r=lora_r, train_transformer=not lora_r)
    policy = build_policy(config)
    shipped = read_state_dict(WEIGHTS)
    state = {k.replace(".base_layer", ""): v for k, v in policy.transformer.state_dict().items() if "lora_" not in k}
    assert state.keys() == shipped.keys()
    for key, value in shipped.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0)
