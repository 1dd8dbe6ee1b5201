"""The dynamics files of a run (a public contract) and the reader API.

<run_dir>/probe.safetensors                 the target probe's direction (tensor `direction`)
<run_dir>/probes/<name>.safetensors         every probe's direction (the target's too)
<run_dir>/dynamics/prompts.jsonl            the probe set's prompts
<run_dir>/dynamics/tokens.safetensors       input_ids, attention_mask, positions (fixed mode), bucket (each prompt's)
<run_dir>/dynamics/step_<step:07d>.safetensors
                                            mean_activation, value_norm, value_projection (the target
                                            probe's): float32 (n_layers, d_mlp); for every probe P:
                                            value_projection.P (n_layers, d_mlp) and the components
                                            components.P.{embed, attn_heads (n_layers, n_heads),
                                            attn_bias, mlp_neurons, mlp_bias (n_layers,), residual};
                                            per bucket of prompts: bucket_activation_sum (B, n_layers,
                                            d_mlp), bucket_positions (B,), components.P.<part>.bucket_sum
                                            (B, ...); metadata: step
<run_dir>/dynamics/groups.csv               step,layer,group,count,delta_sum,share,probe,delta_sum_se,share_se
                                            (layer `all` = totals; rows gross_reduction, net_delta)
<run_dir>/dynamics/components.csv           step,probe,layer,component,value,delta,value_se,delta_se
<run_dir>/dynamics/null.csv                 step,probe,quantity,value,null_mean,null_std,null_q05,null_q95,
                                            percentile,null,null_size,value_se
<run_dir>/dynamics/null_directions.safetensors  every null's directions (tensor `<null>`, (K, d_model)); metadata `seeds`: {null: [seed, ...]}
<run_dir>/dynamics/meta.json                probe set, position mode, top_n, probes, nulls, buckets, and the
                                            size and sha256 of every snapshot file

Every file is written atomically. The snapshots are the source of truth for the groups and the
components: everything logged about them, standard errors included, is recomputable from the files
(`load_run(run_dir)` returns them; `lightning_dpo.dynamics.rows.snapshot_tables` recomputes the
tables), and a resumed run verifies them against the checksums its checkpoint holds and rebuilds
both tables from them. The null's rows need the weights of every step's random directions, which
the snapshots do not keep: the checkpoint keeps those rows, and a resume writes null.csv from it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from lightning_dpo.dynamics.components import FIELDS, Components
from lightning_dpo.dynamics.measure import Measurement, Snapshot
from lightning_dpo.dynamics.nulls import NullDirections
from lightning_dpo.dynamics.probe_set import ProbeTokens
from lightning_dpo.dynamics.rows import (
    COMPONENTS_CSV_COLUMNS,
    GROUPS_CSV_COLUMNS,
    NULL_CSV_COLUMNS,
    ComponentRow,
    GroupRow,
    NullRow,
    snapshot_tables,
)
from lightning_dpo.utils.errors import DataError
from lightning_dpo.utils.io import atomic_save_safetensors, atomic_write_json, atomic_write_text, csv_text

GROUPS_FILE_COLUMNS = GROUPS_CSV_COLUMNS  # kept name: the columns of dynamics/groups.csv
TABLES = {
    "groups": ("groups.csv", GROUPS_CSV_COLUMNS),
    "components": ("components.csv", COMPONENTS_CSV_COLUMNS),
    "nulls": ("null.csv", NULL_CSV_COLUMNS),
}


def step_file(directory: Path, step: int) -> Path:
    return directory / f"step_{step:07d}.safetensors"


def file_digest(path: Path) -> str | None:
    """sha256 of a file's bytes, or None when it does not exist."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def measurement_tensors(measurement: Measurement, target: str) -> dict[str, torch.Tensor]:
    """The snapshot file's tensors: the probes' projections and components (means and per-bucket sums)."""
    tensors = {
        "mean_activation": measurement.mean_activation.float().contiguous(),
        "value_norm": measurement.value_norm.float().contiguous(),
        "value_projection": measurement.snapshot(target).value_projection.float().clone(),  # the target again (no shared memory)
        "bucket_activation_sum": measurement.activation_sums.float().contiguous(),
        "bucket_positions": measurement.positions.double().contiguous(),
    }
    means = measurement.component_means()
    for i, name in enumerate(measurement.names):
        tensors[f"value_projection.{name}"] = measurement.projections[i].float().contiguous()
        if means is not None and measurement.components is not None:
            tensors.update(means[i].to_dict(f"components.{name}."))
            for part in FIELDS:
                tensors[f"components.{name}.{part}.bucket_sum"] = getattr(measurement.components, part)[:, i].double().contiguous()
    return tensors


