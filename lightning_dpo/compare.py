"""`python -m lightning_dpo.compare <sweep_dir>`: one table over the jobs of a sweep, and figures.

For every job directory (a folder with `.hydra/config.yaml`): the loss type, beta, lr, status,
steps, the final validation metrics, the held-out evaluation at the start and the end (toxicity
with its scorer's name, perplexity, F1: a job that "wins" on toxicity by destroying fluency shows
here), the four reducing groups' final shares, gross and net reduction, and the attention heads'
share of the residual stream's change along the probe. Jobs that failed or did
not finish are listed with their status; a job whose files cannot be read is listed as
`unreadable`, naming the file and why, and the rest of the table is built.

Writes `<sweep_dir>/compare.md`, `compare.csv`; where jobs differ only in their seeds (`seed`,
`world.seed`), `compare_by_setting.md/csv`: per setting (e.g. per `loss.type`), the mean and the
[min, max] over its seeds; and `plots/`: `shares_by_job.png` (the four
shares over steps, one panel per group, one line per job), `jobs_overview.png` (toxicity and
perplexity from start to end, and the shares, per job), and for beta x lr sweeps heatmaps of the
final TP- share, net change, toxicity and perplexity.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lightning_dpo.dynamics import REDUCING_GROUPS
from lightning_dpo.runs.directory import RunDirectory
from lightning_dpo.runs.sweep import find_jobs, planned_jobs
from lightning_dpo.training.metrics_csv import read_metrics_csv
from lightning_dpo.utils.figures import annotate_cells, pyplot, save_figure
from lightning_dpo.utils.io import atomic_write_csv, atomic_write_text
from lightning_dpo.utils.tables import markdown_table

COLUMNS = [
    "job",
    "status",
    "loss",
    "beta",
    "lr",
    "steps",
    "val/loss",
    "val/rewards/accuracies",
    "val/rewards/margins",
    "scorer",
    "eval/toxicity start",
    "eval/toxicity",
    "eval/perplexity start",
    "eval/perplexity",
    "eval/f1",
    "share TP-",
    "share TN+",
    "share AP+",
    "share AN-",
    "gross_reduction",
    "net_delta",
    "attention_share",
    "error",
]
# the settings that only repeat a job (its seeds): jobs differing only in these are one setting
SEED_KEYS = ("seed", "world.seed")
# how a job ran or was reported, not what it trained: never part of a setting's name
NOT_SETTING = ("report", "logger", "ckpt_path", "launcher", "hparams_search", "sweep_name", "allow_changes")
SETTING_METRICS = [
    "eval/toxicity",
    "eval/perplexity",
    "eval/f1",
    "val/rewards/accuracies",
    "share TP-",
    "share TN+",
    "share AP+",
    "share AN-",
    "gross_reduction",
    "net_delta",
    "attention_share",
]
GROUP_COLORS = {"TP-": "#d62728", "TN+": "#ff7f0e", "AP+": "#2ca02c", "AN-": "#1f77b4"}


class UnreadableJob(Exception):
    def __init__(self, path: Path, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"{path}: {reason}")


def _load_config(path: Path) -> DictConfig:
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:
        raise UnreadableJob(path, f"not a YAML config ({type(exc).__name__})") from None
    if not isinstance(cfg, DictConfig):
        raise UnreadableJob(path, "not a mapping of settings")
    return cfg


def _load_status(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"status": "not started"}
    try:
        status = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise UnreadableJob(path, f"not JSON ({type(exc).__name__})") from None
    if not isinstance(status, dict):
        raise UnreadableJob(path, "not a JSON object")
    return status


def _load_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    try:
        rows = read_metrics_csv(path)
    except (UnicodeDecodeError, csv.Error, ValueError) as exc:
        raise UnreadableJob(path, f"not a CSV file ({type(exc).__name__})") from None
    for row in rows:
        bad = [k for k, v in row.items() if not isinstance(v, (int, float))]
        if bad or not isinstance(row.get("step"), int):
            raise UnreadableJob(path, f"non-numeric value in column {(bad or ['step'])[0]!r}")
    return rows


def _number(cfg: DictConfig, key: str, path: Path) -> float | None:
    try:
        value = OmegaConf.select(cfg, key)
    except Exception as exc:
        raise UnreadableJob(path, f"{key} cannot be read ({type(exc).__name__})") from None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UnreadableJob(path, f"{key} is not a number: {value!r}")
    return float(value)


def _first(rows: list[dict[str, Any]], key: str) -> float:
    return next((float(r[key]) for r in rows if key in r), math.nan)


def _last(rows: list[dict[str, Any]], key: str) -> float:
    return next((float(r[key]) for r in reversed(rows) if key in r), math.nan)


def _scorer(job: Path) -> str:
    try:
        with open(job / "toxicity_eval.csv", newline="", encoding="utf-8") as handle:
            return next(csv.DictReader(handle), {}).get("scorer", "") or ""
    except (OSError, UnicodeDecodeError, csv.Error):
        return ""


def job_summary(job: Path) -> dict[str, Any]:
    """One row of the table; raises UnreadableJob naming the file that cannot be read."""
    cfg = _load_config(job / ".hydra" / "config.yaml")
    status = _load_status(job / "status.json")
    state = str(status.get("status", "unknown"))
    if state == "running":
        state = "incomplete"  # no live process writes 'running' after a crash
    rows = _load_metrics(job / "metrics.csv")
    loss = OmegaConf.select(cfg, "loss.type", default=None)
    summary: dict[str, Any] = {
        "job": job.name,
        "status": state,
        "loss": str(loss) if loss is not None else "",
        "beta": _number(cfg, "loss.beta", job / ".hydra" / "config.yaml"),
        "lr": _number(cfg, "optim.lr", job / ".hydra" / "config.yaml"),
        "steps": int(rows[-1]["step"]) if rows else 0,
        "scorer": _scorer(job),
        "error": str(status.get("error") or "") if state in ("failed", "interrupted") else "",
    }
    for key in ("val/loss", "val/rewards/accuracies", "val/rewards/margins", "eval/toxicity", "eval/perplexity", "eval/f1"):
        summary[key] = _last(rows, key)
    for key in ("eval/toxicity", "eval/perplexity"):
        summary[f"{key} start"] = _first(rows, key)
    for key in ("dynamics/gross_reduction", "dynamics/net_delta"):
        summary[key.replace("dynamics/", "")] = _last(rows, key)
    for group in REDUCING_GROUPS:
        summary[f"share {group}"] = _last(rows, f"dynamics/{group}/share")
    # the target probe's (the first probe's) attention share of all component change
    attention = next((k for r in rows for k in r if k.startswith("dynamics/") and k.endswith("/attention_share")), None)
    summary["attention_share"] = _last(rows, attention) if attention else math.nan
    summary["setting"] = setting_of(job)
    summary["_rows"] = rows
    return summary


def setting_of(job: Path) -> str:
    """The job's overrides without its seeds (`.hydra/overrides.yaml`, else the job folder's name)."""
    overrides: list[str] = []
    path = job / ".hydra" / "overrides.yaml"
    try:
        loaded = OmegaConf.to_container(OmegaConf.load(path)) if path.exists() else None
    except Exception:
        loaded = None
    if isinstance(loaded, list):
        overrides = [str(o) for o in loaded]
    else:
        overrides = [part for part in job.name.split(",") if "=" in part]
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in SEED_KEYS + NOT_SETTING and not o.startswith("hydra.")]
    return " ".join(kept) or "(defaults)"


def by_setting(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per setting over its completed jobs (its seeds): mean, min and max of each metric."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for s in summaries:
        if s["status"] == "completed":
            groups.setdefault(s["setting"], []).append(s)
    table = []
    for setting, jobs in groups.items():
        row: dict[str, Any] = {"setting": setting, "jobs": len(jobs)}
        for key in SETTING_METRICS:
            values = [float(j[key]) for j in jobs if isinstance(j.get(key), (int, float)) and math.isfinite(float(j[key]))]
            row[f"{key} mean"] = sum(values) / len(values) if values else math.nan
            row[f"{key} min"] = min(values) if values else math.nan
            row[f"{key} max"] = max(values) if values else math.nan
        table.append(row)
    return table


def range_cell(row: dict[str, Any], key: str) -> str:
    """`mean [min, max]`, 3 significant digits; shares and the attention share in percent."""
    mean, low, high = row[f"{key} mean"], row[f"{key} min"], row[f"{key} max"]
    if not math.isfinite(mean):
        return ""
    scale = 100 if _is_percent(key) else 1
    if row["jobs"] == 1:
        return f"{scale * mean:.3g}"
    return f"{scale * mean:.3g} [{scale * low:.3g}, {scale * high:.3g}]"


def _is_percent(key: str) -> bool:
    return key.startswith("share") or key == "attention_share"


def setting_headers() -> list[str]:
    return [f"{k} (%)" if _is_percent(k) else k for k in SETTING_METRICS]


def settings_markdown(table: list[dict[str, Any]]) -> str:
    headers = setting_headers()
    rows = [{"setting": r["setting"], "jobs": r["jobs"], **{h: range_cell(r, k) for h, k in zip(headers, SETTING_METRICS)}} for r in table]
    return "Mean over each setting's completed jobs (seeds), [min, max] in brackets.\n\n" + markdown_table(
        rows, ["setting", "jobs", *headers]
    )


def unreadable_summary(job: Path, exc: UnreadableJob) -> dict[str, Any]:
    return {"job": job.name, "status": "unreadable", "error": f"{exc.path}: {exc.reason}", "_rows": []}


def label(summary: dict[str, Any]) -> str:
    """A short legend entry for a job: its loss type if the sweep varies it, beta, lr."""
    parts = [summary["loss"]] if summary.get("loss") not in (None, "", "sigmoid") else []
    parts += [
        f"beta={summary['beta']:g}" if isinstance(summary.get("beta"), float) else "",
        f"lr={summary['lr']:g}" if isinstance(summary.get("lr"), float) else "",
    ]
    return ", ".join(p for p in parts if p) or summary["job"]


def job_labels(jobs: list[dict[str, Any]]) -> list[str]:
    """Legend entries; where two jobs would share one (seeds of one setting), the job folder names."""
    short = [label(s) for s in jobs]
    return short if len(set(short)) == len(short) else [s["job"] for s in jobs]


def plot_shares(summaries: list[dict[str, Any]], out: Path) -> Path:
    """The four shares over steps, one panel per group. One colour per setting: the setting's mean
    over its seeds as a thick line with a marker per snapshot, each seed's job as a thin line
    (stays readable from one job to twenty)."""
    import numpy as np

    plt = pyplot()
    jobs = [s for s in summaries if s["_rows"]]
    settings: dict[str, list[dict[str, Any]]] = {}
    for s in jobs:
        settings.setdefault(s.get("setting") or s["job"], []).append(s)
    names = list(settings)
    repeats = any(len(v) > 1 for v in settings.values())
    legend = names if repeats else job_labels([v[0] for v in settings.values()])
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "viridis")
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8), sharey=True, layout="constrained")
    for ax, group in zip(axes, REDUCING_GROUPS):
        key = f"dynamics/{group}/share"
        for i, name in enumerate(names):
            color = cmap(i % 10) if len(names) <= 10 else cmap(i / max(1, len(names) - 1))
            series = []
            for s in settings[name]:
                points = {r["step"]: 100 * float(r[key]) for r in s["_rows"] if key in r and math.isfinite(float(r[key]))}
                series.append(points)
                if repeats and points:
                    ax.plot(list(points), list(points.values()), lw=0.7, alpha=0.35, color=color)
            steps = sorted(set.intersection(*(set(p) for p in series))) if series else []
            if steps:
                mean = [float(np.mean([p[t] for p in series])) for t in steps]
                ax.plot(steps, mean, marker="o", markersize=3.5, lw=2.0 if repeats else 1.3, color=color, label=legend[i])
        ax.set(title=f"{group} share of the reduction", xlabel="optimizer step", ylim=(-5, 105))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of the gross reduction (%)")
    note = "shares start at the first snapshot after step 0 (at step 0 nothing has changed: no share exists)"
    fig.suptitle(note + ("; thick: mean over seeds, thin: each seed" if repeats else ""), fontsize=9, color="#444")
    handles, labels_ = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        h, lab = ax.get_legend_handles_labels()
        handles += [x for x, y in zip(h, lab) if y not in labels_]
        labels_ += [y for y in lab if y not in labels_]
    if handles:
        fig.legend(handles, labels_, loc="outside right upper", fontsize=7, title="setting" if repeats else "job")
    return save_figure(fig, out / "shares_by_job.png")


def plot_overview(summaries: list[dict[str, Any]], out: Path) -> Path | None:
    """Per job: toxicity and perplexity from the first to the last evaluation, and the final shares."""
    import numpy as np

    jobs = [s for s in summaries if s["status"] != "unreadable" and s["_rows"]]
    if not jobs:
        return None
    plt = pyplot()
    names = job_labels(jobs)
    y = np.arange(len(jobs))
    fig, axes = plt.subplots(1, 3, figsize=(15, 0.45 * len(jobs) + 2.2), sharey=True, layout="constrained")
    scorer = next((s["scorer"] for s in jobs if s.get("scorer")), "scorer not recorded")
    for ax, key, unit in ((axes[0], "eval/toxicity", f"mean toxicity ({scorer})"), (axes[1], "eval/perplexity", "perplexity")):
        start = np.array([s.get(f"{key} start", math.nan) for s in jobs], dtype=float)
        end = np.array([s.get(key, math.nan) for s in jobs], dtype=float)
        ax.hlines(y, start, end, color="#999999", lw=1.5)
        ax.scatter(start, y, color="#999999", label="step 0", zorder=3)
        ax.scatter(end, y, color="#1f77b4", label="end", zorder=3)
        for yi, value in zip(y, end):
            if math.isfinite(value):
                ax.annotate(f"{value:.3g}", (value, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set(xlabel=unit, title=f"{key.split('/')[1]}: step 0 -> end")
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    left = np.zeros(len(jobs))
    for group in REDUCING_GROUPS:
        values = np.nan_to_num(np.array([100 * s.get(f"share {group}", math.nan) for s in jobs], dtype=float))
        axes[2].barh(y, values, left=left, color=GROUP_COLORS[group], label=group)
        left += values
    axes[2].set(xlabel="share of the gross reduction (%)", title="final group shares", xlim=(0, 100))
    axes[2].legend(fontsize=7, loc="lower right", ncol=4)
    axes[0].set_yticks(y, names, fontsize=8)
    axes[0].invert_yaxis()
    return save_figure(fig, out / "jobs_overview.png")


def color_limits(key: str, grid: Any) -> tuple[float, float]:
    """The colour scale of a heatmap: a share on 0-100%, a toxicity on 0-1, anything else over its
    values but never narrower than a quarter of their magnitude, so that a 0.1 difference between
    cells of about 30 does not span the whole scale."""
    import numpy as np

    values = grid[np.isfinite(grid)]
    low, high = float(values.min()), float(values.max())
    if key.startswith("share"):
        return min(0.0, low), max(100.0, high)
    if key == "eval/toxicity" and low >= 0:
        return 0.0, max(1.0, high)
    floor = 0.25 * max(abs(low), abs(high))
    if high - low < floor:
        middle = (low + high) / 2
        low, high = middle - floor / 2, middle + floor / 2
    return low, high


def plot_heatmap(summaries: list[dict[str, Any]], key: str, title: str, unit: str, path: Path) -> Path | None:
    import numpy as np

    done = [s for s in summaries if s["status"] == "completed" and isinstance(s.get("beta"), float) and isinstance(s.get("lr"), float)]
    betas, lrs = sorted({s["beta"] for s in done}), sorted({s["lr"] for s in done})
    if len(betas) * len(lrs) < 2:
        return None  # not a beta x lr sweep
    grid = np.full((len(betas), len(lrs)), np.nan)
    for s in done:
        grid[betas.index(s["beta"]), lrs.index(s["lr"])] = s.get(key, math.nan) * (100 if key.startswith("share") else 1)
    if np.isnan(grid).all():
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.6 * len(lrs) + 2.5, 1.0 * len(betas) + 1.8), layout="constrained")
    low, high = color_limits(key, grid)
    image = ax.imshow(grid, cmap="viridis", aspect="auto", origin="lower", vmin=low, vmax=high)
    annotate_cells(ax, image, grid, "{:.3g}")
    ax.set_xticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
    ax.set_yticks(range(len(betas)), [f"{b:g}" for b in betas])
    ax.set(xlabel="learning rate (optim.lr)", ylabel="beta (loss.beta)", title=title)
    fig.colorbar(image, ax=ax, label=unit)
    return save_figure(fig, path)


def compare(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """compare.md/csv (and compare_by_setting.*, plots/) over the sweep's jobs; a job that the sweep
    planned (multirun.yaml) but whose folder is gone is listed as `missing`."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.exists():
        raise FileNotFoundError(f"{sweep_dir}: not found")
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir}: not a folder (compare reads a sweep directory)")
    if RunDirectory.is_run(sweep_dir):
        raise FileNotFoundError(
            f"{sweep_dir} is one run, not a sweep: compare reads a folder of runs (a multirun "
            f"directory); for this run: python -m lightning_dpo.report {sweep_dir}"
        )
    jobs = find_jobs(sweep_dir)
    planned = planned_jobs(sweep_dir) or []
    missing = [name for name in planned if not (sweep_dir / name).exists()]
    if not jobs and not missing:
        raise FileNotFoundError(f"{sweep_dir}: no job directories (folders with .hydra/config.yaml)")
    summaries = []
    for job in jobs:
        try:
            summaries.append(job_summary(job))
        except UnreadableJob as exc:
            summaries.append(unreadable_summary(job, exc))
    summaries += [
        {"job": name, "status": "missing", "error": "planned by multirun.yaml, but its folder is gone", "_rows": []} for name in missing
    ]
    table = [{k: v for k, v in s.items() if k != "_rows"} for s in summaries]
    atomic_write_csv(sweep_dir / "compare.csv", COLUMNS, table)
    atomic_write_text(sweep_dir / "compare.md", markdown_table(table, COLUMNS))
    settings = by_setting(summaries)
    if any(r["jobs"] > 1 for r in settings):  # seeds repeated a setting: the range over them
        columns = ["setting", "jobs"] + [f"{k} {stat}" for k in SETTING_METRICS for stat in ("mean", "min", "max")]
        atomic_write_csv(sweep_dir / "compare_by_setting.csv", columns, settings)
        atomic_write_text(sweep_dir / "compare_by_setting.md", settings_markdown(settings))
    plots = sweep_dir / "plots"
    plot_shares(summaries, plots)
    plot_overview(summaries, plots)
    scorer = next((s["scorer"] for s in summaries if s.get("scorer")), "scorer not recorded")
    plot_heatmap(
        summaries, "share TP-", "final TP- share of the reduction", "share of the gross reduction (%)", plots / "heatmap_tp_share.png"
    )
    plot_heatmap(
        summaries,
        "net_delta",
        "final net change of toxic-direction writing",
        "sum of D_i [probe-direction units]",
        plots / "heatmap_net_delta.png",
    )
    plot_heatmap(
        summaries, "eval/toxicity", "final toxicity of held-out continuations", f"mean toxicity ({scorer})", plots / "heatmap_toxicity.png"
    )
    plot_heatmap(summaries, "eval/perplexity", "final perplexity on held-out text", "perplexity", plots / "heatmap_perplexity.png")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightning_dpo.compare", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="a Hydra multirun directory (or any folder of run directories)")
    args = parser.parse_args(argv)
    try:
        table = compare(args.sweep_dir)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown_table(table, COLUMNS))
    not_done = [t for t in table if t["status"] != "completed"]
    if not_done:
        print(f"{len(not_done)} job(s) not completed: " + ", ".join(f"{t['job']} ({t['status']})" for t in not_done))
    print(f"wrote {Path(args.sweep_dir) / 'compare.md'}, compare.csv and plots/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
