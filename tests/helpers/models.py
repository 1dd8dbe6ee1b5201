"""Tiny models built from a config (no download), and the exact GPT-2 tokenizer kept under tests/assets."""

from __future__ import annotations

from pathlib import Path

import torch

GPT2_TOKENIZER = Path(__file__).resolve().parents[1] / "assets" / "gpt2_tokenizer"  # the exact GPT-2 tokenizer (see its README)


def tiny_gpt2_config(**overrides) -> dict:
    config = {"model_type": "gpt2", "vocab_size": 96, "n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_inner": 64}
    config.update(overrides)
    return config


def tiny_llama_config(**overrides) -> dict:
    config = {
        "model_type": "llama",
        "vocab_size": 96,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
    }
    config.update(overrides)
    return config


def toy_width_decoder(model_type: str, vocab_size: int, **overrides) -> dict:
    """A Llama-family decoder (llama, mistral, gemma, gemma2) at the toy world's width (its probes are 64 wide)."""
    return tiny_llama_config(
        model_type=model_type, vocab_size=vocab_size, hidden_size=64, intermediate_size=96, max_position_embeddings=256, **overrides
    )


def build_tiny(config: dict, seed: int = 0):
    from lightning_dpo.model.loading import load_causal_lm

    torch.manual_seed(seed)
    return load_causal_lm(config=config)
