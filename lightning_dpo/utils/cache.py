"""The project's cache folder: the demo worlds, dequantized GGUF models, precomputed reference
log-probs. `$LIGHTNING_DPO_CACHE`, else `~/.cache/lightning_dpo` (conf/paths/default.yaml's cache_dir)."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> str:
    return os.environ.get("LIGHTNING_DPO_CACHE") or str(Path(os.environ.get("HOME", "/tmp")) / ".cache" / "lightning_dpo")
