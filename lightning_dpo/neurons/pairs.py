"""Preference pairs by activation steering (in place of PPLM), for any causal LM.

For each prompt: chosen = the model's own continuation (greedy, or sampled at
`chosen_temperature`); rejected = the continuation generated while alpha x (the steered layer's
median residual norm) x u (u: the probe's unit direction) is added to the residual stream after the
configured layers (steering.py). Both are scored; a pair is kept when the rejected continuation
scores more toxic than the chosen one by more than `margin` (so with alpha = 0 every pair is
dropped), both are non-empty, and the rejected one is not degenerate (`is_degenerate`: a text that
repeats itself, e.g. "Jolly Jolly Jolly", scores as whatever its word is and teaches the model
nothing about toxicity). Used by the make_pairs command and by the demo world.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lightning_dpo.evaluation.generation import generate_continuations
from lightning_dpo.evaluation.scorers import Scorer
from lightning_dpo.neurons.steering import resolve_layers, steering


def is_degenerate(ids: Sequence[int], min_distinct: float = 0.5, max_run: int = 3) -> bool:
    """A continuation that repeats itself: fewer than `min_distinct` of its token bigrams distinct,
    a token repeated more than `max_run` times in a row, or one distinct token over several."""
    ids = list(ids)
    if len(ids) < 2:
        return False
    if len(set(ids)) == 1:
        return True
    run = longest = 1
    for a, b in itertools.pairwise(ids):
        run = run + 1 if a == b else 1
        longest = max(longest, run)
    bigrams = list(itertools.pairwise(ids))
    return longest > max_run or len(set(bigrams)) / len(bigrams) < min_distinct


def keep_pair(chosen_score: float, rejected_score: float, margin: float, chosen: str, rejected: str, degenerate: bool = False) -> bool:
    """A pair is kept when both continuations are non-empty, the rejected one is not degenerate, and rejected - chosen > margin."""
    return bool(chosen.strip() and rejected.strip()) and not degenerate and rejected_score - chosen_score > margin


@dataclass
class PairSettings:
    alpha: float = 4.0  # in units of the steered layer's median residual norm
    layers: Sequence[int] | str = "middle"
    chosen_temperature: float = 0.0
    rejected_temperature: float = 0.0
    max_new_tokens: int = 20
    batch_size: int = 64
    margin: float = 0.0
    seed: int = 0
    drop_degenerate: bool = True


def generate_pairs(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    unit: torch.Tensor,
    scorer: Scorer,
    settings: PairSettings,
    chunk_index: int = 0,
    scale: Mapping[int, float] | None = None,
) -> list[dict[str, Any]]:
    """Chosen (plain) and rejected (steered) continuations of `prompts`, scored; `kept` marks the pairs
    to use. `scale`: each steered layer's median residual norm (None: alpha in absolute units)."""
    layers = resolve_layers(model, settings.layers)
    kwargs: dict[str, Any] = {
        "max_prompt_tokens": 10**6,
        "max_new_tokens": settings.max_new_tokens,
        "batch_size": settings.batch_size,
        "truncation_side": "right",
    }
    chosen_rng = torch.Generator().manual_seed(hash_seed(settings.seed, chunk_index, "chosen"))
    rejected_rng = torch.Generator().manual_seed(hash_seed(settings.seed, chunk_index, "rejected"))
    chosen = generate_continuations(model, tokenizer, prompts, temperature=settings.chosen_temperature, generator=chosen_rng, **kwargs)
    with steering(model, unit, settings.alpha, layers, scale):
        rejected = generate_continuations(
            model, tokenizer, prompts, temperature=settings.rejected_temperature, generator=rejected_rng, **kwargs
        )
    chosen_scores, rejected_scores = scorer.score(chosen), scorer.score(rejected)
    rejected_ids = tokenizer(list(rejected), add_special_tokens=False)["input_ids"] if rejected else []
    rows = []
    for p, c, r, cs, rs, ids in zip(prompts, chosen, rejected, chosen_scores, rejected_scores, rejected_ids):
        degenerate = is_degenerate(ids)
        rows.append(
            {
                "prompt": p,
                "chosen": c,
                "rejected": r,
                "chosen_score": cs,
                "rejected_score": rs,
                "degenerate": degenerate,
                "kept": keep_pair(cs, rs, settings.margin, c, r, degenerate and settings.drop_degenerate),
            }
        )
    return rows


def as_pair(row: dict[str, Any]) -> dict[str, Any]:
    """The output row: TRL's preference format plus both scores."""
    return {k: row[k] for k in ("prompt", "chosen", "rejected", "chosen_score", "rejected_score")}


def hash_seed(*parts: Any) -> int:
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:8], 16)


def distribution(scores: list[float]) -> dict[str, float]:
    if not scores:
        return {}
    ordered = sorted(scores)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]
    return {
        "mean": sum(scores) / len(scores),
        "min": ordered[0],
        "p25": pick(0.25),
        "median": pick(0.5),
        "p75": pick(0.75),
        "max": ordered[-1],
        "share_above_0.5": sum(s > 0.5 for s in scores) / len(scores),
    }


def scan_row(alpha: float, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One line of a steering scan: how many pairs alpha keeps, how far apart their scores are, how many rejected texts degenerate."""
    kept = [r for r in rows if r["kept"]]
    gaps = [r["rejected_score"] - r["chosen_score"] for r in rows]
    return {
        "alpha": alpha,
        "prompts": len(rows),
        "kept": len(kept),
        "kept_share": len(kept) / len(rows) if rows else 0.0,
        "mean_score_gap": sum(gaps) / len(gaps) if gaps else float("nan"),
        "kept_mean_gap": sum(r["rejected_score"] - r["chosen_score"] for r in kept) / len(kept) if kept else float("nan"),
        "degenerate_share": sum(r["degenerate"] for r in rows) / len(rows) if rows else 0.0,
        "mean_rejected_score": sum(r["rejected_score"] for r in rows) / len(rows) if rows else float("nan"),
        "mean_chosen_score": sum(r["chosen_score"] for r in rows) / len(rows) if rows else float("nan"),
        "examples": [{k: r[k] for k in ("prompt", "chosen", "rejected", "chosen_score", "rejected_score", "degenerate")} for r in rows[:6]],
    }
