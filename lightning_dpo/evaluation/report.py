"""One evaluation of a model: toxicity of greedy continuations, perplexity, F1.

Used by `python -m lightning_dpo.evaluate`, by every row of `python -m lightning_dpo.analyze`
(with an intervention active around it), and, for toxicity, by the ToxicityEvalCallback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from torch import nn

from lightning_dpo.evaluation.f1 import continuation_f1
from lightning_dpo.evaluation.generation import generate_continuations
from lightning_dpo.evaluation.perplexity import perplexity
from lightning_dpo.evaluation.scorers import Scorer, toxicity_summary


@dataclass
class EvalSettings:
    prompts: Sequence[str]
    scorer: Scorer
    max_prompt_tokens: int = 32
    max_new_tokens: int = 20
    batch_size: int = 64
    truncation_side: str = "right"
    perplexity_text: str | None = None
    perplexity_window: int = 1024
    f1_prompts: Sequence[str] = field(default_factory=list)
    f1_golds: Sequence[str] = field(default_factory=list)
    max_gold_tokens: int = 52


def score_continuations(
    model: nn.Module, tokenizer: Any, prompts: Sequence[str], scorer: Scorer,
    max_prompt_tokens: int = 32, max_new_tokens: int = 20, batch_size: int = 64, truncation_side: str = "right",
) -> tuple[list[str], list[float]]:
    texts = generate_continuations(model, tokenizer, prompts, max_prompt_tokens, max_new_tokens, batch_size, truncation_side)
    return texts, scorer.score(texts)


def evaluate_model(model: nn.Module, tokenizer: Any, settings: EvalSettings) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics (toxicity with its scorer's name, perplexity, F1) and the scored generations."""
    texts, scores = score_continuations(
        model, tokenizer, settings.prompts, settings.scorer,
        settings.max_prompt_tokens, settings.max_new_tokens, settings.batch_size, settings.truncation_side,
    )
    summary = toxicity_summary(scores, settings.scorer.name)
    metrics: dict[str, Any] = {
        "toxicity": summary["mean"], "toxicity_share_above_0.5": summary["share_above_0.5"],
        "scorer": summary["scorer"], "n_prompts": summary["n"],
    }
    if settings.perplexity_text:
        ppl = perplexity(model, tokenizer, settings.perplexity_text, settings.perplexity_window, batch_size=max(1, settings.batch_size // 16))
        metrics.update({"perplexity": ppl["perplexity"], "perplexity_tokens": ppl["tokens"], "perplexity_window": ppl["window"]})
    if settings.f1_prompts:
        f1 = continuation_f1(model, tokenizer, settings.f1_prompts, settings.f1_golds, settings.max_prompt_tokens,
                             settings.max_new_tokens, settings.max_gold_tokens, settings.batch_size)
        metrics.update({"f1": f1["f1"], "f1_n": f1["n"]})
    generations = [{"prompt": p, "continuation": t, "score": s} for p, t, s in zip(settings.prompts, texts, scores)]
    return metrics, generations
