"""ToxicityEvalCallback: greedy continuations of held-out prompts, scored every N steps.

Logs `eval/toxicity` (mean score), `eval/toxicity_share` (share above 0.5), `eval/perplexity` and,
with gold continuations (`f1_data`), `eval/f1`. By default everything is measured on the run's own
held-out data: the prompts of the validation pairs, and perplexity on those prompts (natural text the
user gave; never the pairs' completions, which may be the model's own generations); the scorer's
name and the perplexity text are written beside every number.

Files (`output_dir`): `toxicity_eval.csv` (the history, with the scorer), `eval/generations_step_<step>.jsonl`
(each evaluation's continuations and scores), and the record of what was measured, which
`python -m lightning_dpo.evaluate/analyze <run dir>` reuse: `eval/meta.json` (prompt set, scorer and
its settings, perplexity text, F1 data), `eval/prompts.jsonl`, `eval/perplexity_text.txt`, `eval/f1.jsonl`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L

from lightning_dpo.callbacks.periodic import PeriodicMeasurement
from lightning_dpo.data.protocol import measured_data, measured_policy
from lightning_dpo.data.texts import (
    VALIDATION,
    describe_prompt_set,
    load_prompt_set,
    load_text,
    load_texts,
)
from lightning_dpo.dynamics.store import file_digest
from lightning_dpo.evaluation.bootstrap import paired_difference
from lightning_dpo.evaluation.evaluate_model import score_continuations
from lightning_dpo.evaluation.f1 import continuation_f1, f1_of_continuations
from lightning_dpo.evaluation.perplexity import perplexity
from lightning_dpo.evaluation.scorers import build_scorer
from lightning_dpo.model.wrappers import is_sharded
from lightning_dpo.utils.config import plain
from lightning_dpo.utils.errors import DataError
from lightning_dpo.utils.io import (
    atomic_write_csv,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
)
from lightning_dpo.utils.processes import Processes


class ToxicityEvalCallback(PeriodicMeasurement):
    def __init__(
        self,
        prompts: Mapping[str, Any],
        scorer: Mapping[str, Any],
        every_n_steps: int = 25,
        max_prompts: int | None = 256,
        max_prompt_tokens: int = 32,
        max_new_tokens: int = 20,
        batch_size: int = 64,
        perplexity_text: str | None = None,
        perplexity_window: int = 1024,
        f1_data: str | None = None,
        output_dir: str | None = None,
        name: str | None = None,
    ):
        super().__init__(every_n_steps, name=name)
        self.key = f"callbacks.{name or 'toxicity_eval'}"
        self.prompt_spec, self.max_prompts = dict(prompts), max_prompts
        # a file is read now (a bad one fails before training); the validation prompts at fit start
        self.from_validation = self.prompt_spec.get("source") == VALIDATION
        self.prompts: list[str] = [] if self.from_validation else load_prompt_set(self.prompt_spec, f"{self.key}.prompts", max_prompts)
        self.scorer_config = plain(scorer)
        self.scorer = build_scorer(self.scorer_config, key=f"{self.key}.scorer")
        self.max_prompt_tokens, self.max_new_tokens, self.batch_size = max_prompt_tokens, max_new_tokens, batch_size
        self.perplexity_source = perplexity_text
        self.perplexity_text = load_text(perplexity_text, f"{self.key}.perplexity_text") if perplexity_text else None
        self.perplexity_window = perplexity_window
        self.f1_source = f1_data
        self.f1_prompts = load_texts(f1_data, field="prompt", key=f"{self.key}.f1_data") if f1_data else []
        self.f1_golds = load_texts(f1_data, field="gold", key=f"{self.key}.f1_data") if f1_data else []
        self.output_dir = Path(output_dir) if output_dir else None
        self.digests: dict[int, str] = {}  # step -> sha256 of its generations file

    # -- what is measured ---------------------------------------------------------------------------
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        data = measured_data(trainer, self.key)
        records = list(data.val_records) if getattr(data, "val_dataset", True) is not None else []
        if self.from_validation and not self.prompts:
            self.prompts = load_prompt_set(self.prompt_spec, f"{self.key}.prompts", self.max_prompts, [r.prompt for r in records])
        if self.perplexity_text is None and records:
            # natural text the user wrote: the validation pairs' prompts. Never the completions: in
            # generated pairs (make_pairs) they are the base model's own greedy text, on which its
            # perplexity is far lower than on anything else (issue 19: 21.7 against 77.9)
            eos = data.tokenizer.eos_token or "\n\n"
            self.perplexity_text = "".join(r.prompt + eos for r in records)
            self.perplexity_source = f"the validation pairs' prompts ({len(records)} prompts; give a text file with perplexity_text)"
        if self.output_dir is not None and trainer.is_global_zero:
            self._write_record()

    def _write_record(self) -> None:
        folder = self.output_dir / "eval"
        atomic_write_jsonl(folder / "prompts.jsonl", ({"prompt": p} for p in self.prompts))
        if self.perplexity_text is not None:
            atomic_write_text(folder / "perplexity_text.txt", self.perplexity_text)
        if self.f1_prompts:
            atomic_write_jsonl(folder / "f1.jsonl", ({"prompt": p, "gold": g} for p, g in zip(self.f1_prompts, self.f1_golds)))
        atomic_write_json(
            folder / "meta.json",
            {
                "prompts": describe_prompt_set(self.prompt_spec, len(self.prompts)),
                "scorer": self.scorer.name,
                "scorer_config": self.scorer_config,
                "perplexity_text": self.perplexity_source,
                "f1_data": self.f1_source,
                "max_prompt_tokens": self.max_prompt_tokens,
                "max_new_tokens": self.max_new_tokens,
            },
        )

    # -- one evaluation -----------------------------------------------------------------------------
    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> dict[str, float]:
        tokenizer = measured_data(trainer, self.key).tokenizer
        policy = measured_policy(pl_module, self.key)
        # DDP or trainer=fsdp: each process decodes its share of the prompts, and every process gets
        # every prompt's continuation and score back in the prompt set's order (utils/processes.py)
        processes = Processes.of_trainer(trainer, is_sharded(policy), pl_module.device)
        texts, scores = score_continuations(
            policy,
            tokenizer,
            self.prompts,
            self.scorer,
            self.max_prompt_tokens,
            self.max_new_tokens,
            self.batch_size,
            processes=processes,
        )
        n = len(scores)
        mean = sum(scores) / n
        squares = sum(s * s for s in scores)
        se = math.sqrt(max(squares - n * mean * mean, 0.0) / (n - 1) / n) if n > 1 else math.nan  # of the mean over prompts
        metrics = {"eval/toxicity": mean, "eval/toxicity_share": sum(s > 0.5 for s in scores) / n, "eval/toxicity_se": se}
        if self.perplexity_text is not None:
            metrics["eval/perplexity"] = perplexity(policy, tokenizer, self.perplexity_text, self.perplexity_window)["perplexity"]
        if self.f1_prompts and self.f1_prompts == self.prompts:  # the same greedy continuations: reuse them
            metrics["eval/f1"] = f1_of_continuations(tokenizer, texts, self.f1_golds)["f1"]
        elif self.f1_prompts:
            metrics["eval/f1"] = continuation_f1(
                policy,
                tokenizer,
                self.f1_prompts,
                self.f1_golds,
                self.max_prompt_tokens,
                self.max_new_tokens,
                batch_size=self.batch_size,
                all_finished=processes.decoding_sync(),
            )["f1"]
        rows = [{"prompt": p, "continuation": t, "score": s} for p, t, s in zip(self.prompts, texts, scores)]
        if self.output_dir is not None and trainer.is_global_zero:
            path = self._generations_file(step)
            atomic_write_jsonl(path, rows)
            self.digests[step] = file_digest(path) or ""  # kept in the checkpoint, checked on resume
        return metrics

    def _generations_file(self, step: int) -> Path:
        return self.output_dir / "eval" / f"generations_step_{step:07d}.jsonl"

    def on_history_changed(self, trainer: L.Trainer) -> None:
        if self.output_dir is None:
            return
        rows = [{"scorer": self.scorer.name, **entry} for entry in self.history]
        columns = ["step", "scorer", "eval/toxicity", "eval/toxicity_share"]
        columns += [c for c in ("eval/perplexity", "eval/f1", "eval/toxicity_se") if any(c in e for e in self.history)]
        atomic_write_csv(self.output_dir / "toxicity_eval.csv", columns, rows)

    def on_resume(self, trainer: L.Trainer, step: int) -> None:
        if self.output_dir is None:
            return
        steps = {entry["step"] for entry in self.history}
        for s in sorted(steps):  # generations cannot be rebuilt without the weights of their step
            path = self._generations_file(s)
            found = file_digest(path)
            if s in self.digests and found != self.digests[s]:
                what = "is missing" if found is None else "does not match the checksum recorded in the checkpoint"
                raise DataError(
                    str(path),
                    f"the generations file of step {s} {what}, and it cannot be rebuilt without the "
                    "weights of that step: restore the file, or resume from a checkpoint written before it",
                )
        for path in (self.output_dir / "eval").glob("generations_step_*.jsonl"):
            if int(path.stem.rsplit("_", 1)[1]) not in steps:
                path.unlink()  # a future the checkpoint never reached
        self.digests = {s: d for s, d in self.digests.items() if s in steps}

    def _paired_change(self, first: int, last: int) -> tuple[float, float] | None:
        """mean(score at `last` - score at `first`) over the same prompts, from the generations files."""
        if self.output_dir is None or first == last:
            return None
        paths = [self._generations_file(s) for s in (first, last)]
        if not all(p.is_file() for p in paths):
            return None
        try:
            before, after = ([float(json.loads(line)["score"]) for line in p.read_text().splitlines() if line.strip()] for p in paths)
        except (OSError, ValueError, KeyError, TypeError):
            return None  # a summary line is not worth failing a finished run over
        if len(before) != len(after) or len(before) < 2:
            return None
        return paired_difference(before, after)

    # -- state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "generations_digests": dict(self.digests)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.digests = {int(k): v for k, v in state_dict.get("generations_digests", {}).items()}

    def summary(self) -> str:
        if not self.history:
            return "toxicity: not evaluated"
        first, last = self.history[0], self.history[-1]
        text = (
            f"greedy-continuation toxicity ({self.scorer.name}, {len(self.prompts)} held-out prompts): "
            f"{first['eval/toxicity']:.3f} at step {first['step']} -> {last['eval/toxicity']:.3f} at step {last['step']}"
        )
        change = self._paired_change(first["step"], last["step"])
        if change is not None:
            verdict = "within noise" if not abs(change[0]) > 2 * change[1] else "beyond twice its SE"
            text += f" (paired change {change[0]:+.3f} +- {change[1]:.3f} SE over the same prompts: {verdict})"
        if "eval/perplexity" in first:
            text += f"; perplexity {first['eval/perplexity']:.2f} -> {last['eval/perplexity']:.2f}"
        if "eval/f1" in first:
            text += f"; F1 {first['eval/f1']:.3f} -> {last['eval/f1']:.3f}"
        return text
