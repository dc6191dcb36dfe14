"""Wan2.1's text encoder: the original checkpoint's math, both folder layouts, tokenizers, embedding files."""

import math

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers
from tokenizers.processors import TemplateProcessing
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from lyra_rl.camera import Cameras, default_intrinsics, trajectory_preset
from policies.loading import (
    WAN_T5_CHECKPOINT,
    WAN_T5_TOKENIZER,
    convert_wan_t5_to_umt5,
    load_pretrained,
    load_text_encoder,
)
from policies.prompts import WanTokenizer, clean_prompt, load_prompt_embeddings, save_prompt_embeddings
from policies.wan_camera import WanCameraPolicy

LAYERS, DIM, HEADS, FFN, VOCAB = 2, 32, 4, 48, 40


def wan_t5_state(seed=0):
    """A random Wan T5 encoder state dict with the original checkpoint's key names."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    state = {"token_embedding.weight": rand(VOCAB, DIM, scale=1.0), "norm.weight": 1 + rand(DIM)}
    for n in range(LAYERS):
        state.update(
            {
                f"blocks.{n}.norm1.weight": 1 + rand(DIM),
                f"blocks.{n}.norm2.weight": 1 + rand(DIM),
                **{f"blocks.{n}.attn.{p}.weight": rand(DIM, DIM) for p in "qkvo"},
                f"blocks.{n}.pos_embedding.embedding.weight": rand(32, HEADS, scale=1.0),
                f"blocks.{n}.ffn.gate.0.weight": rand(FFN, DIM),
                f"blocks.{n}.ffn.fc1.weight": rand(FFN, DIM),
                f"blocks.{n}.ffn.fc2.weight": rand(DIM, FFN),
            }
        )
    return state


def t5_buckets(length, num_buckets=32, max_distance=128):
    """Wan's bidirectional relative-position buckets (wan/modules/t5.py, T5RelativeEmbedding)."""
    rel = torch.arange(length)[None, :] - torch.arange(length)[:, None]
    num_buckets //= 2
    buckets = (rel > 0).long() * num_buckets
    rel = rel.abs()
    max_exact = num_buckets // 2
    large = (
        max_exact
        + (
            torch.log(rel.float().clamp(min=1) / max_exact)
            / math.log(max_distance / max_exact)
            * (num_buckets - max_exact)
        ).long()
    )
    return buckets + torch.where(rel < max_exact, rel, large.clamp(max=num_buckets - 1))


