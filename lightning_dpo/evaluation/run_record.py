"""What a training run directory tells the commands that analyse it (the `run` settings).

`python -m lightning_dpo.evaluate model.name_or_path=<run dir>` and `analyze dpo=<run dir>`
measure a run with the run's own settings unless told otherwise: its best model (hf_model_best/,
else hf_model/), its base model, probe, probe set, evaluation prompts, scorer, perplexity text
and F1 data, all read from files the run wrote (.hydra/config.resolved.yaml, probe.safetensors,
dynamics/prompts.jsonl, eval/meta.json, eval/prompts.jsonl, eval/perplexity_text.txt, eval/f1.jsonl).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from lightning_dpo.utils.errors import ConfigError

RUN = "run"  # the value that takes a setting from the run


@dataclass
class RunRecord:
    run_dir: Path

    @classmethod
    def find(cls, source: Any) -> "RunRecord | None":
        """The run directory `source` names (it holds hf_model/ or .hydra/), or None."""
        if source is None:
            return None
        path = Path(str(source)).expanduser()
        if path.is_dir() and ((path / "hf_model").is_dir() or (path / ".hydra" / "config.yaml").is_file()):
            return cls(path)
        return None

    # -- models ---------------------------------------------------------------------------------
    def model_dir(self) -> tuple[Path, str]:
        """The model to analyse: the best checkpoint's export when there is one, else the final model."""
        best = self.run_dir / "hf_model_best"
        if best.is_dir():
            info = _json(best / "lightning_dpo.json")
            what = f"the best checkpoint by {info.get('monitor', 'val/loss')} (step {info.get('step', '?')})" if info else "the best checkpoint"
            return best, f"{best} ({what})"
        final = self.run_dir / "hf_model"
        if final.is_dir():
            return final, f"{final} (the final model: the run kept no best checkpoint)"
        raise ConfigError("model.name_or_path", f"{self.run_dir} holds no model (hf_model/ is written when training completes)")

    def base_model(self) -> str:
        """The model the run started from (its resolved model.name_or_path)."""
        value = self.setting("model.name_or_path")
        if not value:
            raise ConfigError("model.name_or_path", f"{self.run_dir} does not record its base model: give model.name_or_path")
        return str(value)

    def setting(self, key: str) -> Any:
        for name in ("config.resolved.yaml", "config.yaml"):
            path = self.run_dir / ".hydra" / name
            if path.is_file():
                try:
                    return OmegaConf.select(OmegaConf.load(path), key, throw_on_resolution_failure=False)
                except Exception:
                    continue
        return None

    # -- measurement settings ---------------------------------------------------------------------
    def file(self, relative: str, key: str) -> str:
        path = self.run_dir / relative
        if not path.is_file():
            raise ConfigError(key, f"'{RUN}' takes it from the run, but {path} does not exist (the run did not measure it): give {key}")
        return str(path)

    def eval_meta(self, key: str) -> dict[str, Any]:
        return _json(Path(self.file("eval/meta.json", key)))

    def scorer_config(self) -> dict[str, Any]:
        return dict(self.eval_meta("scorer")["scorer_config"])


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def require_run(record: RunRecord | None, key: str, source: Any) -> RunRecord:
    if record is None:
        raise ConfigError(key, f"'{RUN}' takes it from a training run directory, but {source} is not one: give {key} yourself")
    return record
