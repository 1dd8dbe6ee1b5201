"""The README's claims about the demo, regenerated over several worlds and two thread counts, each
against the random-direction null (issue 20).

    python benchmarks/claims.py                       # worlds 0-4, 1 and 2 threads: 10 demo runs
    python benchmarks/claims.py --worlds 0 1 2 --threads 1 --out /tmp/claims

Every run is `python -m lightning_dpo.train world.seed=<w>` (the demo's settings; the world is built
once per seed, on one thread, and is the same world whatever the thread count), trained with
OMP_NUM_THREADS=<t>. Read from each run's files at its last step: the held-out toxicity and
perplexity (toxicity_eval.csv), and from dynamics/null.csv every reported quantity of both probes with
the uniform and the covariance null's 5-95% band. Written: <out>/claims.md (the table the README
quotes) and <out>/claims.json (every run's numbers).

A claim is a range [min, max] over every run; a yes/no claim says in how many runs it held. A
quantity "beyond the null" lies outside the null's 5-95% band, i.e. a random direction in the
residual space rarely gives as much.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GROUPS = ("TP-", "TN+", "AP+", "AN-")


def train(world: int, threads: int, out: Path) -> Path:
    run_dir = out / f"world{world}_threads{threads}"
    if (run_dir / "status.json").exists() and json.loads((run_dir / "status.json").read_text()).get("status") == "completed":
        return run_dir  # already measured (the script resumes where it stopped)
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "lightning_dpo.train", f"world.seed={world}", f"hydra.run.dir={run_dir}", "report=false"]
    result = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"world {world}, {threads} threads failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return run_dir


def measurements(run_dir: Path) -> dict[str, float | bool]:
    with open(run_dir / "toxicity_eval.csv") as handle:
        evals = list(csv.DictReader(handle))
    out: dict[str, float | bool] = {
        "toxicity_start": float(evals[0]["eval/toxicity"]),
        "toxicity_end": float(evals[-1]["eval/toxicity"]),
        "perplexity_start": float(evals[0]["eval/perplexity"]),
        "perplexity_end": float(evals[-1]["eval/perplexity"]),
    }
    with open(run_dir / "dynamics" / "null.csv") as handle:
        rows = list(csv.DictReader(handle))
    last = max(int(r["step"]) for r in rows)
    for r in rows:
        if int(r["step"]) != last:
            continue
        key = f"{r['probe']}/{r['quantity']}"
        value, low, high = float(r["value"]), float(r["null_q05"]), float(r["null_q95"])
        out[key] = value
        out[f"{key}/beyond_{r['null']}"] = not (low <= value <= high)
    return out


def span(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    values = [v * scale for v in values]
    return f"{statistics.mean(values):.{digits}g} [{min(values):.{digits}g}, {max(values):.{digits}g}]"


def count(runs: list[dict], key: str) -> str:
    held = sum(bool(r[key]) for r in runs)
    return f"{held} of {len(runs)}"


def table(runs: list[dict]) -> str:
    rows = [
        (
            "held-out toxicity (wordlist), step 0 -> last",
            f"{span([r['toxicity_start'] for r in runs])} -> {span([r['toxicity_end'] for r in runs])}",
        ),
        (
            "perplexity on clean held-out text, step 0 -> last",
            f"{span([r['perplexity_start'] for r in runs])} -> {span([r['perplexity_end'] for r in runs])}",
        ),
    ]
    for group in GROUPS:
        key = f"toxicity/{group}/share"
        rows.append(
            (
                f"{group} share of the gross reduction (%)",
                f"{span([r[key] for r in runs], 100)}; beyond the uniform null in "
                f"{count(runs, key + '/beyond_uniform')}, the covariance null in {count(runs, key + '/beyond_covariance')}",
            )
        )
    rows.append(("TP- carries under half of the reduction", count([{"x": r["toxicity/TP-/share"] < 0.5} for r in runs], "x")))
    for probe in ("toxicity", "workplace"):
        for quantity, label in (
            ("net_delta", "net change of the MLP neurons' writing"),
            ("gross_reduction", "gross reduction"),
            ("components/residual/delta", "residual stream change (value at 0 minus at the end)"),
            ("attention_share", "attention heads' share of all component change (%)"),
        ):
            key = f"{probe}/{quantity}"
            scale = 100 if quantity == "attention_share" else 1
            rows.append(
                (
                    f"{probe} probe: {label}",
                    f"{span([r[key] for r in runs], scale)}; beyond the uniform null in "
                    f"{count(runs, key + '/beyond_uniform')}, the covariance null in {count(runs, key + '/beyond_covariance')}",
                )
            )
    lines = ["| claim | mean [min, max] over the runs; how often beyond the null's 5-95% band |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="claims-"))
    runs = []
    for world in args.worlds:
        for threads in args.threads:
            run_dir = train(world, threads, out)
            runs.append({"world": world, "threads": threads, "run": str(run_dir), **measurements(run_dir)})
            print(f"world {world}, {threads} threads: {run_dir}", flush=True)
    (out / "claims.json").write_text(json.dumps(runs, indent=2) + "\n")
    text = (
        f"Over {len(runs)} demo runs: worlds {', '.join(map(str, args.worlds))}, each trained with "
        f"{' and '.join(map(str, args.threads))} thread(s).\n\n" + table(runs) + "\n"
    )
    (out / "claims.md").write_text(text)
    print(text)
    print(f"wrote {out}/claims.md and claims.json")


if __name__ == "__main__":
    main()
