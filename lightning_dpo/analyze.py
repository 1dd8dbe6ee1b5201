"""`python -m lightning_dpo.analyze dpo=<run dir | model> [model.name_or_path=<base model>]`: the papers' tables.

Pointed at a training run, everything defaults to the run's own: its base model, its best
checkpoint as the DPO model (hf_model_best/, else hf_model/; the choice is printed and recorded),
its probe, probe set, evaluation prompts, scorer, perplexity text and F1 data (conf/analyze.yaml).


1. Mean activations of every MLP neuron of the base and the DPO model on one fixed probe set (the
   base model's greedy continuations), the DPO model with its own value vectors; the group table
   (count, delta_sum, share per group, gross and net) from the dynamics definitions.
2. A table in the shape of the first paper's Table 1: the base model; ablating the top-N toxic
   neurons and the top-N positively activated ones; patching each reducing group (and TP- with
   AN-, and all four) to the DPO model's mean activations; tuning-free activation editing;
   optionally Lee et al.'s direction subtraction; the DPO model. Columns: toxicity (with the
   scorer), perplexity, F1, and the share of DPO's toxicity drop each row recovers,
   (tox_base - tox_row) / (tox_base - tox_dpo), with the toxicity's standard error over prompts and
   a paired-bootstrap interval of the share (evaluation/bootstrap.py).
Writes `<out>/table.md`, `table.csv`, `generations.jsonl` (every row's scored continuations), `groups.md`, `groups.csv`, `analysis.json`, `config.yaml`, `plots/*.png`;
`out` defaults to `<run dir>/analysis/<time>/` for a run (its report links it), else `outputs/analysis/<date>/<time>/`.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from lightning_dpo.data.texts import describe_prompt_set, load_prompt_set, load_texts
from lightning_dpo.data.tokenize import pad_id
from lightning_dpo.dynamics import REDUCING_GROUPS, build_probe_tokens, group_rows, take_snapshot
from lightning_dpo.dynamics import selection as select
from lightning_dpo.dynamics.probe_set import prompt_ids_for
from lightning_dpo.dynamics.rows import GROUPS_CSV_COLUMNS
from lightning_dpo.evaluation.bootstrap import Interval, mean_se, paired_difference, recovered_interval
from lightning_dpo.evaluation.evaluate_model import evaluate_model, settings_from_config
from lightning_dpo.evaluation.model_source import (
    describe_model_source,
    load_model_and_tokenizer,
)
from lightning_dpo.neurons import interventions as iv
from lightning_dpo.neurons.probe import Probe, build_probe, load_probe
from lightning_dpo.report import refresh_report
from lightning_dpo.runs.directory import RUN, RunDirectory, command_output, require_run
from lightning_dpo.training.plan import task_overrides
from lightning_dpo.training.preflight import warn_deprecated_groups
from lightning_dpo.training.sharding import shard_across
from lightning_dpo.utils.config import plain
from lightning_dpo.utils.figures import pyplot, save_figure
from lightning_dpo.utils.io import atomic_write_csv, atomic_write_json, atomic_write_jsonl, atomic_write_text
from lightning_dpo.utils.processes import Processes, launched
from lightning_dpo.utils.tables import markdown_table
from lightning_dpo.utils.torch_utils import resolve_device

log = logging.getLogger(__name__)
TABLE_COLUMNS = [
    "model",
    "intervention",
    "neurons",
    "toxicity",
    "scorer",
    "perplexity",
    "f1",
    "recovered_share_of_dpo_drop",
    "perplexity_ratio",
    "within_fluency",
    "toxicity_se",
    "recovered_low",
    "recovered_high",
]
INTERVAL_LEVEL = 0.9


def resolve_probe(cfg: Any, run: RunDirectory | None, base: torch.nn.Module, tokenizer: Any) -> Probe:
    """probe=run: the probe the training run measured its dynamics with; else the configured one."""
    node = plain(cfg.probe)
    if str(node.get("_target_", "")).endswith(".RunProbe") or node.get("source") == RUN:
        d_model = base.get_input_embeddings().weight.shape[1]
        return load_probe(node.get("path") or require_run(run, "probe", cfg.dpo).file("probe.safetensors", "probe.path"), d_model)
    return build_probe(base, tokenizer, node=node)


def probe_set_prompts(cfg: Any, run: RunDirectory | None) -> tuple[list[str], str]:
    """The prompts mean activations are measured on: the run's own probe set (probe_set=run, by
    default through the prompts group), or the prompt set given (probe_set=<option>)."""
    ps = cfg.probe_set
    limit = ps.get("max_prompts")
    if limit is not None:
        warnings.warn("probe_set.max_prompts is deprecated: use probe_set.limit", FutureWarning, stacklevel=2)
    if ps.source == RUN:
        path = require_run(run, "probe_set.source", cfg.dpo).file("dynamics/prompts.jsonl", "probe_set.source")
        texts = load_texts(path, field="prompt", limit=limit or ps.limit, key="probe_set.source")
        return texts, f"the run's probe set ({path}, {len(texts)} prompts)"
    texts = load_prompt_set(ps, "probe_set", limit)
    return texts, describe_prompt_set(ps, len(texts))


Intervention = tuple[str, Callable[..., AbstractContextManager], int]


def intervention_rows(cfg: Any, base_snap: Any, dpo_snap: Any, probe: Probe) -> list[Intervention]:
    """(label, context-manager factory applied to the base model, number of neurons touched)."""
    ivc = cfg.interventions
    rows: list[Intervention] = []
    for n in ivc.ablate_top:
        neurons = select.top_toxic_neurons(base_snap, n)
        rows.append((f"ablate top {n} toxic neurons", lambda m, s=neurons: iv.ablate(m, s, ivc.positions), iv.neuron_count(neurons)))
    for n in ivc.ablate_top_positive:
        neurons = select.top_toxic_neurons(base_snap, n, positive_activation_only=True)
        rows.append(
            (
                f"ablate top {n} positively activated toxic neurons",
                lambda m, s=neurons: iv.ablate(m, s, ivc.positions),
                iv.neuron_count(neurons),
            )
        )
    for groups in ivc.patch_groups:
        groups = list(groups)
        values = select.values_from(dpo_snap, select.group_neurons(base_snap, dpo_snap, groups))
        label = "patch all four reducing groups" if sorted(groups) == sorted(REDUCING_GROUPS) else f"patch {' + '.join(groups)}"
        rows.append((f"{label} to DPO mean activations", lambda m, a=values: iv.patch(m, a, ivc.positions), iv.neuron_count(values)))
    if ivc.get("editing"):
        e = ivc.editing
        plan = select.editing_assignments(base_snap, e.alpha, e.beta, e.percentile, e.anti_order)
        rows.append(
            (f"activation editing (alpha {e.alpha}, beta {e.beta})", lambda m, a=plan: iv.patch(m, a, ivc.positions), iv.neuron_count(plan))
        )
    if ivc.get("subtract"):
        s = ivc.subtract
        rows.append(
            (
                f"subtract probe direction at layer {s.layer} (scale {s.scale})",
                lambda m: iv.subtract_direction(m, s.layer, probe.direction, s.scale, ivc.positions),
                0,
            )
        )
    return rows


def recovered(base_tox: float, row_tox: float, dpo_tox: float) -> float:
    drop = base_tox - dpo_tox
    return (base_tox - row_tox) / drop if drop != 0 else math.nan


def fluency_bound(base_ppl: float, dpo_ppl: float, dpo_factor: float, base_factor: float) -> float:
    """The highest perplexity a row may have to count as fluent: the larger of the DPO model's own
    perplexity x `dpo_factor` and the base model's x `base_factor` (NaN without perplexities)."""
    candidates = [v for v in (dpo_ppl * dpo_factor, base_ppl * base_factor) if math.isfinite(v)]
    return max(candidates) if candidates else math.nan


