"""ToxicityEvalCallback: greedy continuations of a prompt subset, scored every N steps.

Logs `eval/toxicity` (mean score), `eval/toxicity_share` (share above 0.5) and, when a text is
given, `eval/perplexity`. The history is written to `<output_dir>/toxicity_eval.csv` (with the
scorer's name beside every number) and each evaluation's generations to
`<output_dir>/eval/generations_step_<step>.jsonl`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import lightning as L
import torch

from lightning_dpo.callbacks.periodic import PeriodicMeasurement
from lightning_dpo.evaluation.perplexity import perplexity
from lightning_dpo.data.texts import load_text, load_texts
from lightning_dpo.evaluation.report import score_continuations
from lightning_dpo.dynamics.store import file_digest
from lightning_dpo.evaluation.scorers import build_scorer
from lightning_dpo.utils.errors import DataError
from lightning_dpo.utils.io import atomic_write_csv, atomic_write_jsonl


class ToxicityEvalCallback(PeriodicMeasurement):
    def __init__(
        self,
        prompts: str,
        scorer: Mapping[str, Any] | str = "wordlist",
        every_n_steps: int = 25,
        max_prompts: int | None = 256,
        prompt_field: str = "prompt",
        prompt_filter: Mapping[str, Any] | None = None,
        max_prompt_tokens: int = 32,
        max_new_tokens: int = 20,
        batch_size: int = 64,
        perplexity_text: str | None = None,
        perplexity_window: int = 1024,
        output_dir: str | None = None,
        name: str | None = None,
    ):
        super().__init__(every_n_steps, name=name)
        key = f"callbacks.{name or 'toxicity_eval'}"
        self.prompts = load_texts(prompts, field=prompt_field, where=prompt_filter, limit=max_prompts, key=f"{key}.prompts")
        scorer_cfg = {"name": scorer} if isinstance(scorer, str) else dict(scorer)
        self.scorer = build_scorer(scorer_cfg.pop("name"), **scorer_cfg)
        self.max_prompt_tokens, self.max_new_tokens, self.batch_size = max_prompt_tokens, max_new_tokens, batch_size
        self.perplexity_text = load_text(perplexity_text, f"{key}.perplexity_text") if perplexity_text else None
        self.perplexity_window = perplexity_window
        self.output_dir = Path(output_dir) if output_dir else None
        self.digests: dict[int, str] = {}  # step -> sha256 of its generations file

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> dict[str, float]:
        tokenizer = trainer.datamodule.tokenizer
        rank, world = trainer.global_rank, trainer.world_size
        prompts = self.prompts[rank::world]
        texts, scores = score_continuations(
            pl_module.policy, tokenizer, prompts, self.scorer, self.max_prompt_tokens, self.max_new_tokens, self.batch_size
        )
        sums = torch.tensor([sum(scores), sum(s > 0.5 for s in scores), len(scores)], dtype=torch.float64, device=pl_module.device)
        sums = trainer.strategy.reduce(sums, reduce_op="sum") if world > 1 else sums
        metrics = {"eval/toxicity": float(sums[0] / sums[2]), "eval/toxicity_share": float(sums[1] / sums[2])}
        if self.perplexity_text is not None:
            metrics["eval/perplexity"] = perplexity(pl_module.policy, tokenizer, self.perplexity_text, self.perplexity_window)["perplexity"]
        if self.output_dir is not None and trainer.is_global_zero:
            path = self._generations_file(step)
            atomic_write_jsonl(path, ({"prompt": p, "continuation": t, "score": s} for p, t, s in zip(prompts, texts, scores)))
            self.digests[step] = file_digest(path)  # kept in the checkpoint, checked on resume
        return metrics

    def _generations_file(self, step: int) -> Path:
        return self.output_dir / "eval" / f"generations_step_{step:07d}.jsonl"

    def on_history_changed(self, trainer: L.Trainer) -> None:
        if self.output_dir is None:
            return
        rows = [{"scorer": self.scorer.name, **entry} for entry in self.history]
        columns = ["step", "scorer", "eval/toxicity", "eval/toxicity_share"]
        if self.perplexity_text is not None:
            columns.append("eval/perplexity")
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
                raise DataError(str(path), f"the generations file of step {s} {what}, and they cannot be rebuilt without the "
                                "weights of that step: restore the file, or resume from a checkpoint written before it")
        for path in (self.output_dir / "eval").glob("generations_step_*.jsonl"):
            if int(path.stem.rsplit("_", 1)[1]) not in steps:
                path.unlink()  # a future the checkpoint never reached
        self.digests = {s: d for s, d in self.digests.items() if s in steps}

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
        if "eval/perplexity" in first:
            text += f"; perplexity {first['eval/perplexity']:.2f} -> {last['eval/perplexity']:.2f}"
        return text
