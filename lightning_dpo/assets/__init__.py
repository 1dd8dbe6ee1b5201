"""What a real model's experiment needs and the project ships or builds itself, offline: prompts,
labelled sentences for a probe, a natural held-out text (texts.py, natural_text.txt), and the
built probe, pairs and held-out prompts (builder.py, referenced from configs as ${assets:<file>})."""

from lightning_dpo.assets.builder import ModelAssets

__all__ = ["ModelAssets"]