class DynamicsStore:
    """Writes one run's dynamics files (rank 0 only)."""

    def __init__(self, run_dir: str | Path, subdir: str = "dynamics"):
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / subdir
        self.rows: dict[str, list[Any]] = {"groups": [], "components": [], "nulls": []}
        # each step's rows as CSV lines, rendered once (a snapshot rewrites the tables without
        # formatting the earlier steps again); a step measured again moves to the end, like its rows
        self._lines: dict[str, dict[int, str]] = {table: {} for table in TABLES}
        self.meta: dict[str, Any] = {}
        self.digests: dict[int, str] = {}  # step -> sha256 of its snapshot file (kept in the checkpoint)
        self.target = ""  # the probe whose value projections are also stored as `value_projection`

    @property
    def group_rows(self) -> list[GroupRow]:
        return self.rows["groups"]

    @property
    def component_rows(self) -> list[ComponentRow]:
        return self.rows["components"]

    @property
    def null_rows(self) -> list[NullRow]:
        return self.rows["nulls"]

    def write_meta(self, meta: dict[str, Any] | None = None) -> None:
        if meta is not None:
            self.meta = dict(meta)
        files = {
            str(step): {"bytes": step_file(self.dir, step).stat().st_size, "sha256": digest}
            for step, digest in sorted(self.digests.items())
            if step_file(self.dir, step).exists()
        }
        atomic_write_json(self.dir / "meta.json", {**self.meta, "snapshots": files})

    def write_tokens(self, tokens: ProbeTokens) -> None:
        tensors = {k: v.contiguous() for k, v in tokens.to_dict().items()}
        atomic_save_safetensors(self.dir / "tokens.safetensors", tensors)

    def write_null_directions(self, nulls: Sequence[NullDirections]) -> None:
        if not nulls:
            return
        tensors = {n.kind: n.units.float().contiguous() for n in nulls}
        metadata = {"seeds": json.dumps({n.kind: list(n.seeds) for n in nulls}, sort_keys=True)}
        atomic_save_safetensors(self.dir / "null_directions.safetensors", tensors, metadata)

    def write_measurement(self, measurement: Measurement) -> str:
        tensors = measurement_tensors(measurement, self.target)
        metadata = {"step": str(measurement.step)}
        path = step_file(self.dir, measurement.step)
        atomic_save_safetensors(path, tensors, metadata)
        self.digests[measurement.step] = file_digest(path) or ""
        self.write_meta()
        return self.digests[measurement.step]

    def add_rows(self, groups: Sequence[GroupRow], components: Sequence[ComponentRow], nulls: Sequence[NullRow] = ()) -> None:
        new: dict[str, list[Any]] = {"groups": list(groups), "components": list(components), "nulls": list(nulls)}
        steps = {r.step for rows in new.values() for r in rows}
        for table, rows in new.items():
            self.rows[table] = [r for r in self.rows[table] if r.step not in steps] + rows
        self._render(new)
        self._write_tables()

    def _render(self, new: dict[str, list[Any]]) -> None:
        for table, rows in new.items():
            lines = self._lines[table]
            columns = TABLES[table][1]
            for step in dict.fromkeys(r.step for r in rows):  # the steps in order of appearance
                lines.pop(step, None)
                lines[step] = csv_text(columns, (r.as_csv() for r in rows if r.step == step), header=False)

    def _write_tables(self) -> None:
        for table, (name, columns) in TABLES.items():
            if table == "groups" or self.rows[table]:
                atomic_write_text(self.dir / name, csv_text(columns, []) + "".join(self._lines[table].values()))

    def restore(
        self, steps: list[int], digests: dict[int, str], baseline: Measurement, probes: Sequence[str], null_rows: Sequence[NullRow] = ()
    ) -> None:
        """On resume: keep exactly the snapshots of `steps`, each verified against the checksum the
        checkpoint recorded, and rebuild groups.csv and components.csv from them (null.csv from the
        rows the checkpoint kept). A damaged step-0 snapshot is written again from the baseline in
        the checkpoint; any other one cannot be rebuilt (the weights of its step are gone), so the
        run stops naming it."""
        self.digests = dict(digests)
        for step in steps:
            path = step_file(self.dir, step)
            expected = digests.get(step)
            found = file_digest(path)
            if expected is not None and found == expected:
                continue
            if expected is None and found is not None:  # a checkpoint without checksums: readable is all we can ask
                read_measurement(path)
                self.digests[step] = found
                continue
            if step == baseline.step:
                self.write_measurement(baseline.select(list(probes)))
                continue
            what = "is missing" if found is None else "does not match the checksum recorded in the checkpoint (damaged or replaced)"
            raise DataError(
                str(path),
                f"the snapshot of step {step} {what}, and it cannot be rebuilt without the weights of "
                "that step: restore the file, or resume from a checkpoint written before it",
            )
        for path in self.dir.glob("step_*.safetensors"):
            if int(path.stem.split("_")[1]) not in steps:
                path.unlink()  # a future the checkpoint never reached
        self.digests = {s: d for s, d in self.digests.items() if s in steps}
        self.rows = {table: [] for table in TABLES}
        self._lines = {table: {} for table in TABLES}
        first = baseline.select(list(probes))
        for step in steps:
            tables = snapshot_tables(first, read_measurement(step_file(self.dir, step)), probes)
            nulls = [r for r in null_rows if r.step == step]
            self.rows["groups"] += tables.groups
            self.rows["components"] += tables.components
            self.rows["nulls"] += nulls
            self._render({"groups": tables.groups, "components": tables.components, "nulls": nulls})
        self._write_tables()
        self.write_meta()


