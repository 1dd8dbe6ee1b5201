"""`python -m lightning_dpo.make_pairs model=... probe=... prompts.source=... out=pairs.jsonl`: toxicity
preference pairs for any causal LM, by activation steering in place of PPLM.

For each prompt (Wikitext-2 lines, as the published pairs, or any .txt/.jsonl; cut at token level):
chosen = the model's own continuation (greedy, or sampled at `chosen_temperature`); rejected =
the continuation generated while `alpha * u` (u: the probe's unit direction) is added to the
residual stream after the configured layers. Both are scored; a pair is kept when the rejected
continuation scores more toxic than the chosen one by more than `margin` (so with alpha = 0 every
pair is dropped). Output: TRL's format (prompt, chosen, rejected) plus both scores, written
atomically; the work is done in chunks kept under `<out>.parts/`, so an interrupted run continues
where it stopped and ends with the same file. A report (counts, score distributions) goes to
`<out>.report.json`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from lightning_dpo.evaluation.generation import generate_continuations
from lightning_dpo.data.texts import WIKITEXT_2, load_texts, wikitext_lines
from lightning_dpo.evaluation.scorers import Scorer, build_scorer
from lightning_dpo.mlp import find_decoder_layers, hook_residual
from lightning_dpo.utils.errors import ConfigError, DataError
from lightning_dpo.utils.io import atomic_write_json, atomic_write_jsonl

log = logging.getLogger(__name__)


@contextlib.contextmanager
def steering(model: nn.Module, unit: torch.Tensor, alpha: float, layers: Sequence[int]) -> Iterator[None]:
    """Add alpha * unit to the residual stream after each listed layer, only inside the block."""
    shift = (alpha * unit.float()).to(next(model.parameters()).device)

    def add(_: int, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + shift.to(hidden.dtype)

    with hook_residual(model, list(layers), add):
        yield


def load_prompt_texts(cfg: Any, tokenizer: Any) -> list[str]:
    """Prompts cut to their first `max_tokens` tokens; shorter than `min_tokens` ones are skipped."""
    texts = wikitext_lines("prompts.source") if cfg.source == WIKITEXT_2 else load_texts(cfg.source, field=cfg.field, key="prompts.source")
    prompts = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        if len(ids) < cfg.min_tokens:
            continue
        prompts.append(tokenizer.decode(ids[: cfg.max_tokens]))
        if cfg.limit and len(prompts) >= cfg.limit:
            break
    if not prompts:
        raise DataError(str(cfg.source), f"no prompt with at least {cfg.min_tokens} tokens")
    return prompts


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


def resolve_layers(model: nn.Module, layers: Sequence[int] | str) -> list[int]:
    n = len(find_decoder_layers(model))
    if layers == "all":
        return list(range(n))
    if layers == "middle":
        return [n // 2]
    return [int(layer) for layer in layers]


def hash_seed(*parts: Any) -> int:
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:8], 16)


def distribution(scores: list[float]) -> dict[str, float]:
    if not scores:
        return {}
    ordered = sorted(scores)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"mean": sum(scores) / len(scores), "min": ordered[0], "p25": pick(0.25), "median": pick(0.5), "p75": pick(0.75),
            "max": ordered[-1], "share_above_0.5": sum(s > 0.5 for s in scores) / len(scores)}


def settings_fingerprint(cfg: Any, probe_direction: torch.Tensor) -> dict[str, Any]:
    from omegaconf import OmegaConf

    settings = OmegaConf.to_container(cfg, resolve=True)
    for key in ("out", "device", "batch_size"):  # where and how fast, not what
        settings.pop(key, None)
    settings["probe_sha256"] = hashlib.sha256(probe_direction.float().numpy().tobytes()).hexdigest()[:16]
    return settings


def run(cfg: Any) -> dict[str, Any]:
    from lightning_dpo.commands import resolve_device
    from lightning_dpo.evaluation.model_source import load_model_and_tokenizer
    from lightning_dpo.probe import load_probe

    model, tokenizer = load_model_and_tokenizer(cfg.model, cfg.tokenizer, cfg.dtype)
    model.to(resolve_device(cfg.device))
    probe = load_probe(cfg.probe, model.get_input_embeddings().weight.shape[1])
    scorer_cfg = dict(cfg.scorer)
    scorer = build_scorer(scorer_cfg.pop("name"), **scorer_cfg)
    out = Path(cfg.out).expanduser()
    parts = out.with_name(out.name + ".parts")
    fingerprint = settings_fingerprint(cfg, probe.direction)
    if (parts / "settings.json").exists():
        if json.loads((parts / "settings.json").read_text()) != json.loads(json.dumps(fingerprint)):
            raise ConfigError("out", f"{parts} holds an interrupted run with other settings: delete it, or choose another out")
        log.info("resuming from %s", parts)
    else:
        atomic_write_json(parts / "settings.json", fingerprint)
    prompts = load_prompt_texts(cfg.prompts, tokenizer)
    settings = PairSettings(
        alpha=cfg.steering.alpha, layers=cfg.steering.layers, chosen_temperature=cfg.chosen_temperature,
        rejected_temperature=cfg.rejected_temperature, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
        margin=cfg.margin, seed=cfg.seed,
    )
    rows: list[dict[str, Any]] = []
    for index, start in enumerate(range(0, len(prompts), cfg.chunk_size)):
        path = parts / f"chunk_{index:05d}.jsonl"
        if not path.exists():
            chunk = generate_pairs(model, tokenizer, prompts[start : start + cfg.chunk_size], probe.unit, scorer, settings, index)
            atomic_write_jsonl(path, chunk)
            log.info("chunk %d: %d prompts, %d kept", index, len(chunk), sum(r["kept"] for r in chunk))
        rows += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    kept = [as_pair(r) for r in rows if r["kept"]]
    atomic_write_jsonl(out, kept)
    report = {
        "out": str(out), "scorer": scorer.name, "margin": cfg.margin, "alpha": cfg.steering.alpha,
        "layers": resolve_layers(model, cfg.steering.layers), "prompts": len(rows), "kept": len(kept), "dropped": len(rows) - len(kept),
        "chosen_scores": distribution([r["chosen_score"] for r in rows]),
        "rejected_scores": distribution([r["rejected_score"] for r in rows]),
    }
    atomic_write_json(out.with_name(out.name + ".report.json"), report)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    from lightning_dpo.commands import hydra_command

    hydra_command(run, "make_pairs")()
