"""`python -m lightning_dpo.evaluate model.name_or_path=<run dir | folder | hub id | .ckpt>`: toxicity, perplexity, F1.

Greedy continuations (prompt cut to 32 tokens, 20 new tokens, left padding, batched) of a prompt
set are scored by the configured scorer, whose name is written beside every number; perplexity
over non-overlapping windows; F1 of continuation tokens against gold continuations. A run
directory is evaluated with its own settings unless told otherwise (conf/evaluate.yaml).
Writes `<out>/eval.json` (with the prompts, scorer and perplexity text used),
`<out>/generations.jsonl` and `<out>/config.yaml`, atomically, and prints a table; `out` defaults to
`<run dir>/evaluation/<time>/` for a run (its report links it), else `outputs/evaluation/<date>/<time>/`.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import OmegaConf

from lightning_dpo.evaluation.evaluate_model import evaluate_model, settings_from_config
from lightning_dpo.evaluation.model_source import (
    describe_model_source,
    load_model_and_tokenizer,
)
from lightning_dpo.report import refresh_report
from lightning_dpo.runs.directory import RunDirectory, command_output
from lightning_dpo.training.plan import task_overrides
from lightning_dpo.training.preflight import EVALUATE_DEPRECATED_GROUPS, warn_deprecated_groups
from lightning_dpo.training.sharding import shard_across
from lightning_dpo.utils.io import atomic_write_json, atomic_write_jsonl, atomic_write_text
from lightning_dpo.utils.processes import Processes, launched
from lightning_dpo.utils.torch_utils import resolve_device

log = logging.getLogger(__name__)


def format_metrics(metrics: dict[str, Any]) -> str:
    lines = [f"{'metric':<26}value"]
    for key, value in metrics.items():
        lines.append(f"{key:<26}{value:.4f}" if isinstance(value, float) else f"{key:<26}{value}")
    return "\n".join(lines)


def run(cfg: Any) -> dict[str, Any]:
    """The evaluation, in one process or, under torchrun, with the model sharded over every process
    (FSDP2; each decodes a share of the prompts): the same numbers either way; the main process writes."""
    warn_deprecated_groups(task_overrides(), EVALUATE_DEPRECATED_GROUPS)
    with launched(resolve_device(cfg.device)) as processes:
        return evaluate(cfg, processes)


def evaluate(cfg: Any, processes: Processes) -> dict[str, Any]:
    source = cfg.model.name_or_path
    out = processes.from_main(lambda: command_output(cfg.out, "evaluation", source))
    run_dir = RunDirectory.find(source)
    settings = settings_from_config(cfg, run_dir, out)
    _, description = describe_model_source(source)
    log.info("evaluating %s", description)
    model, tokenizer = load_model_and_tokenizer(source, cfg.model.tokenizer, cfg.model.dtype, cfg.model.get("gguf_file"))
    (model,) = shard_across([model.to(processes.device)], processes)
    metrics, generations = evaluate_model(model, tokenizer, settings, processes)
    metrics = {"model": description, **metrics}
    if not processes.is_main:
        return metrics
    atomic_write_json(out / "eval.json", metrics)
    atomic_write_jsonl(out / "generations.jsonl", generations)
    atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg))
    print(format_metrics(metrics))
    print(f"wrote {out / 'eval.json'} and {out / 'generations.jsonl'}")
    if run_dir is not None:
        refresh_report(run_dir.path)
    return metrics


if __name__ == "__main__":
    from lightning_dpo.cli import hydra_command

    hydra_command(run, "evaluate")()
