"""Preference pairs by activation steering (in place of PPLM), for any causal LM.

For each prompt: chosen = the model's own continuation (greedy, or sampled at
`chosen_temperature`); rejected = the continuation generated while `alpha * u` (u: the probe's
unit direction) is added to the residual stream after the configured layers (steering.py). Both
are scored; a pair is kept when the rejected continuation scores more toxic than the chosen one by
more than `margin` (so with alpha = 0 every pair is dropped). Used by the make_pairs command and
by the demo world.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from lightning_dpo.evaluation.generation import generate_continuations
from lightning_dpo.evaluation.scorers import Scorer
from lightning_dpo.neurons.steering import resolve_layers, steering


def keep_pair(chosen_score: float, rejected_score: float, margin: float, chosen: str, rejected: str) -> bool:
    """A pair is kept when both continuations are non-empty and rejected - chosen > margin."""
    return bool(chosen.strip() and rejected.strip()) and rejected_score - chosen_score > margin


@dataclass
class PairSettings:
    alpha: float = 8.0
    layers: Sequence[int] | str = "middle"
    chosen_temperature: float = 0.0
    rejected_temperature: float = 0.0
    max_new_tokens: int = 20
    batch_size: int = 64
    margin: float = 0.0
    seed: int = 0


def generate_pairs(
    model: nn.Module, tokenizer: Any, prompts: Sequence[str], unit: torch.Tensor, scorer: Scorer, settings: PairSettings, chunk_index: int = 0
) -> list[dict[str, Any]]:
    """Chosen (plain) and rejected (steered) continuations of `prompts`, scored; `kept` marks the pairs to use."""
    layers = resolve_layers(model, settings.layers)
    kwargs = dict(max_prompt_tokens=10**6, max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size, truncation_side="right")
    chosen_rng = torch.Generator().manual_seed(hash_seed(settings.seed, chunk_index, "chosen"))
    rejected_rng = torch.Generator().manual_seed(hash_seed(settings.seed, chunk_index, "rejected"))
    chosen = generate_continuations(model, tokenizer, prompts, temperature=settings.chosen_temperature, generator=chosen_rng, **kwargs)
    with steering(model, unit, settings.alpha, layers):
        rejected = generate_continuations(model, tokenizer, prompts, temperature=settings.rejected_temperature, generator=rejected_rng, **kwargs)
    chosen_scores, rejected_scores = scorer.score(chosen), scorer.score(rejected)
    return [
        {"prompt": p, "chosen": c, "rejected": r, "chosen_score": cs, "rejected_score": rs,
         "kept": keep_pair(cs, rs, settings.margin, c, r)}
        for p, c, r, cs, rs in zip(prompts, chosen, rejected, chosen_scores, rejected_scores)
    ]


def as_pair(row: dict[str, Any]) -> dict[str, Any]:
    """The output row: TRL's preference format plus both scores."""
    return {k: row[k] for k in ("prompt", "chosen", "rejected", "chosen_score", "rejected_score")}


def hash_seed(*parts: Any) -> int:
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:8], 16)


def distribution(scores: list[float]) -> dict[str, float]:
    if not scores:
        return {}
    ordered = sorted(scores)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"mean": sum(scores) / len(scores), "min": ordered[0], "p25": pick(0.25), "median": pick(0.5), "p75": pick(0.75),
            "max": ordered[-1], "share_above_0.5": sum(s > 0.5 for s in scores) / len(scores)}
