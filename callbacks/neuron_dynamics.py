"""NeuronDynamicsCallback: the paper's neuron-group analysis, and every component's share, while DPO trains.

At step 0 (the policy before any update, i.e. the reference), every `every_n_steps` and at the
end of training it measures, in one forward over the probe set (lightning_dpo/neurons/snapshot.py):
- every MLP neuron's mean activation a_i and, for each probe, its value projection p_i; per probe
  the groups (TP-, TN+, AP+, AN- and their mirrors) and the top-N toxic neurons;
- for each probe, the projection of every component writing to the residual stream (embeddings,
  each attention head, the biases, the MLP neurons per layer, the final residual), which add up
  exactly to the residual's (lightning_dpo/neurons/components.py).

Probes: `probes` names several ({toxicity: {...}, workplace: {...}}), the first being the target;
`probe` (with `probe.name`, default toxicity) is the one-probe form. The activations are shared:
each extra probe costs only projections.

Logged to every logger: `dynamics/<probe>/<group>/{delta_sum,count,share}`, `dynamics/<probe>/{gross_reduction,
net_delta}`, `dynamics/<probe>/toxic_top<N>/...`, `dynamics/<probe>/components/{embed,attention,mlp,residual}/delta`
and `dynamics/<probe>/attention_share`; the target probe's group metrics also under their first names
(`dynamics/<group>/...`, `dynamics/gross_reduction`, ...). Files: see lightning_dpo/dynamics/store.py.
Under DDP each rank takes a shard of the probe set and the sums are all-reduced.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import lightning as L
import torch

from lightning_dpo.callbacks.periodic import PeriodicMeasurement
from lightning_dpo.data.texts import VALIDATION, describe_prompt_set, load_prompt_set
from lightning_dpo.data.tokenize import pad_id
from lightning_dpo.dynamics.probe_set import POSITION_MODES, build_probe_tokens, prompt_ids_for
from lightning_dpo.dynamics.store import DynamicsStore, table_rows
from lightning_dpo.neurons.components import Components, component_metrics, top_heads
from lightning_dpo.neurons.groups import REDUCING_GROUPS, summary_metrics, toxic_top_n
from lightning_dpo.neurons.hooks import find_output_projections
from lightning_dpo.neurons.probe import Probe, build_probe, save_probe
from lightning_dpo.neurons.snapshot import Measurement, ProbeTokens, measure
from lightning_dpo.utils.errors import ConfigError
from lightning_dpo.training.wandb_logger import is_wandb_logger
from lightning_dpo.utils.io import atomic_write_jsonl, check_file_name

log = logging.getLogger(__name__)


class NeuronDynamicsCallback(PeriodicMeasurement):
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
        name: str | None = None,
    ):
        super().__init__(every_n_steps, name=name)
        self.key = f"callbacks.{name or 'neuron_dynamics'}"
        if positions not in POSITION_MODES:
            raise ConfigError(f"{self.key}.positions", f"got {positions!r}; accepted: {list(POSITION_MODES)}")
        if num_positions < 1:
            raise ConfigError(f"{self.key}.num_positions", f"must be >= 1, got {num_positions}")
        if top_n < 1:
            raise ConfigError(f"{self.key}.top_n", f"must be >= 1, got {top_n}")
        self.probe_cfgs = _named_probes(probe, probes, self.key)
        self.prompt_spec, self.max_prompts = dict(prompts), max_prompts
        # a file is read now (a bad one fails before training); the validation prompts at fit start
        self.prompts = None if self.prompt_spec.get("source") == VALIDATION else load_prompt_set(self.prompt_spec, f"{self.key}.prompts", max_prompts)
        self.positions = positions
        self.max_prompt_tokens, self.prepend_bos, self.num_positions = max_prompt_tokens, prepend_bos, num_positions
        self.center_writing_weights, self.components = center_writing_weights, components
        self.batch_size, self.top_n = batch_size, top_n
        self.run_dir = Path(output_dir)
        self.store = DynamicsStore(self.run_dir)
        self.store.target = self.target
        self.probes: dict[str, Probe] = {}
        self.tokens: ProbeTokens | None = None
        self.baseline: Measurement | None = None
        self.last: dict[str, list[dict[str, Any]]] = {}  # the latest groups and components rows, for the summary
        self._restored_digests: dict[int, str] = {}

    @property
    def target(self) -> str:
        """The first probe: its metrics also go under the first names (dynamics/<group>/...)."""
        return next(iter(self.probe_cfgs))

    # -- set-up at step 0 (or restored from the checkpoint) -----------------------------------------
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.prompts is None:
            records = trainer.datamodule.val_records
            self.prompts = load_prompt_set(self.prompt_spec, f"{self.key}.prompts", self.max_prompts, [r.prompt for r in records])

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        projections = find_output_projections(pl_module.policy)
        neurons = len(projections) * projections[0].d_mlp
        if self.top_n > neurons:
            raise ConfigError(f"{self.key}.top_n", f"{self.top_n} is more than the model's {neurons} MLP neurons")
        with torch.no_grad():
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
        if trainer.is_global_zero:
            probes = {}
            for probe_name, cfg in self.probe_cfgs.items():
                probes[probe_name] = build_probe(pl_module.policy, trainer.datamodule.tokenizer, **cfg)
                if "accuracy" in probes[probe_name].metadata:
                    log.info("probe %s: held-out accuracy %.4f", probe_name, float(probes[probe_name].metadata["accuracy"]))
        if trainer.world_size > 1:
            probes = trainer.strategy.broadcast(probes, src=0)
        return probes

    def _probe_tokens(self, trainer: L.Trainer, pl_module: L.LightningModule, fixed: bool) -> ProbeTokens:
        """Prompts + greedy continuation: of the reference (fixed, at step 0) or of the current policy."""
        if fixed and trainer.global_step > 0:
            raise RuntimeError("resuming without the dynamics state in the checkpoint: the fixed probe tokens are unknown")
        tokenizer = trainer.datamodule.tokenizer
        ids = prompt_ids_for(tokenizer, self.prompts, self.max_prompt_tokens, self.prepend_bos)
        with trainer.precision_plugin.forward_context():
            return build_probe_tokens(pl_module.policy, ids, pad_id(tokenizer), self.num_positions, self.batch_size)

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
            "definitions": "P_i = a_i * p_i; D_i = P_i(0) - P_i(t); types frozen at step 0; component delta = value(0) - value(t); see README",
        }

    # -- one snapshot -----------------------------------------------------------------------------
    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> dict[str, float]:
        tokens = self.tokens if self.positions == "fixed" else self._probe_tokens(trainer, pl_module, fixed=False)
        reduce = None
        if trainer.world_size > 1:
            reduce = lambda t: trainer.strategy.reduce(t, reduce_op="sum")  # noqa: E731
        units = {name: probe.unit for name, probe in self.probes.items()}
        with trainer.precision_plugin.forward_context():
            current = measure(pl_module.policy, tokens.shard(trainer.global_rank, trainer.world_size), units, step, self.batch_size,
                              reduce, self.center_writing_weights, self.components)
        if self.baseline is None:
            self.baseline = current
        groups, components = table_rows(self.baseline, current)
        if trainer.is_global_zero:
            self.store.write_measurement(current)  # also records its checksum (kept in the checkpoint)
            self.store.add_rows(groups, components)
        self.last = {"groups": groups, "components": components}
        metrics: dict[str, float] = {}
        for probe_name in self.probes:
            probe_groups = [r for r in groups if r["probe"] == probe_name]
            top = toxic_top_n(self.baseline.snapshot(probe_name), current.snapshot(probe_name), self.top_n)
            named = summary_metrics(probe_groups, top, self.top_n)
            metrics.update({k.replace("dynamics/", f"dynamics/{probe_name}/", 1): v for k, v in named.items()})
            if probe_name == self.target:
                metrics.update(named)  # the first names, kept for the target probe
            if components:
                metrics.update(component_metrics(probe_name, [r for r in components if r["probe"] == probe_name]))
        return metrics

    def on_resume(self, trainer: L.Trainer, step: int) -> None:
        steps = [entry["step"] for entry in self.history]
        self.store.restore(steps, self._restored_digests, self.baseline)
        last = max(steps, default=None)  # the summary reads the last measurement's rows
        self.last = {"groups": [r for r in self.store.group_rows if r["step"] == last],
                     "components": [r for r in self.store.component_rows if r["step"] == last]}

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
                    shares = {g: [e.get(f"dynamics/{probe_name}/{g}/share", float("nan")) for e in self.history] for g in REDUCING_GROUPS}
                    log_dynamics_charts(logger, steps, shares, key=f"dynamics/{probe_name}/shares_chart")
                    heads = top_heads([r for r in self.last.get("components", []) if r["probe"] == probe_name], n=10)
                    if heads:
                        log_table(logger, f"dynamics/{probe_name}/top_heads", ["head", "delta"], [list(h) for h in heads])

    # -- state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.probes:
            state["probes"] = {n: {"direction": p.direction.clone(), "metadata": dict(p.metadata)} for n, p in self.probes.items()}
        if self.tokens is not None:
            state["tokens"] = self.tokens.to_dict()
        if self.baseline is not None:
            b = self.baseline
            state["baseline"] = {"step": b.step, "mean_activation": b.mean_activation, "value_norm": b.value_norm,
                                 "value_projection": dict(b.value_projection),
                                 "components": {n: c.to_dict() for n, c in b.components.items()}}
        state["snapshot_digests"] = dict(self.store.digests)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "probes" in state_dict:
            self.probes = {n: Probe(p["direction"], dict(p["metadata"])) for n, p in state_dict["probes"].items()}
        if "tokens" in state_dict:
            self.tokens = ProbeTokens(**state_dict["tokens"])
        if "baseline" in state_dict:
            b = state_dict["baseline"]
            self.baseline = Measurement(b["step"], b["mean_activation"], b["value_norm"], dict(b["value_projection"]),
                                        {n: Components.from_dict(c) for n, c in b.get("components", {}).items()})
        self._restored_digests = {int(k): v for k, v in state_dict.get("snapshot_digests", {}).items()}

    # -- report -----------------------------------------------------------------------------------
    def summary(self) -> str:
        if not self.history:
            return "neuron dynamics: no snapshot"
        step = self.history[-1]["step"]
        rows = {r["group"]: r for r in self.last.get("groups", []) if r["layer"] == "all" and r["probe"] == self.target}
        measured = f"{len(self.prompts)} prompts of dynamics/prompts.jsonl" if self.prompts else "the probe set"
        if self.tokens is not None and self.positions == "fixed":
            measured += f", {int(self.tokens.positions.sum())} positions"
        lines = [f"neuron groups at step {step}, probe {self.target}, over {measured} "
                 "(D = P(0) - P(t) along the probe; > 0 is less writing along it):",
                 f"  {'group':<16}{'count':>8}{'delta_sum':>14}{'share':>9}"]
        for group in (*REDUCING_GROUPS, "TP+", "TN-", "AP-", "AN+", "gross_reduction", "net_delta"):
            r = rows.get(group)
            if r is None:
                continue
            share = f"{100 * r['share']:8.1f}%" if group in REDUCING_GROUPS and r["share"] == r["share"] else ""
            lines.append(f"  {group:<16}{r['count']:>8}{r['delta_sum']:>14.5f}{share:>9}")
        last = self.history[-1]
        for probe_name in self.probes:
            share = last.get(f"dynamics/{probe_name}/attention_share")
            if share is None:
                continue
            heads = ", ".join(f"{h} {d:+.3g}" for h, d in top_heads([r for r in self.last.get("components", []) if r["probe"] == probe_name], n=3))
            lines.append(f"probe {probe_name}: residual change {last[f'dynamics/{probe_name}/components/residual/delta']:+.4g}; "
                         f"attention heads {100 * share:.0f}% of all |component change|; top heads {heads}")
        return "\n".join(lines)


def _named_probes(probe: Mapping[str, Any] | None, probes: Mapping[str, Mapping[str, Any]] | None, key: str) -> dict[str, dict[str, Any]]:
    """{name: probe settings}: `probes` when given (the first is the target), else the one `probe`."""
    if probes:
        named = {str(n): {k: v for k, v in dict(cfg).items() if k != "name"} for n, cfg in probes.items()}
    elif probe:
        cfg = dict(probe)
        named = {str(cfg.pop("name", None) or "toxicity"): cfg}
    else:
        raise ConfigError(f"{key}.probe", "the neuron dynamics need a probe: probe.path=<probe file> (or probes={name: {...}})")
    for name in named:  # a name becomes probes/<name>.safetensors and plots/<name>/: a plain file name only
        check_file_name(name, f"{key}.probes.{name}" if probes else "probe.name")
    for name, cfg in named.items():
        if cfg.get("source") == "raw" and not cfg.get("path"):
            raise ConfigError("probe.path" if not probes else f"{key}.probes.{name}.path",
                              "the neuron dynamics need a probe: probe.path=<probe file> (or probe=train probe.data=<labelled texts>)")
    return named
