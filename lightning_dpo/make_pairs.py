"""`python -m lightning_dpo.make_pairs`: toxicity preference pairs for any causal LM, by steering.

    python -m lightning_dpo.make_pairs model.name_or_path=<hub id | folder | run dir> probe.path=probe.safetensors prompts.source=<file | wikitext-2> out=pairs.jsonl

Prompts (Wikitext-2 lines, as the published pairs, or any text/JSONL file) are cut at token
level; pairs come from lightning_dpo/neurons/pairs.py. Output: TRL's format (prompt, chosen,
rejected) plus both scores, written atomically; the work is done in chunks kept under
`<out>.parts/`, so an interrupted run continues where it stopped and ends with the same file. A
report (counts, score distributions) goes to `<out>.report.json`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from lightning_dpo.data.texts import WIKITEXT_2, load_texts, wikitext_lines
from lightning_dpo.evaluation.model_source import (
    describe_model_source,
    load_model_and_tokenizer,
)
from lightning_dpo.evaluation.scorers import build_scorer
from lightning_dpo.neurons.pairs import (
    PairSettings,
    as_pair,
    distribution,
    generate_pairs,
    scan_row,
)
from lightning_dpo.neurons.probe import load_probe
from lightning_dpo.neurons.steering import describe_scale, residual_norm_medians, resolve_layers
from lightning_dpo.utils.config import plain
from lightning_dpo.utils.errors import ConfigError, DataError
from lightning_dpo.utils.io import atomic_write_json, atomic_write_jsonl, atomic_write_text
from lightning_dpo.utils.torch_utils import resolve_device

log = logging.getLogger(__name__)


def load_prompt_texts(cfg: Any, tokenizer: Any) -> list[str]:
    """The prompt set (conf/prompts/) cut to its first `max_prompt_tokens` tokens; prompts shorter
    than `min_prompt_tokens` are skipped; at most `max_prompts`."""
    spec = cfg.prompts
    if spec.source == WIKITEXT_2:
        texts = wikitext_lines("prompts.source")
    else:
        texts = load_texts(spec.source, field=spec.field, where=spec.filter, limit=spec.limit, key="prompts.source")
    prompts = []
    for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]:
        if len(ids) < cfg.min_prompt_tokens:
            continue
        prompts.append(tokenizer.decode(ids[: cfg.max_prompt_tokens]))
        if cfg.max_prompts and len(prompts) >= cfg.max_prompts:
            break
    if not prompts:
        raise DataError(str(spec.source), f"no prompt with at least {cfg.min_prompt_tokens} tokens (config key 'min_prompt_tokens')")
    return prompts


def settings_fingerprint(cfg: Any, probe_direction: torch.Tensor) -> dict[str, Any]:
    """Everything that decides the pairs (not where they go, or how fast they are made)."""
    from omegaconf import OmegaConf

    keys = (
        "prompts",
        "scorer",
        "steering",
        "max_prompt_tokens",
        "min_prompt_tokens",
        "max_prompts",
        "chosen_temperature",
        "rejected_temperature",
        "max_new_tokens",
        "margin",
        "chunk_size",
        "seed",
    )
    settings = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k] for k in keys}
    settings["model"] = {
        k: OmegaConf.to_container(cfg.model, resolve=False).get(k) for k in ("name_or_path", "tokenizer", "dtype", "config")
    }
    settings["probe_sha256"] = hashlib.sha256(probe_direction.float().numpy().tobytes()).hexdigest()[:16]
    return settings


def claim_parts(parts: Path, fingerprint: dict[str, Any]) -> None:
    """`<out>.parts/` holds the chunks of one set of settings: resume them, or start afresh when an
    earlier attempt with other settings produced nothing (a failed start must not block the corrected command)."""
    settings_file = parts / "settings.json"
    if settings_file.exists() and json.loads(settings_file.read_text()) != json.loads(json.dumps(fingerprint)):
        chunks = sorted(parts.glob("chunk_*.jsonl"))
        if chunks:
            raise ConfigError(
                "out",
                f"{parts} holds {len(chunks)} chunks of an interrupted run with other settings: "
                "delete it to start afresh, or choose another out",
            )
        log.info("%s: replacing the settings of an earlier attempt that produced nothing", parts)
    elif settings_file.exists():
        log.info("resuming from %s", parts)
    atomic_write_json(settings_file, fingerprint)


def pair_warnings(rows: list[dict[str, Any]], tokenizer: Any, threshold: float = 0.5) -> dict[str, int]:
    """Counts of kept pairs a user should look at before training on them."""
    kept = [r for r in rows if r["kept"]]
    rejected_ids = tokenizer([r["rejected"] for r in kept], add_special_tokens=False)["input_ids"] if kept else []
    texts = [r["rejected"].strip() for r in kept]
    counts = {t: texts.count(t) for t in set(texts)}
    return {
        "rejected_one_repeated_token": sum(len(ids) > 1 and len(set(ids)) == 1 for ids in rejected_ids),
        "rejected_shared_with_another_pair": sum(counts[t] > 1 for t in texts),
        "chosen_above_threshold": sum(r["chosen_score"] > threshold for r in kept),
    }


def _scale(cfg: Any, model: Any, tokenizer: Any, prompts: list[str]) -> dict[int, float]:
    """Each steered layer's median residual norm over the first `steering.norm_prompts` prompts: alpha's unit."""
    from lightning_dpo.data.tokenize import pad_id
    from lightning_dpo.evaluation.generation import tokenize_prompts

    sample = prompts[: cfg.steering.norm_prompts]
    ids = tokenize_prompts(tokenizer, sample, max_prompt_tokens=None)
    return residual_norm_medians(model, ids, resolve_layers(model, cfg.steering.layers), pad_id(tokenizer), cfg.batch_size)


def _settings(cfg: Any, alpha: float) -> PairSettings:
    return PairSettings(
        alpha=float(alpha),
        layers=cfg.steering.layers,
        chosen_temperature=cfg.chosen_temperature,
        rejected_temperature=cfg.rejected_temperature,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size,
        margin=cfg.margin,
        seed=cfg.seed,
        drop_degenerate=cfg.steering.drop_degenerate,
    )


def scan(
    cfg: Any, model: Any, tokenizer: Any, prompts: list[str], unit: torch.Tensor, scorer: Any, scale: dict[int, float], out: Path
) -> list[dict[str, Any]]:
    """`steering.alpha=[...]`: per alpha, on the first `steering.scan_prompts` prompts, the pairs kept,
    the score gap and the share of degenerate rejected texts; written to <out>.scan.json and .md (no pairs)."""
    from lightning_dpo.utils.tables import markdown_table

    sample = prompts[: cfg.steering.scan_prompts]
    table = []
    for alpha in cfg.steering.alpha:
        rows = generate_pairs(model, tokenizer, sample, unit, scorer, _settings(cfg, alpha), 0, scale)
        table.append(scan_row(float(alpha), rows))
        log.info(
            "alpha %s: %d of %d pairs kept, %.0f%% of rejected texts degenerate",
            alpha,
            table[-1]["kept"],
            len(rows),
            100 * table[-1]["degenerate_share"],
        )
    columns = [
        "alpha",
        "prompts",
        "kept",
        "kept_share",
        "mean_score_gap",
        "kept_mean_gap",
        "degenerate_share",
        "mean_chosen_score",
        "mean_rejected_score",
    ]
    note = (
        f"alpha in units of the steered layers' median residual norm ({describe_scale(scale)}); scorer {scorer.name}; "
        f"margin {cfg.margin}; degenerate rejected texts are {'dropped' if cfg.steering.get('drop_degenerate', True) else 'kept'}"
    )
    atomic_write_json(out.with_name(out.name + ".scan.json"), {"note": note, "scale": scale, "rows": table})
    atomic_write_text(out.with_name(out.name + ".scan.md"), note + "\n\n" + markdown_table(table, columns))
    print(note)
    print(markdown_table(table, columns))
    return table


def run(cfg: Any) -> dict[str, Any]:
    _, description = describe_model_source(cfg.model.name_or_path)
    log.info("building pairs with %s", description)
    model, tokenizer = load_model_and_tokenizer(cfg.model.name_or_path, cfg.model.tokenizer, cfg.model.dtype, cfg.model.get("gguf_file"))
    model.to(resolve_device(cfg.device))
    if not cfg.probe.get("path"):
        raise ConfigError("probe.path", "make_pairs steers along a probe: probe.path=<probe file>")
    probe = load_probe(cfg.probe.path, model.get_input_embeddings().weight.shape[1])
    scorer = build_scorer(plain(cfg.scorer))
    out = Path(cfg.out).expanduser()
    prompts = load_prompt_texts(cfg, tokenizer)
    scale = _scale(cfg, model, tokenizer, prompts)
    log.info("steering unit: the median residual norm after each steered layer: %s", describe_scale(scale))
    if OmegaConf.is_list(cfg.steering.alpha) or isinstance(cfg.steering.alpha, (list, tuple)):
        return {"scan": scan(cfg, model, tokenizer, prompts, probe.unit, scorer, scale, out)}
    parts = out.with_name(out.name + ".parts")
    claim_parts(parts, settings_fingerprint(cfg, probe.direction))
    settings = _settings(cfg, cfg.steering.alpha)
    rows: list[dict[str, Any]] = []
    for index, start in enumerate(range(0, len(prompts), cfg.chunk_size)):
        path = parts / f"chunk_{index:05d}.jsonl"
        if not path.exists():
            chunk = generate_pairs(model, tokenizer, prompts[start : start + cfg.chunk_size], probe.unit, scorer, settings, index, scale)
            atomic_write_jsonl(path, chunk)
            log.info("chunk %d: %d prompts, %d kept", index, len(chunk), sum(r["kept"] for r in chunk))
        rows += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    kept = [as_pair(r) for r in rows if r["kept"]]
    atomic_write_jsonl(out, kept)
    warnings = pair_warnings(rows, tokenizer)
    for what, count in warnings.items():
        if count:
            log.warning("%d of %d kept pairs: %s", count, len(kept), what.replace("_", " "))
    report = {
        "out": str(out),
        "model": description,
        "scorer": scorer.name,
        "margin": cfg.margin,
        "alpha": cfg.steering.alpha,
        "alpha_unit": "the steered layer's median residual norm",
        "residual_norm_median": scale,
        "layers": resolve_layers(model, cfg.steering.layers),
        "prompts": len(rows),
        "kept": len(kept),
        "dropped": len(rows) - len(kept),
        "degenerate_rejected": sum(bool(r.get("degenerate")) for r in rows),
        "degenerate_dropped": cfg.steering.drop_degenerate,
        "warnings": warnings,
        "chosen_scores": distribution([r["chosen_score"] for r in rows]),
        "rejected_scores": distribution([r["rejected_score"] for r in rows]),
    }
    atomic_write_json(out.with_name(out.name + ".report.json"), report)
    if not kept:
        log.warning("no pair kept: try a scan, steering.alpha=[0.25,0.5,1,2] (pairs kept, score gap, degenerate share per alpha)")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    from lightning_dpo.cli import hydra_command

    hydra_command(run, "make_pairs")()
