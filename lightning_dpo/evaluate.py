"""`python -m lightning_dpo.evaluate model=<hub id | folder | run dir | .ckpt>`: toxicity, perplexity, F1.

Greedy continuations (prompt cut to 32 tokens, 20 new tokens, left padding, batched) of a prompt
set are scored by the configured scorer, whose name is written beside every number; perplexity
over non-overlapping windows; F1 of continuation tokens against gold continuations.
Writes `<out>/eval.json` and `<out>/generations.jsonl` (atomically) and prints a table.
Settings: `conf/commands/eval/{toy,paper}.yaml` (`eval=paper` for the papers' evaluation).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lightning_dpo.data.texts import load_text, load_texts
from lightning_dpo.evaluation.report import EvalSettings, evaluate_model
from lightning_dpo.evaluation.scorers import build_scorer
from lightning_dpo.utils.io import atomic_write_json, atomic_write_jsonl, ensure_writable_dir

log = logging.getLogger(__name__)


def settings_from_config(cfg: Any, cache_dir: Path | None = None) -> EvalSettings:
    """EvalSettings from the `prompts`, `scorer`, `generation`, `perplexity` and `f1` config blocks."""
    prompts = load_texts(cfg.prompts.source, field=cfg.prompts.field, where=cfg.prompts.filter, limit=cfg.prompts.limit, key="prompts.source")
    scorer_cfg = dict(cfg.scorer)
    if scorer_cfg.get("name") == "perspective" and cache_dir is not None:
        scorer_cfg.setdefault("cache_path", str(cache_dir / "perspective_cache.jsonl"))  # resumable scoring
    scorer = build_scorer(scorer_cfg.pop("name"), **scorer_cfg)
    f1_prompts: list[str] = []
    f1_golds: list[str] = []
    if cfg.f1.get("data"):
        f1_prompts = load_texts(cfg.f1.data, field=cfg.f1.prompt_field, limit=cfg.f1.limit, key="f1.data")
        f1_golds = load_texts(cfg.f1.data, field=cfg.f1.gold_field, limit=cfg.f1.limit, key="f1.data")
    return EvalSettings(
        prompts=prompts, scorer=scorer,
        max_prompt_tokens=cfg.generation.max_prompt_tokens, max_new_tokens=cfg.generation.max_new_tokens,
        batch_size=cfg.generation.batch_size, truncation_side=cfg.generation.truncation_side,
        perplexity_text=load_text(cfg.perplexity.text, "perplexity.text") if cfg.perplexity.text else None, perplexity_window=cfg.perplexity.window,
        f1_prompts=f1_prompts, f1_golds=f1_golds, max_gold_tokens=cfg.f1.max_gold_tokens,
    )


def format_metrics(metrics: dict[str, Any]) -> str:
    lines = [f"{'metric':<26}value"]
    for key, value in metrics.items():
        lines.append(f"{key:<26}{value:.4f}" if isinstance(value, float) else f"{key:<26}{value}")
    return "\n".join(lines)


def run(cfg: Any) -> dict[str, Any]:
    from lightning_dpo.commands import resolve_device
    from lightning_dpo.evaluation.model_source import load_model_and_tokenizer

    out = ensure_writable_dir(cfg.out, "output directory (out)")
    settings = settings_from_config(cfg, out)
    model, tokenizer = load_model_and_tokenizer(cfg.model, cfg.tokenizer, cfg.dtype)
    model.to(resolve_device(cfg.device))
    metrics, generations = evaluate_model(model, tokenizer, settings)
    metrics = {"model": str(cfg.model), **metrics}
    atomic_write_json(out / "eval.json", metrics)
    atomic_write_jsonl(out / "generations.jsonl", generations)
    print(format_metrics(metrics))
    print(f"wrote {out / 'eval.json'} and {out / 'generations.jsonl'}")
    return metrics


if __name__ == "__main__":
    from lightning_dpo.commands import hydra_command

    hydra_command(run, "evaluate")()
