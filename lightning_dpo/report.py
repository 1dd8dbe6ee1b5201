"""`python -m lightning_dpo.report <run dir | sweep dir>`: one self-contained `report.html`.

For a run: its status, the commands that resume or analyse it, the headline numbers (first and
last evaluation, final validation, final group shares), the held-out evaluation table, every
figure of `plots/` (drawn first when the run has dynamics) and the run's settings. For a sweep:
`compare`'s tables (per job, and per setting over seeds when there are repeats), its figures, and
a link to each job's own report. Figures are embedded as data URIs and the style is inline, so the
file opens offline, copied anywhere (an offline cluster, a laptop without W&B). Training writes the
run's report at its end; a Hydra multirun writes the sweep's (`SweepReport`, hydra/default.yaml).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import html
import json
import logging
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from lightning_dpo.runs.directory import RunDirectory
from lightning_dpo.utils.config import override_arg
from lightning_dpo.utils.io import atomic_write_text
from lightning_dpo.utils.tables import column_format, format_cell

log = logging.getLogger(__name__)

REPORT = "report.html"
HEADLINE = (
    "eval/toxicity",
    "eval/perplexity",
    "eval/f1",
    "val/loss",
    "val/rewards/accuracies",
    "val/rewards/margins",
    "dynamics/gross_reduction",
    "dynamics/net_delta",
    "dynamics/TP-/share",
    "dynamics/TN+/share",
    "dynamics/AP+/share",
    "dynamics/AN-/share",
)

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#222;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
.status{display:inline-block;padding:.1rem .6rem;border-radius:.8rem;font-weight:600;color:#fff}
.completed{background:#2a7d2a}.failed,.unreadable{background:#b32020}.interrupted,.incomplete,.running{background:#c77700}
.unknown,.not-started{background:#777}
table{border-collapse:collapse;margin:.6rem 0;font-size:.85rem}th,td{border:1px solid #ccc;padding:.25rem .5rem}
th{background:#f3f3f3;text-align:left}td{white-space:nowrap}.wide{overflow-x:auto;max-width:100%}td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f7f7f7;padding:.8rem;overflow-x:auto;font-size:.8rem}code{background:#f3f3f3;padding:0 .2rem}
figure{margin:1rem 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.8rem;color:#555}
.broken{background:#fde2e2;border:1px solid #b32020;padding:.5rem;display:none}.muted{color:#666;font-size:.85rem}
"""
# Marks the page when a figure does not render, so that a broken figure is seen, not silently missing.
CHECK = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  document.body.setAttribute('data-figures', imgs.length);
  document.body.setAttribute('data-figures-broken', bad.length);
  if (bad.length) { var b = document.getElementById('broken'); b.style.display = 'block';
    b.textContent = bad.length + ' figure(s) did not render: ' + bad.map(function (i) { return i.alt; }).join(', '); }
});
"""


# -- small HTML helpers -----------------------------------------------------------------------------
def _e(text: Any) -> str:
    return html.escape(str(text))


def html_table(rows: list[dict[str, Any]], columns: list[str], links: dict[str, str] | None = None) -> str:
    """Rows as an HTML table, each numeric column in one format (as in the Markdown tables)."""
    if not rows:
        return "<p class='muted'>(none)</p>"
    formats = {c: column_format([r.get(c) for r in rows]) for c in columns}
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            value = row.get(c, "")
            text = _e(format_cell(value, formats[c]))
            if links and c in links and row.get(links[c]):
                text = f"<a href='{_e(row[links[c]])}'>{text}</a>"
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            cells.append(f"<td class='num'>{text}</td>" if numeric else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<div class='wide'><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


def figure(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"<figure><img alt='{_e(caption)}' src='data:image/png;base64,{data}'><figcaption>{_e(caption)}</figcaption></figure>"


def page(title: str, sections: list[str]) -> str:
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{_e(title)}</title>"
        f"<style>{STYLE}</style></head><body><div id='broken' class='broken'></div>{''.join(sections)}"
        f"<p class='muted'>written by lightning-dpo on {_e(time.strftime('%Y-%m-%d %H:%M:%S'))}</p>"
        f"<script>{CHECK}</script></body></html>\n"
    )


def _status_badge(status: str) -> str:
    return f"<span class='status {_e(status.replace(' ', '-'))}'>{_e(status)}</span>"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _read_csv(path: Path) -> list[dict[str, Any]]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, csv.Error, UnicodeDecodeError):
        return []
    return [{k: _number(v) for k, v in r.items()} for r in rows]


def _number(value: Any) -> Any:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    return int(number) if number.is_integer() and "." not in str(value) and "e" not in str(value).lower() else number


# -- a run -------------------------------------------------------------------------------------------
def _headline(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    table = []
    for key in HEADLINE:
        points = [(r["step"], float(r[key])) for r in rows if key in r and _finite(r[key])]
        if points:
            (first_step, first), (last_step, last) = points[0], points[-1]
            fmt = column_format([first, last])  # one format per row: the metrics' scales differ
            table.append(
                {
                    "metric": key,
                    "first": format_cell(first, fmt),
                    "at step": first_step,
                    "last": format_cell(last, fmt),
                    "at step ": last_step,
                }
            )
    return table


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(float(value))


def _commands(run_dir: Path, status: dict[str, Any]) -> list[tuple[str, str]]:
    commands = [
        ("draw the dynamics figures", f"python -m lightning_dpo.plot {shlex.quote(str(run_dir))}"),
        ("the papers' interventions on this run's best model", f"python -m lightning_dpo.analyze {override_arg('dpo', run_dir)}"),
        ("evaluate this run's best model", f"python -m lightning_dpo.evaluate {override_arg('model.name_or_path', run_dir)}"),
    ]
    resume = status.get("resume")
    saved = run_dir / ".hydra" / "resume_command.txt"
    if not resume and saved.exists():
        resume = saved.read_text(encoding="utf-8").strip()
    if resume:
        label = "finish this run" if status.get("status") != "completed" else "resume (with a larger trainer.max_steps to extend it)"
        commands.insert(0, (label, resume))
    return commands


def run_report(run_dir: str | Path, draw: bool = True) -> Path:
    """Write `<run_dir>/report.html`; draws `plots/` first when the run has dynamics and `draw`."""
    from lightning_dpo.training.metrics_csv import read_metrics_csv

    run_dir = Path(run_dir)
    status = _read_json(run_dir / "status.json") or {"status": "unknown"}
    try:
        rows = read_metrics_csv(run_dir / "metrics.csv") if (run_dir / "metrics.csv").exists() else []
    except (ValueError, csv.Error, UnicodeDecodeError) as exc:
        log.warning("%s: not readable (%s); the report leaves it out", run_dir / "metrics.csv", exc)
        rows = []
    if draw:
        try:
            from lightning_dpo.training.figures import make_run_plots

            make_run_plots(run_dir)
        except Exception as exc:  # a figure problem must not cost the rest of the report
            log.warning("the training figures could not be drawn (%s: %s); the report shows what exists", type(exc).__name__, exc)
    if draw and (run_dir / "dynamics" / "groups.csv").exists():
        try:
            from lightning_dpo.dynamics.figures import make_plots

            make_plots(run_dir)
        except Exception as exc:  # a figure problem must not cost the rest of the report
            log.warning("the dynamics figures could not be drawn (%s: %s); the report shows what exists", type(exc).__name__, exc)
    state = str(status.get("status", "unknown"))
    sections = [
        f"<h1>lightning-dpo run: {_e(run_dir.name)}</h1>",
        f"<p>{_status_badge(state)} <span class='muted'>{_e(run_dir.resolve())}"
        f"{' &middot; step ' + _e(status['step']) if 'step' in status else ''}"
        f"{' &middot; ' + _e(status['time']) if 'time' in status else ''}</span></p>",
    ]
    if status.get("error"):
        sections.append(f"<p><b>error:</b> <code>{_e(status['error'])}</code></p>")
    sections.append(
        "<h2>Next commands</h2><table>"
        + "".join(f"<tr><td>{_e(what)}</td><td><code>{_e(cmd)}</code></td></tr>" for what, cmd in _commands(run_dir, status))
        + "</table>"
    )
    headline = _headline(rows)
    sections.append("<h2>Headline numbers</h2>" + html_table(headline, ["metric", "first", "at step", "last", "at step "]))
    evaluation = _read_csv(run_dir / "toxicity_eval.csv")
    if evaluation:
        meta = _read_json(run_dir / "eval" / "meta.json")
        note = f"scorer {meta.get('scorer', '?')}; prompts: {meta.get('prompts', '?')}" if meta else ""
        sections.append(f"<h2>Held-out evaluation</h2><p class='muted'>{_e(note)}</p>" + html_table(evaluation, list(evaluation[0].keys())))
    sections += _figures(run_dir / "plots")
    sections += _analyses(run_dir)
    config = run_dir / ".hydra" / "config.yaml"
    if config.exists():
        sections.append(
            f"<h2>Settings</h2><details><summary>.hydra/config.yaml</summary><pre>{_e(config.read_text(encoding='utf-8'))}</pre></details>"
        )
    out = run_dir / REPORT
    atomic_write_text(out, page(f"lightning-dpo: {run_dir.name}", sections))
    return out


def _analyses(run_dir: Path) -> list[str]:
    """Links to what `analyze` and `evaluate` wrote under the run (<run>/analysis/<time>/, <run>/evaluation/<time>/)."""
    rows = []
    for kind, main_file in (("analysis", "table.md"), ("evaluation", "eval.json")):
        for folder in sorted((run_dir / kind).glob("*/")):
            if (folder / main_file).is_file():
                relative = (folder / main_file).relative_to(run_dir).as_posix()
                rows.append(f"<tr><td>{_e(kind)}</td><td><a href='{_e(relative)}'>{_e(relative)}</a></td></tr>")
    if not rows:
        return []
    return ["<h2>Analyses of this run</h2><table><tr><th>command</th><th>result</th></tr>" + "".join(rows) + "</table>"]


def refresh_report(run_dir: Path) -> None:
    """Rewrite a finished run's report.html (after a command added an analysis to it); never fails the command."""
    if not (Path(run_dir) / REPORT).exists():
        return
    try:
        run_report(run_dir, draw=False)
    except Exception as exc:
        log.warning("could not refresh %s (%s: %s)", Path(run_dir) / REPORT, type(exc).__name__, exc)


