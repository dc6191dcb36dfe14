"""Precompute the prompt embeddings of a run, so that training never loads the 5.7B-parameter text encoder.

Encodes every prompt the conditions can give (and the negative prompt) with Wan2.1's UMT5 encoder and
writes them to one safetensors file; pass it to training as ``--prompt_embeddings``.

    python recipes/encode_prompts.py --wan_model_path models/Wan-AI/Wan2.1-T2V-1.3B --conditions data/manifest.jsonl \
        --output outputs/prompt_embeddings.safetensors
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm
from trl import TrlParser

from lyra_rl.data.conditions import condition_prompts
from policies.loading import load_text_encoder
from policies.prompts import embed_prompts, save_prompt_embeddings
from policies.wan_camera import WanCameraPolicy


@dataclass
class EncodePromptsConfig:
    """Arguments of prompt encoding.

    > conditions, negative_prompt, policy, wan_model_path, output, batch_size.
    """

    conditions: str = field(
        default="procedural",
        metadata={
            "help": "'procedural', a .jsonl manifest, a folder of images with <stem>.txt prompts, or a MultiCamVideo "
            "folder."
        },
    )
    negative_prompt: str = field(
        default="", metadata={"help": "Also encoded (the unconditional branch of classifier-free guidance)."}
    )
    policy: str = field(
        default="tiny", metadata={"help": "'tiny' (its built-in encoder) or 'wan2.1-1.3b' (needs wan_model_path)."}
    )
    wan_model_path: str | None = field(
        default=None, metadata={"help": "Wan2.1 folder holding the text encoder (original or diffusers layout)."}
    )
    output: str = field(
        default="outputs/prompt_embeddings.safetensors", metadata={"help": "The safetensors file written."}
    )
    batch_size: int = field(default=8, metadata={"help": "Prompts per encoder call."})


def main(config: EncodePromptsConfig) -> Path:
    if config.wan_model_path is not None:
        text_encoder, tokenizer = load_text_encoder(config.wan_model_path)
    elif config.policy == "tiny":
        tiny = WanCameraPolicy.from_config("tiny")
        text_encoder, tokenizer = tiny.text_encoder, tiny.tokenizer
    else:
        raise ValueError(f"the {config.policy} policy has no built-in text encoder: give --wan_model_path")
    if torch.cuda.is_available():
        text_encoder.to("cuda")
    prompts = sorted({*condition_prompts(config.conditions), config.negative_prompt})
    embeddings = {}
    for start in tqdm(range(0, len(prompts), config.batch_size), desc="encoding prompts", unit="batch"):
        batch = prompts[start : start + config.batch_size]
        embeddings.update(zip(batch, embed_prompts(text_encoder, tokenizer, batch).cpu()))
    return save_prompt_embeddings(embeddings, config.output)


if __name__ == "__main__":
    (config,) = TrlParser((EncodePromptsConfig,)).parse_args_and_config()
    print(main(config))