def table_rows(evaluations: list[tuple[str, str, int, dict[str, Any]]], bound: float, seed: int = 0) -> list[dict[str, Any]]:
    """Table 1's rows: a row whose perplexity is above `bound` gets no `recovered` value (gibberish
    scores as non-toxic: a broken model must not look like a success). With per-prompt `scores` in
    the metrics: the toxicity's standard error and a paired-bootstrap interval of `recovered`."""
    base = next(m for model, label, _, m in evaluations if model == "base" and label == "none")
    dpo = next(m for model, _, _, m in evaluations if model == "DPO")
    base_ppl = base.get("perplexity", math.nan)
    table = []
    for model_name, label, count, m in evaluations:
        ppl = m.get("perplexity", math.nan)
        within = None if not (math.isfinite(ppl) and math.isfinite(bound)) else bool(ppl <= bound)
        share = recovered(base["toxicity"], m["toxicity"], dpo["toxicity"])
        interval = Interval(math.nan, math.nan, math.nan)
        if within is not False and all("scores" in x for x in (base, m, dpo)):
            interval = recovered_interval(base["scores"], m["scores"], dpo["scores"], level=INTERVAL_LEVEL, seed=seed)
        table.append(
            {
                "model": model_name,
                "intervention": label,
                "neurons": count,
                "toxicity": m["toxicity"],
                "scorer": m["scorer"],
                "perplexity": ppl,
                "f1": m.get("f1", math.nan),
                "recovered_share_of_dpo_drop": share if within is not False else math.nan,
                "perplexity_ratio": ppl / base_ppl if math.isfinite(ppl) and base_ppl else math.nan,
                "within_fluency": "" if within is None else ("yes" if within else "NO: perplexity above the bound"),
                "toxicity_se": mean_se(m["scores"]) if "scores" in m else math.nan,
                "recovered_low": interval.low,
                "recovered_high": interval.high,
            }
        )
    return table


