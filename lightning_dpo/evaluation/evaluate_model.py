"""One evaluation of a model: toxicity of greedy continuations, perplexity, F1.

Used by `python -m lightning_dpo.evaluate`, by every row of `python -m lightning_dpo.analyze`
(with an intervention active around it), and, for toxicity, by the ToxicityEvalCallback.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from lightning_dpo.data.texts import describe_prompt_set, load_text, load_texts
from lightning_dpo.evaluation.f1 import continuation_f1
from lightning_dpo.evaluation.generation import generate_continuations
from lightning_dpo.evaluation.perplexity import perplexity
from lightning_dpo.evaluation.scorers import Scorer, build_scorer, toxicity_summary
from lightning_dpo.runs.directory import RUN, RunDirectory, require_run
from lightning_dpo.utils.config import plain
from lightning_dpo.utils.processes import SINGLE, Processes


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
    prompts_source: str = ""  # what the prompts, perplexity text and F1 data were (recorded beside every number)
    perplexity_source: str | None = None
    f1_source: str | None = None


def score_continuations(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    scorer: Scorer,
    max_prompt_tokens: int = 32,
    max_new_tokens: int = 20,
    batch_size: int = 64,
    truncation_side: str = "right",
    processes: Processes = SINGLE,
) -> tuple[list[str], list[float]]:
    """Greedy continuations of every prompt and their scores, in the prompts' order, on every process.

    Across processes each decodes its share (`Processes.split`), the texts are gathered, and the
    main process scores them all at once, as one process would (a scorer's batches, and a remote
    scorer's cache file, are then the same whatever the number of processes)."""
    mine, padding = processes.split(prompts)
    texts = generate_continuations(
        model, tokenizer, mine, max_prompt_tokens, max_new_tokens, batch_size, truncation_side, all_finished=processes.decoding_sync()
    )
    texts = processes.interleave(texts[: len(texts) - padding])
    return texts, processes.from_main(lambda: scorer.score(texts))


def evaluate_model(
    model: nn.Module, tokenizer: Any, settings: EvalSettings, processes: Processes = SINGLE
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics (toxicity with its scorer's name, perplexity, F1) and the scored generations, on every
    process. Across processes the toxicity prompts are shared out; the perplexity and the F1 run
    whole on every process (with a sharded model their forwards are collectives)."""
    texts, scores = score_continuations(
        model,
        tokenizer,
        settings.prompts,
        settings.scorer,
        settings.max_prompt_tokens,
        settings.max_new_tokens,
        settings.batch_size,
        settings.truncation_side,
        processes,
    )
    summary = toxicity_summary(scores, settings.scorer.name)
    metrics: dict[str, Any] = {
        "toxicity": summary["mean"],
        "toxicity_share_above_0.5": summary["share_above_0.5"],
        "scorer": summary["scorer"],
        "n_prompts": summary["n"],
        "prompts": settings.prompts_source,
        "perplexity_text": settings.perplexity_source,
        "f1_data": settings.f1_source,
    }
    if settings.perplexity_text:
        ppl = perplexity(
            model, tokenizer, settings.perplexity_text, settings.perplexity_window, batch_size=max(1, settings.batch_size // 16)
        )
        metrics.update({"perplexity": ppl["perplexity"], "perplexity_tokens": ppl["tokens"], "perplexity_window": ppl["window"]})
    if settings.f1_prompts:
        f1 = continuation_f1(
            model,
            tokenizer,
            settings.f1_prompts,
            settings.f1_golds,
            settings.max_prompt_tokens,
            settings.max_new_tokens,
            settings.max_gold_tokens,
            settings.batch_size,
            all_finished=processes.decoding_sync(),
        )
        metrics.update({"f1": f1["f1"], "f1_n": f1["n"]})
    generations = [{"prompt": p, "continuation": t, "score": s} for p, t, s in zip(settings.prompts, texts, scores)]
    return metrics, generations


def settings_from_config(cfg: Any, run: RunDirectory | None = None, cache_dir: Path | None = None) -> EvalSettings:
    """EvalSettings from the `eval_prompts`, `scorer`, `generation`, `perplexity` and `f1` config blocks;
    a `run` value takes the setting from the training run `run` (lightning_dpo/runs/directory.py)."""
    spec = cfg.eval_prompts
    if spec.source == RUN:
        source = require_run(run, "eval_prompts.source", cfg.get("dpo") or cfg.model.name_or_path).file(
            "eval/prompts.jsonl", "eval_prompts.source"
        )
        prompts = load_texts(source, field="prompt", limit=spec.limit, key="eval_prompts.source")
        prompts_source = f"the run's evaluation prompts ({source}, {len(prompts)} prompts)"
    else:
        prompts = load_texts(spec.source, field=spec.field, where=spec.filter, limit=spec.limit, key="eval_prompts.source")
        prompts_source = describe_prompt_set(spec, len(prompts))
    scorer_cfg = plain(cfg.scorer)
    if scorer_cfg.get("name") == RUN:
        scorer_cfg = require_run(run, "scorer", cfg.get("dpo") or cfg.model.name_or_path).scorer_config()
    perspective = scorer_cfg.get("name") == "perspective" or str(scorer_cfg.get("_target_", "")).endswith("PerspectiveScorer")
    if perspective and cache_dir is not None:
        scorer_cfg.setdefault("cache_path", str(cache_dir / "perspective_cache.jsonl"))  # resumable scoring
    scorer = build_scorer(scorer_cfg)
    perplexity_source = _run_file(cfg.perplexity.text, run, "eval/perplexity_text.txt", "perplexity.text")
    f1_source = _run_file(cfg.f1.get("data"), run, "eval/f1.jsonl", "f1.data")
    f1_prompts: list[str] = []
    f1_golds: list[str] = []
    if f1_source:
        f1_prompts = load_texts(f1_source, field=cfg.f1.prompt_field, limit=cfg.f1.limit, key="f1.data")
        f1_golds = load_texts(f1_source, field=cfg.f1.gold_field, limit=cfg.f1.limit, key="f1.data")
    return EvalSettings(
        prompts=prompts,
        scorer=scorer,
        max_prompt_tokens=cfg.generation.max_prompt_tokens,
        max_new_tokens=cfg.generation.max_new_tokens,
        batch_size=cfg.generation.batch_size,
        truncation_side=cfg.generation.truncation_side,
        perplexity_text=load_text(perplexity_source, "perplexity.text") if perplexity_source else None,
        perplexity_window=cfg.perplexity.window,
        f1_prompts=f1_prompts,
        f1_golds=f1_golds,
        max_gold_tokens=cfg.f1.max_gold_tokens,
        prompts_source=prompts_source,
        perplexity_source=perplexity_source,
        f1_source=f1_source,
    )


def _run_file(value: Any, run: RunDirectory | None, relative: str, key: str) -> str | None:
    """A file setting: `run` takes the run's file (none if the run did not measure it), null is off."""
    if value != RUN:
        return value or None
    if run is None or not (run.path / relative).is_file():
        return None
    return str(run.path / relative)