def _figures(plots: Path) -> list[str]:
    if not plots.is_dir():
        return ["<h2>Figures</h2><p class='muted'>no figures (no dynamics were measured, or plots/ was removed)</p>"]
    sections = []
    groups: dict[str, list[Path]] = {}
    for path in sorted(plots.rglob("*.png")):
        groups.setdefault(str(path.parent.relative_to(plots)), []).append(path)
    for folder, paths in sorted(groups.items(), key=lambda item: (item[0] != ".", item[0])):
        title = "Figures" if folder == "." else f"Figures: {folder}"
        sections.append(f"<h2>{_e(title)}</h2>" + "".join(figure(p, str(p.relative_to(plots.parent))) for p in paths))
    return sections


# -- a sweep -----------------------------------------------------------------------------------------
def sweep_report(sweep_dir: str | Path) -> Path:
    """Write `<sweep_dir>/report.html` (runs `compare` first; links each job's report that exists)."""
    from lightning_dpo.compare import (
        COLUMNS,
        SETTING_METRICS,
        UnreadableJob,
        by_setting,
        compare,
        job_summary,
        range_cell,
        setting_headers,
        unreadable_summary,
    )
    from lightning_dpo.runs.sweep import find_jobs, planned_jobs

    sweep_dir = Path(sweep_dir)
    compare(sweep_dir)
    summaries = []
    for job in find_jobs(sweep_dir):
        try:
            summary = job_summary(job)
        except UnreadableJob as exc:
            summary = unreadable_summary(job, exc)
        if (job / REPORT).exists():
            summary["_report"] = (job / REPORT).relative_to(sweep_dir).as_posix()
        summaries.append(summary)
    summaries += [
        {"job": name, "status": "missing", "error": "planned by multirun.yaml, but its folder is gone", "_rows": []}
        for name in planned_jobs(sweep_dir) or []
        if not (sweep_dir / name).exists()
    ]
    done = sum(s["status"] == "completed" for s in summaries)
    sections = [
        f"<h1>lightning-dpo sweep: {_e(sweep_dir.name)}</h1>",
        f"<p class='muted'>{_e(sweep_dir.resolve())} &middot; {done} of {len(summaries)} jobs completed</p>",
    ]
    failed = [s for s in summaries if s["status"] != "completed"]
    if failed:
        sections.append(
            "<p><b>Not completed:</b></p><ul>"
            + "".join(
                f"<li><code>{_e(s['job'])}</code>: {_e(s['status'])}{(': ' + _e(s['error'])) if s.get('error') else ''}</li>"
                for s in failed
            )
            + "</ul>"
        )
    settings = by_setting(summaries)
    if any(r["jobs"] > 1 for r in settings):
        headers = setting_headers()
        cells = [
            {"setting": r["setting"], "jobs": r["jobs"], **{h: range_cell(r, k) for h, k in zip(headers, SETTING_METRICS)}}
            for r in settings
        ]
        sections.append("<h2>Per setting (mean [min, max] over seeds)</h2>" + html_table(cells, ["setting", "jobs", *headers]))
    columns = [
        c for c in COLUMNS if any(s.get(c) not in (None, "") and not (isinstance(s.get(c), float) and math.isnan(s[c])) for s in summaries)
    ]
    sections.append(
        "<h2>Jobs</h2><p class='muted'>each job name links to its own report where it has one</p>"
        + html_table([{k: v for k, v in s.items() if k != "_rows"} for s in summaries], columns, links={"job": "_report"})
    )
    sections += _figures(sweep_dir / "plots")
    out = sweep_dir / REPORT
    atomic_write_text(out, page(f"lightning-dpo sweep: {sweep_dir.name}", sections))
    return out


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # hydra is a dependency; this only keeps `report` importable on its own
    _HydraCallback = object  # type: ignore[assignment,misc]


