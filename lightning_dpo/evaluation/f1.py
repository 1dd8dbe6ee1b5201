"""Token-level F1 of greedy continuations against gold continuations (continuation tokens only).

F1 = 2 P R / (P + R) with P = overlap / len(prediction), R = overlap / len(gold) and overlap the
multiset intersection of token ids (as Lee et al.'s metric, but without the prompt tokens that the
published code left in the prediction).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from lightning_dpo.evaluation.generation import generate_continuations


def token_f1(prediction: Sequence[int], gold: Sequence[int]) -> float:
    overlap = sum((Counter(prediction) & Counter(gold)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(prediction), overlap / len(gold)
    return 2 * precision * recall / (precision + recall)


def continuation_f1(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    golds: Sequence[str],
    max_prompt_tokens: int = 32,
    max_new_tokens: int = 20,
    max_gold_tokens: int = 52,
    batch_size: int = 64,
    all_finished: Callable[[bool], bool] | None = None,
) -> dict[str, float]:
    continuations = generate_continuations(
        model, tokenizer, prompts, max_prompt_tokens, max_new_tokens, batch_size, all_finished=all_finished
    )
    return f1_of_continuations(tokenizer, continuations, golds, max_gold_tokens)


def f1_of_continuations(tokenizer: Any, continuations: Sequence[str], golds: Sequence[str], max_gold_tokens: int = 52) -> dict[str, float]:
    """Mean token F1 of continuations already generated against their gold continuations."""
    scores = []
    for text, gold in zip(continuations, golds):
        pred_ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        gold_ids = tokenizer(gold, add_special_tokens=False, verbose=False)["input_ids"][:max_gold_tokens]
        scores.append(token_f1(pred_ids, gold_ids))
    return {"f1": sum(scores) / len(scores) if scores else float("nan"), "n": len(scores)}
