"""NeuronDynamicsCallback: the paper's neuron-group analysis, every component's share, a random-direction
null and the uncertainty over prompts, while DPO trains.

At step 0 (the policy before any update, i.e. the reference), every `every_n_steps` and at the end
of training it runs one forward over the probe set and projects it on every direction
(lightning_dpo/dynamics/: the pipeline, read top to bottom in its __init__):
- every MLP neuron's mean activation a_i and, for each probe, its value projection p_i; per probe
  the groups (TP-, TN+, AP+, AN- and their mirrors) and the top-N toxic neurons;
- each probe's projection of every component writing to the residual stream, adding up exactly to
  the residual's;
- the same quantities for `null_directions` random directions of each null in `nulls`
  (dynamics/nulls.py), measured in the same forward: each probe's percentile among them;
- jackknife standard errors over `buckets` buckets of prompts (dynamics/uncertainty.py).
This callback keeps the schedule (PeriodicMeasurement), the logging and the state; the files are
written through dynamics/store.py, the metric names come from dynamics/metrics.py.

Probes: `probes` names several ({toxicity: {...}, workplace: {...}}), the first being the target;
`probe` (with `probe.name`, default toxicity) is the one-probe form. The activations are shared:
each extra direction costs only projections.

Under DDP each rank takes a shard of the probe set and the sums are all-reduced.

`cache_dir` (conf: paths.cache_dir) keeps the fixed continuation of the probe set
(dynamics/probe_set.py: build_probe_tokens), keyed by the model's weights and the prompts; null
decodes it at every run's start.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lightning_dpo.callbacks.periodic import PeriodicMeasurement
from lightning_dpo.data.protocol import measured_data, measured_policy
from lightning_dpo.data.texts import VALIDATION, describe_prompt_set, load_prompt_set
from lightning_dpo.data.tokenize import pad_id
from lightning_dpo.dynamics import metrics as keys
from lightning_dpo.dynamics.components import Components, top_heads
from lightning_dpo.dynamics.groups import REDUCING_GROUPS, toxic_top_n
from lightning_dpo.dynamics.measure import Measurement, forward_sums, project
from lightning_dpo.dynamics.nulls import (
    NULL_KINDS,
    NullDirections,
    NullSummary,
    covariance_directions,
    is_null_direction,
    uniform_directions,
)
from lightning_dpo.dynamics.probe_set import POSITION_MODES, ProbeTokens, assign_buckets, build_probe_tokens, prompt_ids_for
from lightning_dpo.dynamics.rows import NullRow, snapshot_tables
from lightning_dpo.dynamics.store import DynamicsStore
from lightning_dpo.model.fingerprint import weights_fixed
from lightning_dpo.model.wrappers import is_sharded
from lightning_dpo.neurons.hooks import find_output_projections
from lightning_dpo.neurons.probe import Probe, ProbeFile, RunProbe, build_probe, is_probe_file, save_probe
from lightning_dpo.training.wandb_logger import is_wandb_logger
from lightning_dpo.utils.errors import ConfigError
from lightning_dpo.utils.io import atomic_write_jsonl, check_file_name
from lightning_dpo.utils.processes import Processes

log = logging.getLogger(__name__)


class NeuronDynamicsCallback(PeriodicMeasurement):
    STATE_VERSION = 2

    def __init__(
        self,
        prompts: Mapping[str, Any],
        output_dir: str,
        probe: Mapping[str, Any] | None = None,
        probes: Mapping[str, Mapping[str, Any]] | None = None,
        every_n_steps: int = 25,
        positions: str = "fixed",
        max_prompts: int | None = None,
        max_prompt_tokens: int | None = 32,
        prepend_bos: bool = False,
        num_positions: int = 20,
        center_writing_weights: bool = False,
        components: bool = True,
        batch_size: int = 256,
        top_n: int = 128,
        null_directions: int = 32,
        nulls: Sequence[str] = NULL_KINDS,
        null_seed: int = 0,
        buckets: int = 16,
        name: str | None = None,
        cache_dir: str | None = None,
    ):
        super().__init__(every_n_steps, name=name)
        self.key = f"callbacks.{name or 'neuron_dynamics'}"
        if positions not in POSITION_MODES:
            raise ConfigError(f"{self.key}.positions", f"got {positions!r}; accepted: {list(POSITION_MODES)}")
        if num_positions < 1:
            raise ConfigError(f"{self.key}.num_positions", f"must be >= 1, got {num_positions}")
        if top_n < 1:
            raise ConfigError(f"{self.key}.top_n", f"must be >= 1, got {top_n}")
        unknown = [k for k in nulls if k not in NULL_KINDS]
        if unknown:
            raise ConfigError(f"{self.key}.nulls", f"unknown {unknown}; accepted: {list(NULL_KINDS)}")
        if "covariance" in nulls and not components:
            log.info(
                "%s: the covariance null needs the residual stream's covariance, measured with the components; "
                "components=false keeps the uniform null only",
                self.key,
            )
        self.null_kinds = [k for k in nulls if k != "covariance" or components] if null_directions > 0 else []
        self.null_count, self.null_seed = null_directions, null_seed
        if buckets < 2:
            raise ConfigError(f"{self.key}.buckets", f"must be >= 2 (the jackknife leaves one bucket out), got {buckets}")
        self.probe_cfgs = _named_probes(probe, probes, self.key)
        self.named_probes = bool(probes)
        self.prompt_spec, self.max_prompts = dict(prompts), max_prompts
        # a file is read now (a bad one fails before training); the validation prompts at fit start
        self.from_validation = self.prompt_spec.get("source") == VALIDATION
        self.prompts: list[str] = [] if self.from_validation else load_prompt_set(self.prompt_spec, f"{self.key}.prompts", max_prompts)
        self.positions = positions
        self.max_prompt_tokens, self.prepend_bos, self.num_positions = max_prompt_tokens, prepend_bos, num_positions
        self.center_writing_weights, self.components = center_writing_weights, components
        self.cache_dir = cache_dir
        self.batch_size, self.top_n, self.buckets = batch_size, top_n, buckets
        self.run_dir = Path(output_dir)
        self.store = DynamicsStore(self.run_dir)
        self.store.target = self.target
        self.probes: dict[str, Probe] = {}
        self.tokens: ProbeTokens | None = None
        self.nulls: list[NullDirections] = []
        self.baseline: Measurement | None = None
        self.null_history: list[NullRow] = []  # every null row so far (null.csv needs the weights: kept in the checkpoint)
        self.last: dict[str, Any] = {}  # the latest tables, for the summary
        self._restored_digests: dict[int, str] = {}

    @property
    def target(self) -> str:
        """The first probe: its metrics also go under the first names (dynamics/<group>/...)."""
        return next(iter(self.probe_cfgs))

    # -- set-up at step 0 (or restored from the checkpoint) -----------------------------------------
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.from_validation and not self.prompts:
            records = measured_data(trainer, self.key).val_records
            self.prompts = load_prompt_set(self.prompt_spec, f"{self.key}.prompts", self.max_prompts, [r.prompt for r in records])

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        projections = find_output_projections(measured_policy(pl_module, self.key))
        neurons = len(projections) * projections[0].d_mlp
        if self.top_n > neurons:
            raise ConfigError(f"{self.key}.top_n", f"{self.top_n} is more than the model's {neurons} MLP neurons")
        with torch.no_grad(), weights_fixed():  # the probes' quality records and the continuation key one model
            if not self.probes:
                self.probes = self._make_probes(trainer, pl_module)
            if self.positions == "fixed" and self.tokens is None:
                self.tokens = self._probe_tokens(trainer, pl_module, fixed=True)
        if trainer.is_global_zero:
            save_probe(self.probes[self.target], self.run_dir / "probe.safetensors")
            for probe_name, probe in self.probes.items():
                save_probe(probe, self.run_dir / "probes" / f"{probe_name}.safetensors")
            atomic_write_jsonl(self.store.dir / "prompts.jsonl", ({"prompt": p} for p in self.prompts))
            if self.tokens is not None:
                self.store.write_tokens(self.tokens)
            self.store.write_meta(self._meta())
        super().on_train_start(trainer, pl_module)

    def _make_probes(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Probe]:
        if trainer.global_step > 0:
            raise RuntimeError("resuming without the dynamics state in the checkpoint: the probes of step 0 are unknown")
        probes = None
        policy = measured_policy(pl_module, self.key)
        sharded = is_sharded(policy)  # trainer=fsdp: the probe's forwards and weights are collectives, every process builds
        if trainer.is_global_zero or sharded:
            tokenizer = measured_data(trainer, self.key).tokenizer
            probes = {
                probe_name: build_probe(policy, tokenizer, node=cfg, key=self._probe_key(probe_name))
                for probe_name, cfg in self.probe_cfgs.items()
            }
        if trainer.is_global_zero:
            for probe_name, probe in probes.items():
                if probe.quality is not None:
                    log.info("probe %s: %s", probe_name, probe.quality.summary())
        if trainer.world_size > 1:
            probes = trainer.strategy.broadcast(probes, src=0)
        assert probes is not None  # built on rank 0 (every rank when sharded), broadcast to the others
        return probes

    def _probe_key(self, name: str) -> str:
        return f"{self.key}.probes.{name}" if self.named_probes else "probe"

    def _probe_tokens(self, trainer: L.Trainer, pl_module: L.LightningModule, fixed: bool) -> ProbeTokens:
        """Prompts + greedy continuation: of the reference (fixed, at step 0) or of the current policy."""
        if fixed and trainer.global_step > 0:
            raise RuntimeError("resuming without the dynamics state in the checkpoint: the fixed probe tokens are unknown")
        tokenizer = measured_data(trainer, self.key).tokenizer
        ids = prompt_ids_for(tokenizer, self.prompts, self.max_prompt_tokens, self.prepend_bos)
        with trainer.precision_plugin.forward_context():
            return build_probe_tokens(
                measured_policy(pl_module, self.key),
                ids,
                pad_id(tokenizer),
                self.num_positions,
                self.batch_size,
                buckets=self.buckets,
                seed=self.null_seed,
                cache_dir=self.cache_dir if fixed else None,  # `generate`: the policy of this step, never the same twice
            )

    def _meta(self) -> dict[str, Any]:
        return {
            "prompts": describe_prompt_set(self.prompt_spec, len(self.prompts)),
            "num_prompts": len(self.prompts),
            "positions": self.positions,
            "num_positions": self.num_positions,
            "max_prompt_tokens": self.max_prompt_tokens,
            "prepend_bos": self.prepend_bos,
            "center_writing_weights": self.center_writing_weights,
            "top_n": self.top_n,
            "target_probe": self.target,
            "probes": {n: {k: str(v) for k, v in p.metadata.items()} for n, p in self.probes.items()},
            "probe": {k: str(v) for k, v in self.probes[self.target].metadata.items()},
            "nulls": {n.kind: {"directions": len(n.seeds), "seeds": n.seeds} for n in self.nulls}
            or {k: {"directions": self.null_count, "first_seed": self.null_seed} for k in self.null_kinds},
            "buckets": self.buckets,
            "definitions": "P_i = a_i * p_i; D_i = P_i(0) - P_i(t); types frozen at step 0; component delta = value(0) - value(t); "
            "null: the same quantities for random unit directions; *_se: jackknife over buckets of prompts; see docs/dynamics.md",
        }

    def _directions(self) -> dict[str, torch.Tensor]:
        named = {name: probe.unit for name, probe in self.probes.items()}
        for null in self.nulls:
            named.update(zip(null.names(), null.units))
        return named

    def _make_nulls(self, d_model: int, covariance: torch.Tensor | None) -> list[NullDirections]:
        nulls = []
        for kind in self.null_kinds:
            if kind == "uniform":
                nulls.append(uniform_directions(d_model, self.null_count, self.null_seed))
            elif covariance is not None:
                nulls.append(covariance_directions(covariance, self.null_count, self.null_seed))
        return nulls

    # -- one snapshot -----------------------------------------------------------------------------
    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> dict[str, float]:
        tokens = self.tokens if self.positions == "fixed" else self._probe_tokens(trainer, pl_module, fixed=False)
        policy = measured_policy(pl_module, self.key)
        processes = Processes.of_trainer(trainer, is_sharded(policy), pl_module.device)
        first = self.baseline is None
        with trainer.precision_plugin.forward_context():
            sums = forward_sums(
                policy,
                tokens.shard(processes.rank, processes.world),
                self.batch_size,
                self.buckets,
                processes.sum_across,
                self.components,
                covariance=first and "covariance" in self.null_kinds,
            )
        if first:  # the null's directions: seeded, and (covariance) drawn from this forward's residual stream
            self.nulls = self._make_nulls(next(iter(self.probes.values())).direction.numel(), sums.covariance())
            if trainer.is_global_zero:
                self.store.write_null_directions(self.nulls)
                self.store.write_meta(self._meta())
        current = project(policy, sums, step, self._directions(), self.center_writing_weights)
        if first:
            self.baseline = current
        assert self.baseline is not None  # the first snapshot is the baseline
        tables = snapshot_tables(self.baseline, current, list(self.probes), {n.kind: n.names() for n in self.nulls})
        self.null_history = [r for r in self.null_history if r.step != step] + tables.nulls
        if trainer.is_global_zero:
            self.store.write_measurement(current.select(list(self.probes)))  # also records its checksum (kept in the checkpoint)
            self.store.add_rows(tables.groups, tables.components, tables.nulls)
        self.last = {"groups": tables.groups, "components": tables.components, "nulls": tables.nulls}
        metrics: dict[str, float] = {}
        for probe_name in self.probes:
            groups = [r for r in tables.groups if r.probe == probe_name]
            top = toxic_top_n(self.baseline.snapshot(probe_name), current.snapshot(probe_name), self.top_n)
            metrics.update(keys.group_metrics(groups, probe_name))
            metrics.update(keys.top_metrics(top, probe_name, self.top_n))
            if probe_name == self.target:  # the first names, kept for the target probe
                metrics.update(keys.group_metrics(groups, None))
                metrics.update(keys.top_metrics(top, None, self.top_n))
            if tables.components:
                metrics.update(keys.component_metrics([r for r in tables.components if r.probe == probe_name], probe_name))
            metrics.update(keys.null_metrics([r for r in tables.nulls if r.probe == probe_name], probe_name))
        return metrics

    def on_resume(self, trainer: L.Trainer, step: int) -> None:
        steps = [entry["step"] for entry in self.history]
        self.null_history = [r for r in self.null_history if r.step in steps]
        if self.baseline is None:
            raise RuntimeError("resuming without the dynamics state in the checkpoint: the baseline of step 0 is unknown")
        self.store.restore(steps, self._restored_digests, self.baseline, list(self.probes), self.null_history)
        last = max(steps, default=None)  # the summary reads the last measurement's rows
        self.last = {table: [r for r in self.store.rows[table] if r.step == last] for table in ("groups", "components", "nulls")}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        wandb_loggers = [lg for lg in trainer.loggers if is_wandb_logger(lg)]
        if wandb_loggers and trainer.is_global_zero and self.history:
            from lightning_dpo.dynamics.figures import make_plots
            from lightning_dpo.training.wandb_logger import log_dynamics_charts, log_table

            paths = make_plots(self.run_dir)
            steps = [e["step"] for e in self.history]
            for logger in wandb_loggers:
                for path in paths:  # one key per figure: they differ in size
                    key = path.relative_to(self.run_dir / "plots").with_suffix("").as_posix().replace("/", "_")
                    logger.log_image(key=f"dynamics/plots/{key}", images=[str(path)])
                for probe_name in self.probes:
                    shares = {g: [e.get(keys.key(probe_name, g, "share"), float("nan")) for e in self.history] for g in REDUCING_GROUPS}
                    log_dynamics_charts(logger, steps, shares, key=keys.key(probe_name, "shares_chart"))
                    heads = top_heads([r.as_csv() for r in self.last.get("components", []) if r.probe == probe_name], n=10)
                    if heads:
                        log_table(logger, keys.key(probe_name, "top_heads"), ["head", "delta"], [list(h) for h in heads])

    # -- state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.probes:
            state["probes"] = {n: {"direction": p.direction.clone(), "metadata": dict(p.metadata)} for n, p in self.probes.items()}
        if self.tokens is not None:
            state["tokens"] = self.tokens.to_dict()
        if self.baseline is not None:
            b = self.baseline
            state["baseline"] = {
                "step": b.step,
                "names": list(b.names),
                "activation_sums": b.activation_sums,
                "positions": b.positions,
                "value_norm": b.value_norm,
                "projections": b.projections,
                "components": None if b.components is None else {f: getattr(b.components, f) for f in Components.FIELDS},
            }
        state["nulls"] = [{"kind": n.kind, "seeds": list(n.seeds), "units": n.units} for n in self.nulls]
        state["null_rows"] = [r.as_csv() for r in self.null_history]
        state["snapshot_digests"] = dict(self.store.digests)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "probes" in state_dict:
            self.probes = {n: Probe(p["direction"], dict(p["metadata"])) for n, p in state_dict["probes"].items()}
        if "tokens" in state_dict:
            tokens = dict(state_dict["tokens"])
            if "bucket" not in tokens:  # a checkpoint from before the buckets: the same seeded assignment
                tokens["bucket"] = assign_buckets(tokens["input_ids"].shape[0], self.buckets, self.null_seed)
            self.tokens = ProbeTokens(**tokens)
        if "baseline" in state_dict:
            self.baseline = _baseline_from_state(state_dict["baseline"])
        self.nulls = [NullDirections(n["kind"], list(n["seeds"]), n["units"]) for n in state_dict.get("nulls", [])]
        if self.baseline is not None and not all(name in self.baseline.names for null in self.nulls for name in null.names()):
            self.nulls = []  # a checkpoint from before the null: no null rows from here either
        self.null_history = [_null_row(r) for r in state_dict.get("null_rows", [])]
        self._restored_digests = {int(k): v for k, v in state_dict.get("snapshot_digests", {}).items()}

    # -- report -----------------------------------------------------------------------------------
    def summary(self) -> str:
        if not self.history:
            return "neuron dynamics: no snapshot"
        step = self.history[-1]["step"]
        rows = {r.group: r for r in self.last.get("groups", []) if r.layer is None and r.probe == self.target}
        measured = f"{len(self.prompts)} prompts of dynamics/prompts.jsonl" if self.prompts else "the probe set"
        if self.tokens is not None and self.positions == "fixed":
            measured += f", {int(self.tokens.positions.sum())} positions"
        lines = [
            f"neuron groups at step {step}, probe {self.target}, over {measured} "
            "(D = P(0) - P(t) along the probe; > 0 is less writing along it; +- one jackknife standard error over "
            f"{self.buckets} buckets of prompts):",
            f"  {'group':<16}{'count':>8}{'delta_sum':>22}{'share':>17}",
        ]
        for group in (*REDUCING_GROUPS, "TP+", "TN-", "AP-", "AN+", "gross_reduction", "net_delta"):
            r = rows.get(group)
            if r is None:
                continue
            share = f"{100 * r.share:7.1f}% +- {100 * r.share_se:4.1f}" if group in REDUCING_GROUPS and r.share == r.share else ""
            lines.append(f"  {group:<16}{r.count:>8}{r.delta_sum:>13.5f} +- {r.delta_sum_se:<6.3g}{share:>17}")
        lines += self._null_lines()
        for probe_name in self.probes:
            lines += self._component_line(probe_name)
        return "\n".join(lines)

    def _null_lines(self) -> list[str]:
        """In words: which of the target probe's quantities lie outside each null's 5-95% band."""
        out = []
        for null in self.nulls:
            rows = [
                r
                for r in self.last.get("nulls", [])
                if r.probe == self.target and r.null == null.kind and r.quantity in keys.NULL_METRIC_QUANTITIES
            ]
            if not rows:
                continue
            outside = [r for r in rows if r.summary.outside]
            inside = [r for r in rows if not r.summary.outside and math.isfinite(r.summary.value)]
            describe = lambda r: (
                f"{r.quantity} {_fmt(r.quantity, r.summary.value)} (null {_fmt(r.quantity, r.summary.q05)} to {_fmt(r.quantity, r.summary.q95)})"
            )
            out.append(
                f"against {len(null.seeds)} random directions ({null.kind} null), outside the null's 5-95% band: "
                + ("; ".join(describe(r) for r in outside) or "none")
            )
            if inside:
                out.append("  inside it (a random direction shows as much): " + ", ".join(r.quantity for r in inside))
        return out

    def _component_line(self, probe_name: str) -> list[str]:
        rows = [r for r in self.last.get("components", []) if r.probe == probe_name]
        residual = next((r for r in rows if r.component == "residual"), None)
        if residual is None:
            return []
        last = self.history[-1]
        share = last.get(keys.key(probe_name, "attention_share"))
        heads = ", ".join(f"{h} {d:+.3g}" for h, d in top_heads([r.as_csv() for r in rows], n=3))
        start, end = residual.value + residual.delta, residual.value
        move = "fell" if end < start else "rose"
        share_text = f"; attention heads {100 * share:.0f}% of all |component change|" if share == share else ""
        return [
            f"probe {probe_name}: the residual stream along the probe {move} from {start:.4g} to {end:.4g} "
            f"(change {end - start:+.4g}){share_text}; top heads {heads}"
        ]


def _fmt(quantity: str, value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{100 * value:.1f}%" if quantity.endswith("share") else f"{value:.3g}"


def _baseline_from_state(b: Mapping[str, Any]) -> Measurement:
    if "names" in b:
        parts = None if b.get("components") is None else Components.from_dict(b["components"])
        return Measurement(b["step"], list(b["names"]), b["activation_sums"], b["positions"], b["value_norm"], b["projections"], parts)
    # a checkpoint from before the buckets: one bucket whose sum is the mean (one position)
    names = list(b["value_projection"])
    parts = None
    if b.get("components"):
        per = [Components.from_dict(b["components"][n]) for n in names]
        parts = Components(*(torch.stack([getattr(c, f) for c in per])[None].double() for f in Components.FIELDS))
    return Measurement(
        b["step"],
        names,
        b["mean_activation"][None].float(),
        torch.ones(1, dtype=torch.float64),
        b["value_norm"],
        torch.stack([b["value_projection"][n] for n in names]),
        parts,
    )


def _null_row(row: Mapping[str, Any]) -> NullRow:
    summary = NullSummary(
        row["value"], row["null_mean"], row["null_std"], row["null_q05"], row["null_q95"], row["percentile"], int(row["null_size"])
    )
    return NullRow(int(row["step"]), row["probe"], row["quantity"], row["null"], summary, row["value_se"])


def _named_probes(probe: Any, probes: Mapping[str, Any] | None, key: str) -> dict[str, Any]:
    """{name: probe source}: `probes` when given (the first is the target), else the one `probe`. A
    source is an object Hydra built from a `_target_` node (ProbeSource or any callable), or a
    mapping of the older `source:` form."""
    if probes:
        named = {str(n): _with_name(cfg, str(n)) for n, cfg in probes.items()}
    elif probe:
        name = str((probe.get("name") if isinstance(probe, Mapping) else getattr(probe, "name", None)) or "toxicity")
        named = {name: probe}
    else:
        raise ConfigError(f"{key}.probe", "the neuron dynamics need a probe: probe.path=<probe file> (or probes={name: {...}})")
    for name in named:  # a name becomes probes/<name>.safetensors and plots/<name>/: a plain file name only
        check_file_name(name, f"{key}.probes.{name}" if probes else "probe.name")
        if is_null_direction(name):
            raise ConfigError(f"{key}.probes.{name}" if probes else "probe.name", "names starting with 'null.' are the null's")
    for name, source in named.items():
        missing = (
            (is_probe_file(source) and not source.get("path"))
            if isinstance(source, Mapping)
            else (isinstance(source, ProbeFile) and not isinstance(source, RunProbe) and not source.path)
        )
        if missing:
            raise ConfigError(
                "probe.path" if not probes else f"{key}.probes.{name}.path",
                "the neuron dynamics need a probe: probe.path=<probe file> (or probe=train probe.data=<labelled texts>)",
            )
    return named


def _with_name(source: Any, name: str) -> Any:
    if isinstance(source, Mapping):
        return {**dict(source), "name": name}
    if hasattr(source, "name"):
        source.name = name
    return source
