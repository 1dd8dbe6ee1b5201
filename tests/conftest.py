"""Shared fixtures: offline environment, tiny models, a small toy world, composed Hydra configs."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from lightning_dpo.toy.config import register_toy_resolver
from lightning_dpo.utils.config import register_resolvers

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
GPT2_TOKENIZER = ROOT / "tests" / "assets" / "gpt2_tokenizer"  # the exact GPT-2 tokenizer (see its README)

# A small world for fast tests (the default world is used by the slow demo test).
SMALL_WORLD = [
    "world.corpus_size=1500", "world.num_pairs=240", "world.num_eval_prompts=32", "world.vocab_size=600",
    "world.n_layer=2", "world.n_embd=64", "world.n_head=4", "world.n_inner=128", "world.pretrain_steps=150",
]
# A short, fully logged run on that world.
SHORT_RUN = [
    "trainer.accelerator=cpu", "trainer.max_steps=8", "trainer.val_check_interval=4", "trainer.log_every_n_steps=1",
    "data.batch_size=4", "data.eval_batch_size=8", "data.val_size=16",
    "callbacks.neuron_dynamics.every_n_steps=2", "callbacks.toxicity_eval.every_n_steps=4",
    "callbacks.toxicity_eval.max_prompts=16", "optim.warmup_steps=2",
]


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = Path(os.environ.get("LIGHTNING_DPO_TEST_CACHE") or tmp_path_factory.mktemp("cache"))
    os.environ["LIGHTNING_DPO_CACHE"] = str(cache)
    register_resolvers()
    register_toy_resolver()
    return cache


def compose_train(overrides: list[str], run_dir: Path | None = None):
    """The train config as `python -m lightning_dpo.train <overrides>` would see it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        extra = [f"paths.output_dir={run_dir}"] if run_dir is not None else ["paths.output_dir=/tmp/unused"]
        cfg = compose(config_name="train", overrides=list(overrides) + extra)
    GlobalHydra.instance().clear()
    return cfg


def compose_command(name: str, overrides: list[str]):
    """A command's config (conf/<name>.yaml) as `python -m lightning_dpo.<name> <overrides>` sees it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=name, overrides=list(overrides))
    GlobalHydra.instance().clear()
    return cfg


@pytest.fixture(scope="session")
def small_world(_cache_dir: Path):
    """The toy world with SMALL_WORLD parameters, built once per session."""
    from lightning_dpo.toy import ToyWorld

    cfg = compose_train(SMALL_WORLD)
    params = {k: v for k, v in cfg.world.items()}
    return ToyWorld(**params).build()


def tiny_gpt2_config(**overrides) -> dict:
    config = {"model_type": "gpt2", "vocab_size": 96, "n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_inner": 64}
    config.update(overrides)
    return config


def tiny_llama_config(**overrides) -> dict:
    config = {
        "model_type": "llama", "vocab_size": 96, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
    }
    config.update(overrides)
    return config


def build_tiny(config: dict, seed: int = 0):
    from lightning_dpo.model.loading import load_causal_lm

    torch.manual_seed(seed)
    return load_causal_lm(config=config)


class CharTokenizer:
    """A dependency-free tokenizer for unit tests: one id per byte, EOS = 0 (also pad)."""

    eos_token_id = 0
    pad_token_id = 0
    bos_token_id = None
    add_bos_token = False
    eos_token = "<eos>"
    pad_token = "<eos>"

    def __call__(self, texts, add_special_tokens=True, **kwargs):
        if isinstance(texts, str):
            return {"input_ids": [1 + (b % 90) for b in texts.encode()]}
        return {"input_ids": [[1 + (b % 90) for b in t.encode()] for t in texts]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids if i)


@pytest.fixture
def char_tokenizer() -> CharTokenizer:
    return CharTokenizer()


def write_pairs(path: Path, n: int = 24, seed: int = 0) -> Path:
    import random

    rng = random.Random(seed)
    with open(path, "w") as handle:
        for i in range(n):
            handle.write(json.dumps({
                "prompt": f"prompt {i} " + "ab"[rng.randint(0, 1)] * rng.randint(1, 5),
                "chosen": " nice" + " ok" * rng.randint(0, 3),
                "rejected": " bad" + " no" * rng.randint(0, 3),
            }) + "\n")
    return path
