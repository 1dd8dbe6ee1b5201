"""`metrics.csv`: every logged scalar of a run, one row per step (a public contract).

Train, validation and measurement scalars of the same step are merged into one row; the file is
rewritten atomically at most every `flush_every_s` seconds and whenever a checkpoint is written.

The rows also travel inside every checkpoint (lightning_dpo/callbacks/checkpoint_state.py), so the
checkpoint, not the file, is the source of truth on resume: the resumed run starts from the rows
the checkpoint holds (everything logged up to its step), whatever happened to the file since (a
crash after the checkpoint, a truncated or deleted file). A resumed run's file therefore equals
an uninterrupted run's, byte for byte. Every scalar is logged before any checkpoint of its step is
written (the train metrics by DPOModule at the optimizer step, validation and measurements in
their own hooks), which is what makes the rows in a checkpoint complete.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from lightning_dpo.utils.io import atomic_write_csv

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "metrics_csv"


class MetricsCSVLogger(Logger):
    def __init__(self, save_dir: str, filename: str = "metrics.csv", flush_every_s: float = 10.0):
        super().__init__()
        self._save_dir = str(save_dir)
        self.path = Path(save_dir) / filename
        self.flush_every_s = flush_every_s
        self.rows: dict[int, dict[str, Any]] = {}
        self.columns: list[str] = ["step"]
        self._last_flush = 0.0
        self._dirty = False

    @property
    def name(self) -> str:
        return "csv"

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def log_dir(self) -> str:
        return self._save_dir

    @rank_zero_only
    def log_hyperparams(self, params: Namespace | Mapping[str, Any], *args: Any, **kwargs: Any) -> None:
        pass  # the resolved config lives in .hydra/config.yaml

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        step = int(step if step is not None else metrics.get("step", len(self.rows)))
        row = self.rows.setdefault(step, {"step": step})
        for key, value in metrics.items():
            if key == "step":
                continue
            if key not in self.columns:
                self.columns.append(key)
            row[key] = float(value) if hasattr(value, "__float__") else value
        self._dirty = True

    @rank_zero_only
    def save(self, force: bool = False) -> None:
        if not self._dirty:
            return
        now = time.monotonic()
        if not force and now - self._last_flush < self.flush_every_s:
            return
        atomic_write_csv(self.path, self.columns, [self.rows[s] for s in sorted(self.rows)])
        self._last_flush, self._dirty = now, False

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save(force=True)

    # -- the copy inside checkpoints -------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "rows": [dict(self.rows[s]) for s in sorted(self.rows)]}

    def restore(self, state: Mapping[str, Any], step: int) -> None:
        """Start from the rows a checkpoint of `step` holds; rows after `step` belong to a future it never reached."""
        on_disk = read_metrics_csv(self.path) if self.path.exists() else []
        self.columns = list(state["columns"])
        self.rows = {int(r["step"]): dict(r) for r in state["rows"] if int(r["step"]) <= step}
        kept_on_disk = [r for r in on_disk if r["step"] <= step]
        if not _same_rows(kept_on_disk, [self.rows[s] for s in sorted(self.rows)]):
            log.warning(
                "%s did not hold every row up to step %d (%d of %d rows): rebuilt it from the checkpoint",
                self.path,
                step,
                len(kept_on_disk),
                len(self.rows),
            )
        elif len(on_disk) > len(kept_on_disk):
            log.info("%s: dropped %d rows after step %d (resumed from that step)", self.path, len(on_disk) - len(kept_on_disk), step)
        self._dirty = True
        self.save(force=True)


def _same_rows(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    """Row lists equal value for value, a NaN equal to a NaN (`!=` would call every row with a NaN changed)."""

    def same(x: Any, y: Any) -> bool:
        return x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))

    return len(a) == len(b) and all(r.keys() == q.keys() and all(same(r[k], q[k]) for k in r) for r, q in zip(a, b))


def read_metrics_csv(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a metrics.csv, numbers parsed back to the values they were written from."""
    with open(path, newline="", encoding="utf-8") as handle:
        return [{k: _parse(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]


def _parse(value: str) -> Any:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value
