"""NeuronDynamicsCallback: the paper's neuron-group analysis, computed while DPO trains.

At step 0 (the policy before any update, i.e. the reference), every `every_n_steps` and at the
end of training it takes a snapshot of every MLP neuron on the probe set (mean activation a_i,
value projection p_i) and logs, per group (TP-, TN+, AP+, AN- and their mirrors),
`dynamics/<group>/delta_sum`, `dynamics/<group>/count`, `dynamics/<group>/share`, plus
`dynamics/gross_reduction`, `dynamics/net_delta` and `dynamics/toxic_top<N>/...` to every logger.
Files (see lightning_dpo.dynamics.store): probe.safetensors, dynamics/tokens.safetensors,
dynamics/step_<step>.safetensors, dynamics/groups.csv. Under DDP each rank takes a shard of the
probe set and the sums are all-reduced, so the result equals a single process.
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
from lightning_dpo.dynamics import (
    REDUCING_GROUPS,
    DynamicsStore,
    ProbeTokens,
    Snapshot,
    build_probe_tokens,
    group_rows,
    summary_metrics,
    take_snapshot,
    toxic_top_n,
)
from lightning_dpo.dynamics.probe_set import POSITION_MODES, prompt_ids_for
from lightning_dpo.neurons.probe import Probe, build_probe, save_probe
from lightning_dpo.utils.errors import ConfigError
from lightning_dpo.utils.io import atomic_write_jsonl

log = logging.getLogger(__name__)


class NeuronDynamicsCallback(PeriodicMeasurement):
    def __init__(
        self,
        prompts: Mapping[str, Any],
        probe: Mapping[str, Any],
        output_dir: str,
        every_n_steps: int = 25,
        positions: str = "fixed",
        max_prompts: int | None = None,
        max_prompt_tokens: int | None = 32,
        prepend_bos: bool = False,
        num_positions: int = 20,
        center_writing_weights: bool = False,
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
        self.probe_cfg = dict(probe)
        if self.probe_cfg.get("source") == "raw" and not self.probe_cfg.get("path"):
            raise ConfigError("probe.path", "the neuron dynamics need a probe: probe.path=<probe file> (or probe=train probe.data=<labelled texts>)")
        self.prompt_spec, self.max_prompts = dict(prompts), max_prompts
        # a file is read now (a bad one fails before training); the validation prompts at fit start
        self.prompts = None if self.prompt_spec.get("source") == VALIDATION else load_prompt_set(self.prompt_spec, f"{self.key}.prompts", max_prompts)
        self.positions = positions
        self.max_prompt_tokens, self.prepend_bos, self.num_positions = max_prompt_tokens, prepend_bos, num_positions
        self.center_writing_weights = center_writing_weights
        self.batch_size, self.top_n = batch_size, top_n
        self.run_dir = Path(output_dir)
        self.store = DynamicsStore(self.run_dir)
        self.probe: Probe | None = None
        self.tokens: ProbeTokens | None = None
        self.baseline: Snapshot | None = None
        self.last_rows: list[dict[str, Any]] = []
        self._restored_digests: dict[int, str] = {}

    # -- set-up at step 0 (or restored from the checkpoint) -----------------------------------------
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.prompts is None:
            records = trainer.datamodule.val_records
            self.prompts = load_prompt_set(self.prompt_spec, f"{self.key}.prompts", self.max_prompts, [r.prompt for r in records])

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        with torch.no_grad():
            if self.probe is None:
                self.probe = self._make_probe(trainer, pl_module)
            if self.positions == "fixed" and self.tokens is None:
                self.tokens = self._probe_tokens(trainer, pl_module, fixed=True)
        if trainer.is_global_zero:
            save_probe(self.probe, self.run_dir / "probe.safetensors")
            atomic_write_jsonl(self.store.dir / "prompts.jsonl", ({"prompt": p} for p in self.prompts))
            if self.tokens is not None:
                self.store.write_tokens(self.tokens)
            self.store.write_meta(self._meta(pl_module))
        super().on_train_start(trainer, pl_module)

    def _make_probe(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Probe:
        if trainer.global_step > 0:
            raise RuntimeError("resuming without the dynamics state in the checkpoint: the probe of step 0 is unknown")
        probe = None
        if trainer.is_global_zero:
            probe = build_probe(pl_module.policy, trainer.datamodule.tokenizer, **self.probe_cfg)
            if "accuracy" in probe.metadata:
                log.info("probe held-out accuracy: %.4f", float(probe.metadata["accuracy"]))
        if trainer.world_size > 1:
            probe = trainer.strategy.broadcast(probe, src=0)
        return probe

    def _probe_tokens(self, trainer: L.Trainer, pl_module: L.LightningModule, fixed: bool) -> ProbeTokens:
        """Prompts + greedy continuation: of the reference (fixed, at step 0) or of the current policy."""
        if fixed and trainer.global_step > 0:
            raise RuntimeError("resuming without the dynamics state in the checkpoint: the fixed probe tokens are unknown")
        tokenizer = trainer.datamodule.tokenizer
        pad = pad_id(tokenizer)
        ids = prompt_ids_for(tokenizer, self.prompts, self.max_prompt_tokens, self.prepend_bos)
        with trainer.precision_plugin.forward_context():
            return build_probe_tokens(pl_module.policy, ids, pad, self.num_positions, self.batch_size)

    def _meta(self, pl_module: L.LightningModule) -> dict[str, Any]:
        return {
            "prompts": describe_prompt_set(self.prompt_spec, len(self.prompts)),
            "num_prompts": len(self.prompts),
            "positions": self.positions,
            "num_positions": self.num_positions,
            "max_prompt_tokens": self.max_prompt_tokens,
            "prepend_bos": self.prepend_bos,
            "center_writing_weights": self.center_writing_weights,
            "top_n": self.top_n,
            "probe": {k: str(v) for k, v in self.probe.metadata.items()},
            "definitions": "P_i = a_i * p_i; D_i = P_i(0) - P_i(t); types frozen at step 0; see README",
        }

    # -- one snapshot -----------------------------------------------------------------------------
    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> dict[str, float]:
        tokens = self.tokens if self.positions == "fixed" else self._probe_tokens(trainer, pl_module, fixed=False)
        reduce = None
        if trainer.world_size > 1:
            reduce = lambda t: trainer.strategy.reduce(t, reduce_op="sum")  # noqa: E731
        with trainer.precision_plugin.forward_context():
            snapshot = take_snapshot(
                pl_module.policy, tokens.shard(trainer.global_rank, trainer.world_size), self.probe.unit, step, self.batch_size, reduce,
                self.center_writing_weights,
            )
        if self.baseline is None:
            self.baseline = snapshot
        rows = group_rows(self.baseline, snapshot)
        top = toxic_top_n(self.baseline, snapshot, self.top_n)
        if trainer.is_global_zero:
            self.store.write_snapshot(snapshot)  # also records its checksum (kept in the checkpoint)
            self.store.add_group_rows(rows)
        self.last_rows = rows
        return summary_metrics(rows, top, self.top_n)

    def on_resume(self, trainer: L.Trainer, step: int) -> None:
        steps = [entry["step"] for entry in self.history]
        self.store.restore(steps, self._restored_digests, self.baseline)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        wandb_loggers = [lg for lg in trainer.loggers if type(lg).__name__ == "WandbLogger"]
        if wandb_loggers and trainer.is_global_zero and self.history:
            from lightning_dpo.dynamics.figures import make_plots
            from lightning_dpo.training.wandb_logger import log_dynamics_charts

            paths = make_plots(self.run_dir)
            steps = [e["step"] for e in self.history]
            shares = {g: [e.get(f"dynamics/{g}/share", float("nan")) for e in self.history] for g in REDUCING_GROUPS}
            for logger in wandb_loggers:
                for path in paths:  # one key per figure: they differ in size
                    logger.log_image(key=f"dynamics/plots/{path.stem}", images=[str(path)])
                log_dynamics_charts(logger, steps, shares)

    # -- state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.probe is not None:
            state["probe"] = {"direction": self.probe.direction.clone(), "metadata": dict(self.probe.metadata)}
        if self.tokens is not None:
            state["tokens"] = self.tokens.to_dict()
        if self.baseline is not None:
            b = self.baseline
            state["baseline"] = {"step": b.step, "mean_activation": b.mean_activation, "value_projection": b.value_projection, "value_norm": b.value_norm}
        state["snapshot_digests"] = dict(self.store.digests)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "probe" in state_dict:
            self.probe = Probe(state_dict["probe"]["direction"], dict(state_dict["probe"]["metadata"]))
        if "tokens" in state_dict:
            self.tokens = ProbeTokens(**state_dict["tokens"])
        if "baseline" in state_dict:
            self.baseline = Snapshot(**state_dict["baseline"])
        self._restored_digests = {int(k): v for k, v in state_dict.get("snapshot_digests", {}).items()}

    # -- report -----------------------------------------------------------------------------------
    def summary(self) -> str:
        if not self.history:
            return "neuron dynamics: no snapshot"
        step = self.history[-1]["step"]
        rows = {r["group"]: r for r in self.last_rows if r["layer"] == "all"}
        lines = [f"neuron groups at step {step} (D = P(0) - P(t) along the probe; > 0 is less toxic writing):",
                 f"  {'group':<16}{'count':>8}{'delta_sum':>14}{'share':>9}"]
        for group in (*REDUCING_GROUPS, "TP+", "TN-", "AP-", "AN+", "gross_reduction", "net_delta"):
            r = rows.get(group)
            if r is None:
                continue
            share = f"{100 * r['share']:8.1f}%" if group in REDUCING_GROUPS and r["share"] == r["share"] else ""
            lines.append(f"  {group:<16}{r['count']:>8}{r['delta_sum']:>14.5f}{share:>9}")
        return "\n".join(lines)
