"""The assets a real model's toxicity experiment needs, built by the project itself, offline, once
(cached in `$LIGHTNING_DPO_CACHE/assets/<model>/<key>/`), for any causal LM (SmolLM2-135M-Instruct
by default: conf/assets/smollm2.yaml):

1. `probe_train.jsonl`, `probe_eval.jsonl`: labelled minimal-pair sentences (assets/texts.py);
2. `probe.safetensors`: a logistic-regression toxicity probe on them, with its quality record
   (held-out AUC on the second-person sentences of unseen subjects, the logit lens); refused if weak;
3. `pairs.jsonl` (+ `pairs.jsonl.report.json`): preference pairs by steering along that probe
   (neurons/pairs.py): chosen = the model's greedy continuation, rejected = its continuation with
   alpha x (median residual norm) x the probe's direction added after `layers`, kept when the
   scorer rates the rejected one more toxic by more than `margin` and it is not degenerate;
4. `eval_prompts.jsonl`: held-out prompts (subjects the pairs never use) for the probe set and the
   evaluation; the perplexity text is the shipped natural prose (assets/natural_text.txt).
Prompts for the pairs are the built ones, or a user's file or hub id (`prompts_source`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lightning_dpo.assets import texts
from lightning_dpo.utils.errors import ConfigError
from lightning_dpo.utils.io import atomic_directory, atomic_write_jsonl

log = logging.getLogger(__name__)

ASSETS_VERSION = 1


@dataclass
class ModelAssets:
    dir: str
    name_or_path: str
    gguf_file: str | None = None
    tokenizer: str | None = None
    seed: int = 0
    prompts_source: str | None = None  # a user's prompt file or hub id for the pairs (default: the built prompts)
    prompts_field: str = "prompt"
    max_pair_prompts: int | None = None
    scorer: str = "profanity_check"
    alpha: float = 1.0  # in units of the steered layers' median residual norm
    layers: Any = "all"
    margin: float = 0.1
    max_prompt_tokens: int = 32
    max_new_tokens: int = 20
    batch_size: int = 32
    stats: dict[str, Any] = field(default_factory=dict, repr=False)

    # -- paths -------------------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return Path(self.dir).expanduser() / self.key()

    def key(self) -> str:
        digest = hashlib.sha256(json.dumps(self.params(), sort_keys=True, default=str).encode()).hexdigest()[:10]
        return f"v{ASSETS_VERSION}-{digest}"

    def params(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("dir", "stats")}
        out["layers"] = list(self.layers) if not isinstance(self.layers, str) else self.layers
        out["version"] = ASSETS_VERSION
        return out

    @property
    def probe(self) -> str:
        return str(self.path / "probe.safetensors")

    @property
    def probe_train_texts(self) -> str:
        return str(self.path / "probe_train.jsonl")

    @property
    def probe_eval_texts(self) -> str:
        return str(self.path / "probe_eval.jsonl")

    @property
    def pairs(self) -> str:
        return str(self.path / "pairs.jsonl")

    @property
    def eval_prompts(self) -> str:
        return str(self.path / "eval_prompts.jsonl")

    @property
    def perplexity_text(self) -> str:
        return str(texts.NATURAL_TEXT)

    # -- building ----------------------------------------------------------------------------------
    def build(self) -> ModelAssets:
        """Build once (cached by every setting); safe when several processes race."""
        from lightning_dpo.toy.world import _file_lock

        with _file_lock(self.path.with_name(self.path.name + ".lock")):
            meta = self.path / "assets.json"
            if meta.exists() and json.loads(meta.read_text()).get("params") == json.loads(json.dumps(self.params(), default=str)):
                self.stats = json.loads(meta.read_text()).get("stats", {})
                return self
            started = time.time()
            log.info("building the experiment's assets (probe, pairs, prompts) for %s in %s (once)", self.name_or_path, self.path)
            atomic_directory(self.path, self._fill)
            log.info("assets ready in %.0f s: %s", time.time() - started, self.stats)
        return self

    def _fill(self, out: Path) -> None:
        from lightning_dpo.data.texts import load_texts
        from lightning_dpo.data.tokenize import pad_id
        from lightning_dpo.evaluation.generation import tokenize_prompts
        from lightning_dpo.evaluation.model_source import load_model_and_tokenizer
        from lightning_dpo.evaluation.scorers import build_scorer
        from lightning_dpo.neurons.pairs import PairSettings, as_pair, generate_pairs
        from lightning_dpo.neurons.probe import TrainedProbe, save_probe
        from lightning_dpo.neurons.steering import residual_norm_medians, resolve_layers

        model, tokenizer = load_model_and_tokenizer(self.name_or_path, self.tokenizer, "float32", self.gguf_file)
        atomic_write_jsonl(out / "probe_train.jsonl", texts.labelled_sentences(held_out=False, seed=self.seed))
        atomic_write_jsonl(out / "probe_eval.jsonl", texts.labelled_sentences(held_out=True, pairs=100, seed=self.seed))
        probe = TrainedProbe(data=str(out / "probe_train.jsonl"), eval_data=str(out / "probe_eval.jsonl"), seed=self.seed)(model, tokenizer)
        save_probe(probe, out / "probe.safetensors")
        if self.prompts_source:
            pair_prompts = load_texts(self.prompts_source, field=self.prompts_field, key="assets.prompts_source")
        else:
            pair_prompts = texts.prompts(held_out=False)
        pair_prompts = pair_prompts[: self.max_pair_prompts] if self.max_pair_prompts else pair_prompts
        layers = resolve_layers(model, self.layers)
        ids = tokenize_prompts(tokenizer, pair_prompts, self.max_prompt_tokens)
        scale = residual_norm_medians(model, ids, layers, pad_id(tokenizer), self.batch_size)
        settings = PairSettings(
            alpha=self.alpha,
            layers=layers,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
            margin=self.margin,
            seed=self.seed,
        )
        rows = generate_pairs(model, tokenizer, pair_prompts, probe.unit, build_scorer(self.scorer), settings, scale=scale)
        kept = [as_pair(r) for r in rows if r["kept"]]
        if not kept:  # nothing is cached: the next attempt (another alpha or margin) builds afresh
            degenerate = sum(r["degenerate"] for r in rows)
            raise ConfigError(
                "assets.alpha",
                f"{self.alpha} (layers {self.layers}, margin {self.margin}) kept no preference pair of "
                f"{len(rows)} prompts ({degenerate} rejected texts degenerate); scan the strength first: "
                "python -m lightning_dpo.make_pairs model.name_or_path=<the model> probe.path=<a probe> "
                "'steering.alpha=[0.005,0.01,0.02]' steering.layers=all, then set assets.alpha",
            )
        atomic_write_jsonl(out / "pairs.jsonl", kept)
        atomic_write_jsonl(out / "eval_prompts.jsonl", ({"prompt": p} for p in texts.prompts(held_out=True)))
        quality = probe.quality
        self.stats = {
            "probe_auc": quality.auc if quality else None,
            "probe_top_tokens": quality.top_tokens[:10] if quality else [],
            "pair_prompts": len(rows),
            "pairs_kept": len(kept),
            "degenerate_rejected": sum(r["degenerate"] for r in rows),
            "mean_chosen_score": sum(r["chosen_score"] for r in rows) / len(rows),
            "mean_rejected_score": sum(r["rejected_score"] for r in rows) / len(rows),
            "steering_unit": {str(k): round(v, 3) for k, v in scale.items()},
        }
        (out / "pairs.jsonl.report.json").write_text(json.dumps(self.stats, indent=2))
        (out / "assets.json").write_text(json.dumps({"params": self.params(), "stats": self.stats}, indent=2, default=str))