def wan_t5_forward(state, ids, mask):
    """Wan's T5 encoder written out from its source: RMS norms, unscaled attention plus a per-layer
    relative-position bias, feed-forward ``fc2(fc1(x) * gelu_tanh(gate(x)))``, final norm."""

    def rms(x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * weight

    B, L = ids.shape
    x = state["token_embedding.weight"][ids]
    for n in range(LAYERS):
        p = f"blocks.{n}."
        h = rms(x, state[p + "norm1.weight"])
        q, k, v = ((h @ state[p + f"attn.{c}.weight"].T).view(B, L, HEADS, -1) for c in "qkv")
        bias = state[p + "pos_embedding.embedding.weight"][t5_buckets(L)].permute(2, 0, 1)[None]
        logits = torch.einsum("binc,bjnc->bnij", q, k) + bias
        logits = logits.masked_fill(mask[:, None, None, :] == 0, torch.finfo(logits.dtype).min)
        attn = torch.einsum("bnij,bjnc->binc", logits.softmax(-1), v).reshape(B, L, -1)
        x = x + attn @ state[p + "attn.o.weight"].T
        h = rms(x, state[p + "norm2.weight"])
        gate = F.gelu(h @ state[p + "ffn.gate.0.weight"].T, approximate="tanh")
        x = x + ((h @ state[p + "ffn.fc1.weight"].T) * gate) @ state[p + "ffn.fc2.weight"].T
    return rms(x, state["norm.weight"])


def write_tokenizer(folder):
    words = "a room with boxes the camera moves forward left right".split()
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(folder)


def test_original_checkpoint_reproduces_wan_t5(tmp_path):
    state = wan_t5_state()
    torch.save({k: v.to(torch.bfloat16) for k, v in state.items()}, tmp_path / WAN_T5_CHECKPOINT)  # as released: bf16
    write_tokenizer(tmp_path / WAN_T5_TOKENIZER)
    encoder, tokenizer = load_text_encoder(tmp_path, dtype=torch.float32)
    assert encoder.config.num_layers == LAYERS and encoder.config.num_heads == HEADS
    ids = torch.randint(3, VOCAB, (2, 24), generator=torch.Generator().manual_seed(1))  # > 8 apart: log buckets too
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0
    expected = wan_t5_forward({k: v.to(torch.bfloat16).float() for k, v in state.items()}, ids, mask)
    got = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    valid = mask.bool()
    torch.testing.assert_close(got[valid], expected[valid], atol=1e-4, rtol=1e-4)
    ids, mask = tokenizer(["a  room with &amp;amp; boxes"])
    assert ids.shape == (1, 512) and mask.sum() == 6  # a room with & boxes </s> (& is unknown)


def test_diffusers_text_encoder_folder(tmp_path):
    model = UMT5EncoderModel(
        UMT5Config(
            vocab_size=VOCAB,
            d_model=DIM,
            d_kv=8,
            d_ff=FFN,
            num_layers=LAYERS,
            num_heads=HEADS,
            feed_forward_proj="gated-gelu",
        )
    )
    model.save_pretrained(tmp_path / "text_encoder")
    write_tokenizer(tmp_path / "tokenizer")
    encoder, tokenizer = load_text_encoder(tmp_path, dtype=torch.float32)
    ids, mask = tokenizer(["a room"])
    torch.testing.assert_close(
        encoder(input_ids=ids, attention_mask=mask).last_hidden_state,
        model.eval()(input_ids=ids, attention_mask=mask).last_hidden_state,
    )
    with pytest.raises(FileNotFoundError, match="no Wan2.1 text encoder"):
        load_text_encoder(tmp_path / "text_encoder")


def test_converter_names_foreign_keys():
    with pytest.raises(KeyError, match="blocks.0.attn.rope"):
        convert_wan_t5_to_umt5({**wan_t5_state(), "blocks.0.attn.rope.weight": torch.zeros(1)})


def test_clean_prompt_and_tokenizer_padding(tmp_path):
    assert clean_prompt("  a\n room &amp;amp;\tboxes ") == "a room & boxes"
    write_tokenizer(tmp_path)
    ids, mask = WanTokenizer.from_pretrained(tmp_path, max_length=8)(
        ["a room", "a room with boxes the camera moves forward left"]
    )
    assert ids.shape == mask.shape == (2, 8)
    assert mask[0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0] and mask[1].all()  # the long prompt is truncated


def test_prompt_embeddings_file_round_trip_and_training_without_the_encoder(tmp_path):
    policy = WanCameraPolicy.from_config("tiny")
    prompts = ["a room", "a garden with a long description"]
    embeddings = policy.encode_prompts(prompts)
    path = save_prompt_embeddings(dict(zip(prompts, embeddings)), tmp_path / "prompts.safetensors")
    loaded = load_prompt_embeddings(path)
    assert set(loaded) == set(prompts)
    for prompt, embedding in zip(prompts, embeddings):
        assert torch.equal(loaded[prompt], embedding)
    fresh = WanCameraPolicy.from_config("tiny")
    fresh.text_encoder = None
    fresh.add_prompt_embeddings(loaded)
    cameras = Cameras.from_trajectory(trajectory_preset("left", 5), default_intrinsics(32, 48))
    torch.testing.assert_close(fresh.condition(torch.rand(1, 3, 32, 48), ["a room"], cameras).text, embeddings[:1])


def test_load_pretrained_brings_the_text_encoder(tmp_path):
    from test_loading import base_state, original_keys

    source = WanCameraPolicy.from_config("tiny", seed=1)
    from safetensors.torch import save_file

    save_file(original_keys(base_state(source)), tmp_path / "diffusion_pytorch_model.safetensors")
    torch.save(source.vae.state_dict(), tmp_path / "Wan2.1_VAE.pth")
    torch.save(wan_t5_state(), tmp_path / WAN_T5_CHECKPOINT)
    write_tokenizer(tmp_path / WAN_T5_TOKENIZER)
    policy = WanCameraPolicy.from_config("tiny", seed=2)
    policy.text_encoder = None
    load_pretrained(policy, tmp_path)  # as with --prompt_embeddings: the 4.7B encoder is not loaded
    assert policy.text_encoder is None
    load_pretrained(policy, tmp_path, text_encoder=True)
    assert policy.encode_prompts(["a room"]).shape == (1, 512, DIM)
    assert not any(p.requires_grad for p in policy.text_encoder.parameters()) and not policy.text_encoder.training
    policy.place("meta")  # any accelerator: the encoder stays behind on the CPU
    assert {p.device.type for p in policy.dit.parameters()} == {"meta"}
    assert {p.device.type for p in policy.text_encoder.parameters()} == {"cpu"}
