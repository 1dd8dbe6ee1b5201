"""The linear toxicity probe: the "toxic direction" w that neuron contributions are projected on.

Three sources, one file format (`probe.safetensors`: tensor `direction` (d_model,), metadata with
the source and, for trained probes, the held-out accuracy):
- `train`: logistic regression (scikit-learn, as Yang et al.) on the model's final hidden state
  (after the final norm) mean-pooled over *real tokens only* (the published code averaged the
  padding in), with a held-out accuracy;
- `raw`: a tensor file as Lee et al. released it (`probe.pt`, shape (d_model,) or (1, d_model));
- `embed_diff`: the mean token embedding of toxic seed words minus that of neutral ones (the
  later paper version's alternative direction).

The command that writes a probe file: lightning_dpo/probe.py.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from torch import nn

from lightning_dpo.data.texts import load_labelled_texts
from lightning_dpo.data.tokenize import pad_id
from lightning_dpo.utils.errors import ConfigError, DataError
from lightning_dpo.utils.io import atomic_save
from lightning_dpo.utils.torch_utils import eval_mode, model_device

log = logging.getLogger(__name__)

TOXIC_SEEDS = ("fuck", "shit", "crap", "damn", "asshole")
NEUTRAL_SEEDS = ("hello", "thanks", "friend", "peace", "welcome")


@dataclass
class Probe:
    direction: torch.Tensor  # (d_model,) float32
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def unit(self) -> torch.Tensor:
        return self.direction / self.direction.norm()

    def check_size(self, d_model: int, source: str = "probe") -> "Probe":
        if self.direction.numel() != d_model:
            raise ConfigError(
                "probe", f"{source}: the probe has {self.direction.numel()} dimensions but the model's d_model is {d_model}"
            )
        return self


def _one_tensor(loaded: Any, path: Path) -> torch.Tensor:
    """The probe tensor of a loaded file: a tensor, or a dict holding exactly one (e.g. a saved
    nn.Linear's state dict, whose `weight` is the direction; its bias is not part of it)."""
    if isinstance(loaded, torch.Tensor):
        return loaded
    if isinstance(loaded, dict):
        tensors = {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
        named = {k: v for k, v in tensors.items() if k == "direction" or k.endswith("weight")}
        for candidates in (named, tensors):
            if len(candidates) == 1:
                return next(iter(candidates.values()))
        raise DataError(str(path), f"holds a dict with keys {sorted(map(str, loaded))}: expected one tensor (or a dict with "
                        "one tensor, or one named 'direction' or '...weight')")
    raise DataError(str(path), f"holds a {type(loaded).__name__}, not a tensor")


def save_probe(probe: Probe, path: str | Path) -> Path:
    metadata = {k: v if isinstance(v, str) else json.dumps(v) for k, v in probe.metadata.items()}
    tensors = {"direction": probe.direction.detach().float().cpu().contiguous()}
    atomic_save(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return Path(path)


def load_probe(path: str | Path, d_model: int | None = None) -> Probe:
    """A `probe.safetensors` file, or a raw tensor file (.pt/.pth/.npy) as released by Lee et al."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(str(path), "probe file not found" if not path.is_dir() else "is a directory, not a probe file")
    metadata: dict[str, Any] = {"source": f"raw:{path.name}"}
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                tensors = {k: handle.get_tensor(k) for k in handle.keys()}
                metadata = dict(handle.metadata() or {})
            direction = _one_tensor(tensors, path)
        elif path.suffix == ".npy":
            import numpy as np

            direction = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            direction = _one_tensor(torch.load(path, map_location="cpu", weights_only=True), path)
    except DataError:
        raise
    except Exception as exc:
        kind = {".safetensors": "a safetensors file", ".npy": "a NumPy .npy file"}.get(path.suffix, "a tensor file written by torch.save")
        raise DataError(str(path), f"is not {kind} ({type(exc).__name__}: {exc})") from exc
    direction = direction.float()
    if direction.dim() == 2 and 1 in direction.shape:
        direction = direction.reshape(-1)
    if direction.dim() != 1:
        raise DataError(str(path), f"a probe must have shape (d_model,) or (1, d_model), got {tuple(direction.shape)}")
    if not torch.isfinite(direction).all() or direction.norm() == 0:
        raise DataError(str(path), "the probe direction is zero or not finite")
    probe = Probe(direction, metadata)
    return probe.check_size(d_model, str(path)) if d_model is not None else probe


@torch.no_grad()
def pooled_final_hidden(model: nn.Module, tokenizer: Any, texts: Sequence[str], batch_size: int = 32, max_length: int = 128) -> torch.Tensor:
    """(N, d_model) fp32: final hidden state (after the final norm), mean over real tokens only."""
    device = model_device(model)
    base = getattr(model, "base_model", model)
    features = []
    pad = pad_id(tokenizer)
    with eval_mode(model):
        for start in range(0, len(texts), batch_size):
            rows = tokenizer(list(texts[start : start + batch_size]), add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
            length = max(len(r) for r in rows)
            ids = torch.full((len(rows), length), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), length), dtype=torch.long)
            for i, r in enumerate(rows):  # right padding: positions start at 0 on every row
                ids[i, : len(r)] = torch.tensor(r)
                mask[i, : len(r)] = 1
            hidden = base(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)[0].float()
            m = mask.to(device).unsqueeze(-1).float()
            features.append(((hidden * m).sum(1) / m.sum(1)).cpu())
    return torch.cat(features)


def train_probe(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    labels: Sequence[int],
    test_size: float = 0.2,
    seed: int = 42,
    C: float = 1.0,
    max_iter: int = 1000,
    batch_size: int = 32,
    max_length: int = 128,
    source: str = "train",
) -> Probe:
    """Logistic regression on pooled final hidden states; `accuracy` is on the held-out split."""
    if len(set(labels)) != 2:
        raise DataError(source, f"a probe needs two classes, got labels {sorted(set(labels))}")
    features = pooled_final_hidden(model, tokenizer, texts, batch_size, max_length).numpy()
    x_train, x_test, y_train, y_test = train_test_split(features, list(labels), test_size=test_size, random_state=seed, stratify=list(labels))
    classifier = LogisticRegression(C=C, max_iter=max_iter)
    classifier.fit(x_train, y_train)
    accuracy = float(classifier.score(x_test, y_test))
    direction = torch.tensor(classifier.coef_[0], dtype=torch.float32)
    metadata = {
        "source": f"logistic regression on {source}",
        "accuracy": accuracy,
        "n_train": len(y_train),
        "n_test": len(y_test),
        "features": "final hidden state after the final norm, mean over real tokens",
    }
    log.info("probe held-out accuracy %.4f (%d train / %d test texts)", accuracy, len(y_train), len(y_test))
    return Probe(direction, metadata)


@torch.no_grad()
def embedding_difference_direction(
    model: nn.Module, tokenizer: Any, toxic_words: Sequence[str] = TOXIC_SEEDS, neutral_words: Sequence[str] = NEUTRAL_SEEDS
) -> Probe:
    """Mean sub-token embedding of toxic seed words minus that of neutral seed words, as the authors
    built it (Yang et al.'s logit_lens/demo_toxic_embedding): each word tokenized bare, without a
    leading space; the rows of the input embedding when the LM head is tied to it (GPT-2), else of
    the LM head (Llama-style models, whose `lm_head.weight` the authors used)."""
    table, which = embedding_table(model)

    def mean_embedding(seeds: Sequence[str]) -> torch.Tensor:
        vectors = []
        for word in seeds:
            ids = tokenizer(word, add_special_tokens=False)["input_ids"]
            vectors.append(table[torch.tensor(ids, device=table.device)].mean(0))  # (d_model,) mean over sub-tokens
        return torch.stack(vectors).mean(0)

    direction = (mean_embedding(toxic_words) - mean_embedding(neutral_words)).cpu()
    return Probe(direction, {"source": f"embedding difference ({which})", "toxic_words": list(toxic_words),
                             "neutral_words": list(neutral_words)})


def embedding_table(model: nn.Module) -> tuple[torch.Tensor, str]:
    """(vocab, d_model) fp32 token vectors: the LM head's rows when it is not tied to the input embedding."""
    inputs = model.get_input_embeddings().weight
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or head.weight.data_ptr() == inputs.data_ptr():
        return inputs.detach().float(), "input embeddings"
    return head.weight.detach().float(), "LM head rows"


def build_probe(
    model: nn.Module, tokenizer: Any, source: str = "train", path: str | None = None, data: str | None = None, name: str | None = None,
    **kwargs: Any,
) -> Probe:
    """A probe from the configured source (conf/probe/), validated against the model's d_model (`name`: what
    it stands for, used by the callers' file and metric names)."""
    d_model = model.get_input_embeddings().weight.shape[1]
    if source == "raw":
        if not path:
            raise ConfigError("probe.path", "source=raw needs the tensor file")
        return load_probe(path, d_model)
    if source == "embed_diff":
        return embedding_difference_direction(model, tokenizer, **kwargs).check_size(d_model)
    if source == "train":
        if not data:
            raise ConfigError("probe.data", "source=train needs labelled texts (a .jsonl/.csv file or a datasets id)")
        read_keys = {k: kwargs.pop(k) for k in ("text_field", "label_field", "limit", "split") if k in kwargs}
        texts, labels = load_labelled_texts(data, **read_keys)
        return train_probe(model, tokenizer, texts, labels, source=str(data), **kwargs).check_size(d_model)
    raise ConfigError("probe.source", f"unknown source {source!r}; accepted: ['train', 'raw', 'embed_diff']")