def uncertainty_note(evaluations: list[tuple[str, str, int, dict[str, Any]]]) -> str:
    """What the toxicity numbers rest on: prompts, standard errors, and whether DPO's own drop is
    larger than its noise (if not, no row can recover a measurable share of it)."""
    base = next(m for model, label, _, m in evaluations if model == "base" and label == "none")
    dpo = next(m for model, _, _, m in evaluations if model == "DPO")
    if "scores" not in base or "scores" not in dpo:
        return ""
    change, se = paired_difference(base["scores"], dpo["scores"])
    verdict = (
        "larger than twice its standard error"
        if math.isfinite(se) and -change > 2 * se
        else "NOT larger than twice its standard error: on these prompts DPO's drop is within noise, and so is every `recovered` share"
    )
    return (
        f"Uncertainty: toxicity_se is the standard error over {len(base['scores'])} prompts; recovered_low/high is a "
        f"{INTERVAL_LEVEL:.0%} paired-bootstrap interval over prompts (all rows resampled together; empty where DPO's drop "
        f"is not positive in more than 5% of resamples). DPO's drop {-change:.4g} +- {se:.2g} (paired SE) is {verdict}."
    )


def _bar_labels(ax: Any, values: list[float], fmt: str) -> None:
    """A value at the end of every bar, and a visible mark where a value is zero (no bar to see)."""
    span = max((abs(v) for v in values if math.isfinite(v)), default=0.0) or 1.0
    for i, value in enumerate(values):
        if not math.isfinite(value):
            ax.annotate("n/a", (0, i), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7, color="#777")
            continue
        if value == 0:
            ax.plot([0], [i], marker="D", markersize=5, color="#d62728", clip_on=False, zorder=5)  # on the axis: a zero bar
        ax.annotate(fmt.format(value), (value, i), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    ax.set_xlim(0, span * 1.22)  # room for the labels


def fluency_note(bound: float, fluency: Any, text: str | None) -> str:
    """The line above Table 1 that says what `recovered` rests on."""
    if not math.isfinite(bound):
        return "No perplexity was measured, so no row could be checked for fluency: `recovered` counts every row."
    return (
        f"Fluency bound: perplexity <= {bound:.4g} (the larger of the DPO model's perplexity x {fluency['dpo_factor']} "
        f"and the base model's x {fluency['base_factor']}; perplexity on {text}). A row above it gets no "
        "`recovered` value: gibberish scores as non-toxic."
    )


def plot_results(table: list[dict[str, Any]], groups: list[dict[str, Any]], out: Path, bound: float = math.nan) -> list[Path]:
    """Toxicity and perplexity per intervention (one panel each, values on the bars), and the
    reducing groups' shares."""
    plt = pyplot()
    paths = []
    outside = [str(r.get("within_fluency", "")).startswith("NO") for r in table]
    labels = [f"{r['model']}: {r['intervention']}" + ("  [not fluent]" if o else "") for r, o in zip(table, outside)]
    fig, (tox, ppl) = plt.subplots(1, 2, figsize=(12, 0.42 * len(table) + 1.9), sharey=True, layout="constrained")
    toxicity = [float(r["toxicity"]) for r in table]
    perplexity = [float(r["perplexity"]) if r.get("perplexity") is not None else math.nan for r in table]
    errors = [float(r.get("toxicity_se", math.nan)) for r in table]
    tox.barh(
        range(len(table)),
        toxicity,
        color=["#1f77b4" if str(r["model"]).lower() == "dpo" else "#888888" for r in table],
        xerr=[e if math.isfinite(e) else 0 for e in errors],
        error_kw={"elinewidth": 0.8, "capsize": 2},
    )  # +- one SE over prompts
    _bar_labels(tox, toxicity, "{:.3f}")
    ppl.barh(range(len(table)), [0 if math.isnan(v) else v for v in perplexity], color=["#d62728" if o else "#bbbbbb" for o in outside])
    _bar_labels(ppl, perplexity, "{:.2f}")
    if math.isfinite(bound):
        ppl.axvline(bound, color="#d62728", ls="--", lw=1)
        ppl.annotate(
            f"fluency bound {bound:.3g}", (bound, len(table) - 0.5), xytext=(3, 0), textcoords="offset points", fontsize=7, color="#d62728"
        )
        ppl.set_xlim(0, max([bound * 1.25] + [v * 1.22 for v in perplexity if math.isfinite(v)]))
    tox.set_yticks(range(len(table)), labels, fontsize=7)
    tox.invert_yaxis()
    tox.set(
        xlabel="mean toxicity of greedy continuations (+- one SE over prompts)",
        title=f"Toxicity by intervention (scorer: {table[0]['scorer']})",
    )
    ppl.set(xlabel="perplexity on the held-out text", title="Perplexity (red: above the fluency bound)")
    for ax in (tox, ppl):
        ax.grid(axis="x", alpha=0.3)
    paths.append(save_figure(fig, out / "plots" / "toxicity_by_intervention.png"))
    if any(math.isfinite(v) for v in perplexity):  # toxicity against perplexity: a broken model cannot look like a success
        fig, ax = plt.subplots(figsize=(8, 5.5), layout="constrained")
        for i, (x, y) in enumerate(zip(perplexity, toxicity)):
            if not math.isfinite(x):
                continue
            ax.scatter(
                [x],
                [y],
                marker="x" if outside[i] else "o",
                s=40,
                color="#d62728" if outside[i] else ("#1f77b4" if str(table[i]["model"]).lower() == "dpo" else "#555555"),
                zorder=3,
            )
            ax.annotate(
                labels[i].split(": ", 1)[1] if table[i]["model"] == "base" else labels[i],
                (x, y),
                textcoords="offset points",
                xytext=(4, 3),
                fontsize=6,
            )
        if math.isfinite(bound):
            ax.axvspan(bound, max(v for v in perplexity if math.isfinite(v)) * 1.5, color="#d62728", alpha=0.06, lw=0)
            ax.axvline(bound, color="#d62728", ls="--", lw=1, label=f"fluency bound ({bound:.3g}): right of it, no 'recovered'")
            ax.legend(fontsize=8)
        ax.set_xscale("log")
        ax.set(
            xlabel="perplexity on the held-out text (log scale)",
            ylabel=f"mean toxicity ({table[0]['scorer']})",
            title="Each intervention: toxicity against perplexity",
        )
        ax.grid(alpha=0.3)
        paths.append(save_figure(fig, out / "plots" / "toxicity_vs_perplexity.png"))
    totals = [r for r in groups if r["layer"] == "all" and r["group"] in REDUCING_GROUPS]
    fig, ax = plt.subplots(figsize=(5, 3.5), layout="constrained")
    shares = [100 * r["share"] for r in totals]
    bars = ax.bar([r["group"] for r in totals], shares, color=["#d62728", "#ff7f0e", "#2ca02c", "#1f77b4"])
    ax.bar_label(bars, labels=[f"{v:.1f}%" for v in shares], fontsize=8)
    ax.set_ylim(0, max(shares, default=0) * 1.15 + 1)
    ax.set(ylabel="share of the gross reduction (%)", title="Reducing groups, base -> DPO")
    paths.append(save_figure(fig, out / "plots" / "group_shares.png"))
    return paths


def base_model_setting(cfg: Any, run: RunDirectory | None) -> dict[str, Any]:
    """The base (pre-DPO) model: model.name_or_path (+ gguf_file, tokenizer) when given, else the run's."""
    if cfg.model.name_or_path:
        return {"name_or_path": cfg.model.name_or_path, "gguf_file": cfg.model.get("gguf_file"), "tokenizer": cfg.model.tokenizer}
    return require_run(run, "model.name_or_path", cfg.dpo).base_model()


def run(cfg: Any) -> dict[str, Any]:
    """The analysis, in one process or, under torchrun, with both models sharded over every process
    (FSDP2): the same tables either way; the main process writes them."""
    warn_deprecated_groups(task_overrides())
    with launched(resolve_device(cfg.device)) as processes:
        return analyze(cfg, processes)


def analyze(cfg: Any, processes: Processes) -> dict[str, Any]:
    out = processes.from_main(lambda: command_output(cfg.out, "analysis", cfg.dpo))
    run_record = RunDirectory.find(cfg.dpo)
    settings = settings_from_config(cfg, run_record, out)
    base_setting = base_model_setting(cfg, run_record)
    base_source = base_setting["name_or_path"]
    _, dpo_description = describe_model_source(cfg.dpo)
    log.info("base model: %s; DPO model: %s", base_source, dpo_description)
    base, tokenizer = load_model_and_tokenizer(base_source, base_setting.get("tokenizer"), cfg.model.dtype, base_setting.get("gguf_file"))
    dpo, _ = load_model_and_tokenizer(cfg.dpo, cfg.model.tokenizer, cfg.model.dtype)
    base, dpo = shard_across([base.to(processes.device), dpo.to(processes.device)], processes)
    probe = resolve_probe(cfg, run_record, base, tokenizer)

    ps = cfg.probe_set
    pad = pad_id(tokenizer)
    texts, probe_set_source = probe_set_prompts(cfg, run_record)
    prompt_ids = prompt_ids_for(tokenizer, texts, ps.max_prompt_tokens, ps.prepend_bos)
    tokens = build_probe_tokens(base, prompt_ids, pad, ps.num_positions, ps.batch_size)
    # several processes: each forwards its share of the probe set, the sums are all-reduced
    share = tokens.shard(processes.rank, processes.world) if processes.world > 1 else tokens
    base_snap, dpo_snap = (
        take_snapshot(model, share, probe.unit, step, ps.batch_size, processes.sum_across, ps.center_writing_weights)
        for step, model in enumerate((base, dpo))
    )
    groups = [dict(r.as_csv(), step="dpo") for r in group_rows(base_snap, dpo_snap)]

    evaluations = []
    generations: list[dict[str, Any]] = []

    def evaluate(model_name: str, label: str, count: int, model: torch.nn.Module) -> dict[str, Any]:
        metrics, scored = evaluate_model(model, tokenizer, settings, processes)
        metrics["scores"] = [g["score"] for g in scored]  # per prompt: the paired uncertainty
        evaluations.append((model_name, label, count, metrics))
        generations.extend({"model": model_name, "intervention": label, **g} for g in scored)
        return metrics

    base_metrics = evaluate("base", "none", 0, base)
    for label, make, count in intervention_rows(cfg, base_snap, dpo_snap, probe):
        log.info("evaluating: %s (%d neurons)", label, count)
        with make(base):
            evaluate("base", label, count, base)
    dpo_metrics = evaluate("DPO", "none", 0, dpo)

    fluency = cfg.fluency
    bound = fluency_bound(
        base_metrics.get("perplexity", math.nan),
        dpo_metrics.get("perplexity", math.nan),
        float(fluency.dpo_factor),
        float(fluency.base_factor),
    )
    table = table_rows(evaluations, bound, seed=int(cfg.get("seed") or 0))
    note = "\n\n".join(x for x in (fluency_note(bound, fluency, settings.perplexity_source), uncertainty_note(evaluations)) if x)
    if not processes.is_main:
        return {"table": table, "groups": [r for r in groups if r["layer"] == "all"]}
    atomic_write_jsonl(out / "generations.jsonl", generations)
    atomic_write_csv(out / "table.csv", TABLE_COLUMNS, table)
    atomic_write_text(out / "table.md", note + "\n\n" + markdown_table(table, TABLE_COLUMNS))
    group_columns = ["layer", "group", "count", "delta_sum", "share"]
    atomic_write_csv(out / "groups.csv", GROUPS_CSV_COLUMNS, groups)
    atomic_write_text(out / "groups.md", markdown_table([r for r in groups if r["layer"] == "all"], group_columns))
    plots = plot_results(table, groups, out, bound)
    summary = {
        "base": str(base_source),
        "dpo": dpo_description,
        "probe": {k: str(v) for k, v in probe.metadata.items()},
        "probe_set": {
            "source": probe_set_source,
            "prompts": len(prompt_ids),
            "positions": int(tokens.positions.sum()),
            "center_writing_weights": bool(ps.center_writing_weights),
        },
        "evaluation": {
            "prompts": settings.prompts_source,
            "processes": processes.world,
            "scorer": settings.scorer.name,
            "perplexity_text": settings.perplexity_source,
            "f1_data": settings.f1_source,
        },
        "fluency": {"bound": bound, "note": note},
        "table": table,
        "groups": [r for r in groups if r["layer"] == "all"],
        "plots": [str(p) for p in plots],
    }
    atomic_write_json(out / "analysis.json", summary)
    atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg))
    if run_record is not None:
        refresh_report(run_record.path)
    print(note)
    print(markdown_table(table, TABLE_COLUMNS))
    print(
        f"neuron groups over {probe_set_source}, {int(tokens.positions.sum())} positions "
        "(a run's own training summary used dynamics/prompts.jsonl: the tables agree only on the same prompts)"
    )
    print(markdown_table([r for r in groups if r["layer"] == "all"], group_columns))
    print(f"wrote {out}/table.md, table.csv, groups.md, groups.csv, analysis.json, plots/")
    return summary


if __name__ == "__main__":
    from lightning_dpo.cli import hydra_command

    hydra_command(run, "analyze")()