def read_measurement(path: Path) -> Measurement:
    """A snapshot file as a Measurement of its probes (sorted by name; files written before several
    probes existed hold one, named `probe`; files without buckets read as one bucket)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        step = int(metadata.get("step", path.stem.split("_")[1]))
        names = sorted(k.split(".", 1)[1] for k in tensors if k.startswith("value_projection.")) or ["probe"]
        projections = torch.stack([tensors.get(f"value_projection.{n}", tensors["value_projection"]) for n in names])
        if "bucket_activation_sum" in tensors:
            sums, positions = tensors["bucket_activation_sum"], tensors["bucket_positions"].double()
        else:
            sums, positions = tensors["mean_activation"][None].float(), torch.ones(1, dtype=torch.float64)
        components = None
        if all(f"components.{n}.embed" in tensors for n in names):
            per_probe = []
            for n in names:
                if f"components.{n}.embed.bucket_sum" in tensors:
                    per_probe.append(Components(*(tensors[f"components.{n}.{part}.bucket_sum"] for part in FIELDS)))
                else:  # one bucket: the means times the (one) position count
                    per_probe.append(Components.from_dict(tensors, f"components.{n}.").map(lambda t: t[None].double()))
            components = Components(*(torch.stack([getattr(c, part) for c in per_probe], dim=1) for part in FIELDS))
        return Measurement(step, names, sums, positions, tensors["value_norm"], projections, components)
    except Exception as exc:  # truncated, not safetensors, or a tensor missing
        raise DataError(str(path), f"cannot read the snapshot ({type(exc).__name__}: {exc}); the file is damaged") from None


def read_snapshot(path: Path, probe: str | None = None) -> Snapshot:
    """One probe's snapshot of a file (default: the target probe, the file's `value_projection`)."""
    measurement = read_measurement(path)
    if probe is None:
        with safe_open(str(path), framework="pt") as handle:
            return Snapshot(measurement.step, measurement.mean_activation, handle.get_tensor("value_projection"), measurement.value_norm)
    return measurement.snapshot(probe)


def _read_table(path: Path, required: list[str], numeric: tuple[str, ...]) -> Any:
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype={"layer": str, "probe": str})
    except Exception as exc:
        raise DataError(str(path), f"cannot read it as CSV ({type(exc).__name__}: {exc})") from None
    missing = [c for c in required if c not in frame.columns]
    bad = [c for c in numeric if c in frame.columns and not pd.api.types.is_numeric_dtype(frame[c])]
    if missing or bad:
        raise DataError(str(path), f"damaged: {'missing columns ' + str(missing) if missing else 'non-numeric values in ' + str(bad)}")
    return frame


def _read_meta(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise DataError(str(path), f"not JSON ({exc})") from None


@dataclass
class DynamicsRun:
    """A run's dynamics, as arrays and data frames."""

    run_dir: Path
    steps: list[int]
    mean_activation: Any  # numpy (n_snapshots, n_layers, d_mlp)
    value_projection: Any  # the target probe's
    value_norm: Any
    groups: Any  # pandas DataFrame with the groups.csv columns
    tokens: dict[str, Any] = field(default_factory=dict)  # numpy arrays (fixed mode)
    probe: Any = None  # numpy (d_model,): the target probe
    meta: dict[str, Any] = field(default_factory=dict)
    value_projections: dict[str, Any] = field(default_factory=dict)  # probe -> numpy (n_snapshots, n_layers, d_mlp)
    components: Any = None  # pandas DataFrame with the components.csv columns (None without components)
    nulls: Any = None  # pandas DataFrame with the null.csv columns (None without a null)
    null_directions: dict[str, Any] = field(default_factory=dict)  # null -> numpy (K, d_model)
    bucket_activation_sum: Any = None  # numpy (n_snapshots, B, n_layers, d_mlp)
    bucket_positions: Any = None  # numpy (n_snapshots, B)

    @property
    def probes(self) -> list[str]:
        return list(self.value_projections)

    def snapshot(self, step: int, probe: str | None = None) -> Snapshot:
        i = self.steps.index(step)
        projection = self.value_projection if probe is None else self.value_projections[probe]
        return Snapshot(step, *(torch.from_numpy(a[i]) for a in (self.mean_activation, projection, self.value_norm)))

    def measurement(self, step: int) -> Measurement:
        """The snapshot file of `step` as a Measurement (every probe, bucket sums, components)."""
        return read_measurement(step_file(self.run_dir / "dynamics", step))

    def probe_groups(self, probe: str | None = None) -> Any:
        """groups.csv rows of one probe (the target by default)."""
        if "probe" not in self.groups.columns:
            return self.groups
        return self.groups[self.groups["probe"] == (probe or self.meta.get("target_probe") or self.probes[0])]

    def probe_nulls(self, probe: str | None = None, null: str = "uniform") -> Any:
        """null.csv rows of one probe and one null (the target and the uniform null by default)."""
        if self.nulls is None:
            return None
        frame = self.nulls[self.nulls["probe"] == (probe or self.meta.get("target_probe") or self.probes[0])]
        return frame[frame["null"] == null]

    @property
    def contribution(self) -> Any:
        return self.mean_activation * self.value_projection


