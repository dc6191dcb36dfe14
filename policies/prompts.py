"""Prompts for Wan2.1's UMT5 text encoder: tokenizers and a file of precomputed prompt embeddings.

The 5.7B-parameter encoder is only needed until every prompt of a run is embedded:
``recipes/encode_prompts.py`` writes the embeddings of a run's prompts to one safetensors file, which
training reads instead of loading the encoder (``--prompt_embeddings``).
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from transformers import AutoTokenizer

WAN_TEXT_LENGTH = 512  # tokens per prompt; Wan zero-pads the embedding of the real tokens to this length


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning (``clean='whitespace'``): HTML entities unescaped, whitespace collapsed (Wan also
    runs ``ftfy.fix_text``, which repairs mis-decoded Unicode; it is not a dependency here)."""
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text))).strip()


class WanTokenizer:
    """A transformers tokenizer used as Wan uses it: cleaned prompts, padded / truncated to ``max_length``.

    Called with prompts, returns ``(ids, mask)``, both ``(B, max_length)`` long tensors.
    """

    def __init__(self, tokenizer, max_length: int = WAN_TEXT_LENGTH):
        self.tokenizer, self.max_length = tokenizer, max_length

    @classmethod
    def from_pretrained(cls, folder: str | Path, max_length: int = WAN_TEXT_LENGTH) -> WanTokenizer:
        return cls(AutoTokenizer.from_pretrained(str(folder)), max_length)

    def __call__(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        out = self.tokenizer(
            [clean_prompt(p) for p in prompts],
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return out["input_ids"], out["attention_mask"]


class ByteTokenizer:
    """UTF-8 bytes as token ids (+3 for pad/eos/unk), for the tiny text encoder that ships no vocabulary."""

    def __init__(self, max_length: int = 32):
        self.max_length = max_length

    def __call__(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        ids = torch.zeros(len(prompts), self.max_length, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, prompt in enumerate(prompts):
            tokens = [x + 3 for x in prompt.encode()[: self.max_length - 1]] + [1]
            ids[b, : len(tokens)] = torch.tensor(tokens)
            mask[b, : len(tokens)] = 1
        return ids, mask


@torch.no_grad()
def embed_prompts(text_encoder, tokenizer, prompts: Sequence[str]) -> Tensor:
    """Prompt embeddings ``(B, L, D)`` on the encoder's device: the encoder's last hidden states with the
    padding positions zeroed, as Wan trims them to the prompt's length and pads with zeros."""
    ids, mask = tokenizer(prompts)
    device = next(text_encoder.parameters()).device
    hidden = text_encoder(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
    return hidden * mask.to(device, hidden.dtype)[..., None]


def _trim_padding(embedding: Tensor) -> Tensor:
    """``(L, D)`` without its trailing all-zero rows (at least one row is kept)."""
    used = embedding.abs().sum(-1).nonzero()
    return embedding[: max(int(used.max()) + 1 if len(used) else 0, 1)].contiguous()


def save_prompt_embeddings(embeddings: dict[str, Tensor], path: str | Path) -> Path:
    """Writes prompt -> ``(L, D)`` zero-padded embeddings as one safetensors file (padding trimmed on disk)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not embeddings:
        raise ValueError("no prompt embeddings to save")
    prompts = sorted(embeddings)
    tensors = {str(k): _trim_padding(embeddings[p]) for k, p in enumerate(prompts)}
    text_length = {int(embeddings[p].shape[0]) for p in prompts}
    if len(text_length) > 1:
        raise ValueError(f"embeddings of different padded lengths: {sorted(text_length)}")
    save_file(tensors, path, metadata={"prompts": json.dumps(prompts), "text_length": str(text_length.pop())})
    return path


def load_prompt_embeddings(path: str | Path) -> dict[str, Tensor]:
    """Reads :func:`save_prompt_embeddings`' file back as prompt -> ``(L, D)`` embeddings, zero-padded to ``L``."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        prompts, text_length = json.loads(metadata["prompts"]), int(metadata["text_length"])
        embeddings = {}
        for k, prompt in enumerate(prompts):
            trimmed = f.get_tensor(str(k))
            embeddings[prompt] = torch.nn.functional.pad(trimmed, (0, 0, 0, text_length - len(trimmed)))
    return embeddings
