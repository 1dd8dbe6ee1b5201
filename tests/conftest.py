"""Shared fixtures: an offline environment, a test cache, the small toy world, a character tokenizer.

Helpers live in tests/helpers/ (configs, models, data, signals), imported as `helpers.<module>`.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

from helpers.configs import SMALL_WORLD, compose_train
from helpers.data import CharTokenizer
from lightning_dpo.cli import register_all_resolvers


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = Path(os.environ.get("LIGHTNING_DPO_TEST_CACHE") or tmp_path_factory.mktemp("cache"))
    os.environ["LIGHTNING_DPO_CACHE"] = str(cache)
    register_all_resolvers()
    return cache


@pytest.fixture(scope="session")
def small_world(_cache_dir: Path):
    """The toy world with SMALL_WORLD parameters, built once per session."""
    from lightning_dpo.toy import ToyWorld

    cfg = compose_train(SMALL_WORLD)
    params = {k: v for k, v in cfg.world.items()}
    return ToyWorld(**params).build()


@pytest.fixture
def char_tokenizer() -> CharTokenizer:
    return CharTokenizer()