def load_run(run_dir: str | Path, subdir: str = "dynamics") -> DynamicsRun:
    """Read a run's dynamics files (see the module docstring) into arrays and data frames."""
    import numpy as np
    import pandas as pd

    run_dir = Path(run_dir)
    directory = run_dir / subdir
    paths = sorted(directory.glob("step_*.safetensors"))
    if not paths:
        raise FileNotFoundError(f"{directory}: no dynamics snapshots (was the NeuronDynamicsCallback enabled?)")
    snapshots = [read_snapshot(p) for p in paths]
    measurements = [read_measurement(p) for p in paths]
    stack = lambda name: np.stack([getattr(s, name).numpy() for s in snapshots])
    meta = _read_meta(directory / "meta.json")
    names = list(measurements[0].names)
    if meta.get("target_probe") in names:  # the target first
        names.remove(meta["target_probe"])
        names.insert(0, meta["target_probe"])
    projections = {n: np.stack([m.snapshot(n).value_projection.numpy() for m in measurements]) for n in names}
    groups_path = directory / "groups.csv"
    groups = (
        _read_table(groups_path, GROUPS_CSV_COLUMNS[:7], ("step", "count", "delta_sum"))
        if groups_path.exists()
        else pd.DataFrame(columns=GROUPS_CSV_COLUMNS)
    )
    components_path = directory / "components.csv"
    components = _read_table(components_path, COMPONENTS_CSV_COLUMNS[:6], ("step", "value", "delta")) if components_path.exists() else None
    null_path = directory / "null.csv"
    nulls = _read_table(null_path, NULL_CSV_COLUMNS[:9], ("step", "value")) if null_path.exists() else None
    tokens = {}
    if (directory / "tokens.safetensors").exists():
        with safe_open(str(directory / "tokens.safetensors"), framework="np") as handle:
            tokens = {k: handle.get_tensor(k) for k in handle.keys()}
    null_directions = {}
    if (directory / "null_directions.safetensors").exists():
        with safe_open(str(directory / "null_directions.safetensors"), framework="np") as handle:
            null_directions = {k: handle.get_tensor(k) for k in handle.keys()}
    probe = None
    if (run_dir / "probe.safetensors").exists():
        with safe_open(str(run_dir / "probe.safetensors"), framework="np") as handle:
            probe = handle.get_tensor("direction")
    same_buckets = len({tuple(m.positions.shape) for m in measurements}) == 1
    return DynamicsRun(
        run_dir,
        [s.step for s in snapshots],
        stack("mean_activation"),
        stack("value_projection"),
        stack("value_norm"),
        groups,
        tokens,
        probe,
        meta,
        projections,
        components,
        nulls,
        null_directions,
        np.stack([m.activation_sums.numpy() for m in measurements]) if same_buckets else None,
        np.stack([m.positions.numpy() for m in measurements]) if same_buckets else None,
    )