class SweepReport(_HydraCallback):
    """Hydra callback (conf/hydra/default.yaml): the sweep's report.html when a multirun ends.

    The report covers every job in the sweep directory; the command's exit status only the jobs this
    command ran (resuming one job of a sweep whose other jobs failed earlier succeeds)."""

    def __init__(self) -> None:
        self.ran: set[str] = set()

    def on_job_end(self, config: Any, job_return: Any = None, **kwargs: Any) -> None:
        with contextlib.suppress(AttributeError):  # no job directory known: the verdict falls back to every job of the sweep
            self.ran.add(Path(job_return.hydra_cfg.hydra.runtime.output_dir).name)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            out = sweep_report(sweep_dir)
            log.info("sweep report: %s (compare.md, plots/ beside it)", out)
        except Exception as exc:  # the jobs' own results stand; the report can be written again
            log.warning(
                "the sweep's report could not be written (%s: %s); `python -m lightning_dpo.report %s` retries",
                type(exc).__name__,
                exc,
                sweep_dir,
            )
        failed = failed_jobs(sweep_dir)
        if self.ran:
            earlier = [job for job, _ in failed if job not in self.ran]
            if earlier:
                log.info("%d job(s) of earlier commands in this sweep did not complete (compare.md lists them)", len(earlier))
            failed = [(job, why) for job, why in failed if job in self.ran]
        if failed:  # the sweep went on past them; the command still says it did not all work
            log.error("%d job(s) of the sweep did not complete: %s", len(failed), "; ".join(f"{job}: {why}" for job, why in failed))
            # the jobs' logging goes to stdout; the command's verdict goes to stderr, one line, as any failing command's
            statuses = ", ".join(f"{job} ({why.split(':', 1)[0]})" for job, why in failed)
            print(
                f"error: {len(failed)} job(s) of the sweep did not complete: {statuses}; why: {sweep_dir / 'compare.md'}", file=sys.stderr
            )
            sys.exit(1)


def failed_jobs(sweep_dir: Path) -> list[tuple[str, str]]:
    """(job, status and error) of every job of a sweep that did not complete, the planned but missing ones included."""
    from lightning_dpo.runs.sweep import find_jobs, planned_jobs

    out = []
    for job in find_jobs(sweep_dir):
        status = RunDirectory(job).read_status()
        if status.get("status") != "completed":
            error = status.get("error") or ""
            out.append((job.name, f"{status.get('status', 'not started')}{': ' + str(error).splitlines()[0] if error else ''}"))
    out += [(name, "missing") for name in planned_jobs(sweep_dir) or [] if not (sweep_dir / name).exists()]
    return out


def write_report(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not a directory")
    if RunDirectory.is_run(path):
        return run_report(path)
    return sweep_report(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightning_dpo.report", description=__doc__.splitlines()[0])
    parser.add_argument("path", help="a run directory, or a sweep directory (a folder of run directories)")
    args = parser.parse_args(argv)
    try:
        out = write_report(args.path)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
