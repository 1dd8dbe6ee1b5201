"""The embedded toy toxicity world (demo and test bed)."""

from lightning_dpo.toy.words import INSULTS
from lightning_dpo.toy.world import ToyWorld

__all__ = ["INSULTS", "ToyWorld"]
