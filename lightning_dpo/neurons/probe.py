"""The linear probe: the direction w that neuron contributions are projected on, and how good it is.

Probe sources are objects (an extension point: `probe._target_=my_module.MyProbe`, any subclass of
`ProbeSource`, or any callable `(model, tokenizer) -> Probe`):
- `TrainedProbe`: logistic regression (scikit-learn, as Yang et al.) on the model's final hidden state
  (after the final norm) mean-pooled over *real tokens only* (the published code averaged the
  padding in); held-out accuracy and AUC on a stratified split;
- `ProbeFile`: a tensor file as Lee et al. released it (`probe.pt`, shape (d_model,) or (1, d_model)),
  or a `probe.safetensors` this project wrote;
- `EmbeddingDifference`: the mean token embedding of toxic seed words minus that of neutral ones (the
  later paper version's alternative). Only seed words that are ONE token of the model's tokenizer
  (with or without a leading space) are used: on a tokenizer that splits `fuck` into `f` + `uck` a
  fragment's embedding is a frequent sub-word's, and the difference becomes a word-frequency
  direction (measured on SmolLM2: top tokens ' ', ' (', ' in', ','; AUC 0.567).

Every probe, whatever its source, gets a quality record, saved in the file's metadata, printed and
shown in the report (`ProbeQuality`): the top-20 tokens of its direction through the final norm and
the unembedding (the logit lens), and, where labelled texts exist (`eval_data`, or the trained
probe's held-out split), the held-out accuracy and AUC. A probe whose held-out AUC is below
`min_auc` (0.6) is refused unless `allow_weak=true`.

One file format (`probe.safetensors`: tensor `direction` (d_model,), metadata: source, quality).
The command that writes a probe file: lightning_dpo/probe.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from lightning_dpo.data.texts import load_labelled_texts
from lightning_dpo.data.tokenize import pad_id
from lightning_dpo.model.fingerprint import computation_key
from lightning_dpo.model.wrappers import full, gathered, is_sharded
from lightning_dpo.neurons.hooks import decoder_forward, find_final_norm
from lightning_dpo.utils.cache import default_cache_dir
from lightning_dpo.utils.errors import ConfigError, DataError
from lightning_dpo.utils.io import atomic_save_safetensors, atomic_write_json
from lightning_dpo.utils.torch_utils import eval_mode, model_device

log = logging.getLogger(__name__)


@dataclass
class ProbeQuality:
    """What a probe direction is: its top tokens through the unembedding, and how well it separates
    labelled held-out texts (where there are any)."""

    top_tokens: list[str]
    auc: float | None = None
    accuracy: float | None = None  # a trained probe's classifier on its held-out split
    n_eval: int | None = None
    eval_source: str | None = None

    def summary(self) -> str:
        parts = []
        if self.auc is not None:
            parts.append(f"held-out AUC {self.auc:.3f} on {self.n_eval} texts of {self.eval_source}")
        if self.accuracy is not None:
            parts.append(f"accuracy {self.accuracy:.3f}")
        if self.auc is None:
            parts.append("no labelled texts to check it (probe.eval_data)")
        return "; ".join(parts) + f"; top tokens: {', '.join(repr(t) for t in self.top_tokens[:10])}"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ProbeQuality:
        return cls(**json.loads(text))


@dataclass
class Probe:
    direction: torch.Tensor  # (d_model,) float32
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def unit(self) -> torch.Tensor:
        return self.direction / self.direction.norm()

    @property
    def quality(self) -> ProbeQuality | None:
        raw = self.metadata.get("quality")
        if raw is None:
            return None
        return raw if isinstance(raw, ProbeQuality) else ProbeQuality.from_json(str(raw))

    def check_size(self, d_model: int, source: str = "probe") -> Probe:
        if self.direction.numel() != d_model:
            raise ConfigError("probe", f"{source}: the probe has {self.direction.numel()} dimensions but the model's d_model is {d_model}")
        return self


# -- files ------------------------------------------------------------------------------------------
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
        raise DataError(
            str(path),
            f"holds a dict with keys {sorted(map(str, loaded))}: expected one tensor (or a dict with "
            "one tensor, or one named 'direction' or '...weight')",
        )
    raise DataError(str(path), f"holds a {type(loaded).__name__}, not a tensor")


def save_probe(probe: Probe, path: str | Path) -> Path:
    metadata = {
        k: v if isinstance(v, str) else (v.to_json() if isinstance(v, ProbeQuality) else json.dumps(v)) for k, v in probe.metadata.items()
    }
    tensors = {"direction": probe.direction.detach().float().cpu().contiguous()}
    atomic_save_safetensors(path, tensors, metadata)
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
                metadata = dict(handle.metadata() or {}) or metadata
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


# -- what a direction is --------------------------------------------------------------------------------
def text_token_ids(tokenizer: Any, texts: Sequence[str], max_length: int = 128) -> list[list[int]]:
    """Each text's token ids as the probe's features see them (special tokens added, truncated)."""
    return [list(r) for r in tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]]


@torch.no_grad()
def pooled_final_hidden(
    model: nn.Module, tokenizer: Any, texts: Sequence[str], batch_size: int = 32, max_length: int = 128
) -> torch.Tensor:
    """(N, d_model) fp32: final hidden state (after the final norm), mean over real tokens only."""
    return pooled_over_ids(model, text_token_ids(tokenizer, texts, max_length), pad_id(tokenizer), batch_size)


@torch.no_grad()
def pooled_over_ids(model: nn.Module, token_ids: Sequence[Sequence[int]], pad: int, batch_size: int = 32) -> torch.Tensor:
    """(N, d_model) fp32: `pooled_final_hidden` of texts already tokenized."""
    device = model_device(model)
    features = []
    with eval_mode(model):
        for start in range(0, len(token_ids), batch_size):
            rows = token_ids[start : start + batch_size]
            length = max(len(r) for r in rows)
            ids = torch.full((len(rows), length), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), length), dtype=torch.long)
            for i, r in enumerate(rows):  # right padding: positions start at 0 on every row
                ids[i, : len(r)] = torch.tensor(r)
                mask[i, : len(r)] = 1
            hidden = decoder_forward(model, ids.to(device), mask.to(device)).float()
            m = mask.to(device).unsqueeze(-1).float()
            features.append(((hidden * m).sum(1) / m.sum(1)).cpu())
    return torch.cat(features)


@torch.no_grad()
def logit_lens_tokens(model: nn.Module, tokenizer: Any, direction: torch.Tensor, k: int = 20) -> list[str]:
    """The top-k tokens of `direction` read as a final residual stream: through the final norm and the unembedding."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        return []
    with gathered(model):  # trainer=fsdp: the final norm and the head are called directly, outside a forward
        x = direction.to(device=head.weight.device, dtype=head.weight.dtype)[None, None, :]  # (1, 1, d_model): one "position"
        logits = head(find_final_norm(model)(x))[0, 0].float()  # (vocab,)
    return [tokenizer.decode([int(i)]) for i in torch.topk(logits, min(k, logits.numel())).indices]


def auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve of `scores` for the binary `labels` (ties counted half): the
    Mann-Whitney U of the positives' average ranks. In torch, not scikit-learn, whose import alone
    took a second of the demo's training start."""
    s = torch.as_tensor(list(scores), dtype=torch.float64)  # (N,)
    positive = torch.as_tensor(list(labels)) == 1  # (N,) bool
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("the AUC needs both labels among the texts")
    _, inverse, counts = torch.unique(s, return_inverse=True, return_counts=True)  # sorted distinct scores
    first_rank = torch.cumsum(counts, 0) - counts + 1  # (U,) the 1-based rank of each value's first occurrence
    average_rank = first_rank + (counts - 1) / 2  # (U,) tied scores share their mean rank
    rank_sum = average_rank[inverse][positive].sum().item()
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def assess(
    model: nn.Module,
    tokenizer: Any,
    probe: Probe,
    texts: Sequence[str] | None = None,
    labels: Sequence[int] | None = None,
    source: str | None = None,
    max_length: int = 128,
    cache_dir: str | Path | None = None,
) -> ProbeQuality:
    """The probe's quality record: the logit lens and, with labelled texts, the AUC of their projections
    on it (kept in `cache_dir` when given: `labelled_auc`)."""
    quality = ProbeQuality(logit_lens_tokens(model, tokenizer, probe.direction))
    if texts and labels and len(set(labels)) == 2:
        token_ids = text_token_ids(tokenizer, texts, max_length)
        quality.auc, quality.n_eval, quality.eval_source = (
            labelled_auc(model, token_ids, labels, probe, pad_id(tokenizer), cache_dir),
            len(texts),
            source,
        )
    return quality


QUALITY_CACHE_VERSION = 1  # bump when how the AUC is measured changes: older records are then not read


def labelled_auc(
    model: nn.Module,
    token_ids: Sequence[Sequence[int]],
    labels: Sequence[int],
    probe: Probe,
    pad: int,
    cache_dir: str | Path | None = None,
) -> float:
    """The AUC of the texts' pooled final hidden states projected on the probe. With `cache_dir`, the
    value is kept under `<cache_dir>/probe_quality/`, keyed by everything it depends on (a sha256 of
    the model's class, config and weights, the token ids, the labels, the direction, the device, the
    thread count and the autocast state): a run that starts from the same model with the same probe and texts (every demo
    run, every job of a sweep) reads it instead of a forward over every text. A sharded model is
    always measured (its weights are not on one process)."""
    path = None
    if cache_dir is not None and not is_sharded(model):
        path = Path(cache_dir) / "probe_quality" / f"{_quality_key(model, token_ids, labels, probe)}.json"
        cached = _read_cached_auc(path)
        if cached is not None:
            return cached
    scores = (pooled_over_ids(model, token_ids, pad) @ probe.direction.float()).tolist()  # (N,) projections
    value = auc(scores, labels)
    if path is not None:
        try:
            atomic_write_json(path, {"version": QUALITY_CACHE_VERSION, "auc": value, "n_eval": len(labels)})
        except OSError as exc:  # a read-only cache costs a forward next time, nothing else
            log.warning("probe quality not cached (%s)", exc)
    return value


def _quality_key(model: nn.Module, token_ids: Sequence[Sequence[int]], labels: Sequence[int], probe: Probe) -> str:
    digest = hashlib.sha256(f"v{QUALITY_CACHE_VERSION}|{computation_key(model)}".encode())
    for row in token_ids:
        digest.update(torch.tensor(list(row), dtype=torch.int64).numpy().tobytes() + b"|")
    digest.update(bytes(int(label) for label in labels))
    digest.update(probe.direction.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def _read_cached_auc(path: Path) -> float | None:
    """The cached AUC, or None when there is none or the file is not one this code wrote (then it is measured again)."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        value = record["auc"]
        if record.get("version") == QUALITY_CACHE_VERSION and isinstance(value, float) and 0.0 <= value <= 1.0:
            return value
    except (OSError, ValueError, KeyError, TypeError):
        pass
    log.info("probe quality cache %s unreadable: measured again", path)
    return None


# -- sources (an extension point) -------------------------------------------------------------------------
class ProbeSource:
    """Builds a probe for a model (`__call__(model, tokenizer) -> Probe`), then records its quality and
    refuses a weak one. Subclass it and implement `direction`; or pass any callable with that signature.

    name: what the direction stands for (metric prefix dynamics/<name>/..., file probes/<name>.safetensors).
    eval_data: labelled texts ({"text", "label"} rows) to measure the direction's held-out AUC on.
    allow_weak: accept a probe whose held-out AUC is below `min_auc`.
    cache_quality: keep the held-out AUC in the cache folder (`labelled_auc`): a run from the same
        model, probe and texts reads it instead of measuring it again.
    """

    def __init__(
        self,
        name: str = "toxicity",
        eval_data: str | None = None,
        text_field: str = "text",
        label_field: str = "label",
        eval_limit: int | None = 1000,
        allow_weak: bool = False,
        min_auc: float = 0.6,
        max_length: int = 128,
        cache_quality: bool = True,
    ):
        self.name, self.eval_data = name, eval_data
        self.text_field, self.label_field, self.eval_limit = text_field, label_field, eval_limit
        self.allow_weak, self.min_auc, self.max_length = allow_weak, min_auc, max_length
        self.cache_quality = cache_quality

    def direction(self, model: nn.Module, tokenizer: Any) -> Probe:
        raise NotImplementedError

    def evaluation_texts(self) -> tuple[list[str], list[int], str] | None:
        if not self.eval_data:
            return None
        texts, labels = load_labelled_texts(self.eval_data, self.text_field, self.label_field, self.eval_limit, key="probe.eval_data")
        return texts, labels, str(self.eval_data)

    def __call__(self, model: nn.Module, tokenizer: Any) -> Probe:
        probe = self.direction(model, tokenizer).check_size(model.get_input_embeddings().weight.shape[1])
        texts, labels, source = self.evaluation_texts() or (None, None, None)
        cache_dir = default_cache_dir() if self.cache_quality else None
        quality = assess(model, tokenizer, probe, texts, labels, source, max_length=self.max_length, cache_dir=cache_dir)
        previous = probe.quality
        if previous is not None and quality.auc is None:  # a trained probe's own held-out split
            quality.auc, quality.accuracy, quality.n_eval, quality.eval_source = (
                previous.auc,
                previous.accuracy,
                previous.n_eval,
                previous.eval_source,
            )
        probe.metadata["quality"] = quality.to_json()
        if quality.auc is not None and quality.auc < self.min_auc and not self.allow_weak:
            raise ConfigError(
                "probe.allow_weak",
                f"probe {self.name}: held-out AUC {quality.auc:.3f} on {quality.eval_source} is below "
                f"{self.min_auc}: the direction barely separates the labelled texts (its top tokens: "
                f"{', '.join(repr(t) for t in quality.top_tokens[:8])}). Use another probe, or probe.allow_weak=true",
            )
        return probe


class ProbeFile(ProbeSource):
    """A released tensor (`.pt`, `.npy`, shape (d_model,) or (1, d_model)) or a probe.safetensors."""

    def __init__(self, path: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.path = path

    def direction(self, model: nn.Module, tokenizer: Any) -> Probe:
        if not self.path:
            raise ConfigError("probe.path", "the probe file is required: probe.path=<file> (e.g. Lee et al.'s probe.pt)")
        return load_probe(self.path, model.get_input_embeddings().weight.shape[1])


class TrainedProbe(ProbeSource):
    """Logistic regression on labelled texts (`data`); held-out accuracy and AUC on a stratified split."""

    def __init__(
        self,
        data: str | None = None,
        limit: int | None = None,
        split: str = "train",
        test_size: float = 0.2,
        seed: int = 42,
        C: float = 1.0,
        max_iter: int = 1000,
        batch_size: int = 32,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.data, self.limit, self.split = data, limit, split
        self.test_size, self.seed, self.C, self.max_iter, self.batch_size = test_size, seed, C, max_iter, batch_size

    def direction(self, model: nn.Module, tokenizer: Any) -> Probe:
        if not self.data:
            raise ConfigError("probe.data", "a trained probe needs labelled texts (a .jsonl/.csv file or a datasets id)")
        texts, labels = load_labelled_texts(self.data, self.text_field, self.label_field, self.limit, self.split)
        return train_probe(
            model,
            tokenizer,
            texts,
            labels,
            self.test_size,
            self.seed,
            self.C,
            self.max_iter,
            self.batch_size,
            self.max_length,
            source=str(self.data),
        )


class EmbeddingDifference(ProbeSource):
    """Mean embedding of single-token toxic seed words minus that of single-token neutral ones (the
    seed lists live in the config: conf/probe/embed_diff.yaml)."""

    def __init__(self, toxic_words: Sequence[str], neutral_words: Sequence[str], min_words: int = 3, **kwargs: Any):
        super().__init__(**kwargs)
        self.toxic_words, self.neutral_words, self.min_words = list(toxic_words), list(neutral_words), min_words

    def direction(self, model: nn.Module, tokenizer: Any) -> Probe:
        return embedding_difference_direction(model, tokenizer, self.toxic_words, self.neutral_words, self.min_words)


class RunProbe(ProbeFile):
    """The probe a training run measured with (<run dir>/probe.safetensors); `analyze` sets the path."""


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
    """Logistic regression on pooled final hidden states; `accuracy` and AUC are on the held-out split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    if len(set(labels)) != 2:
        raise DataError(source, f"a probe needs two classes, got labels {sorted(set(labels))}")
    features = pooled_final_hidden(model, tokenizer, texts, batch_size, max_length).numpy()
    x_train, x_test, y_train, y_test = train_test_split(
        features, list(labels), test_size=test_size, random_state=seed, stratify=list(labels)
    )
    classifier = LogisticRegression(C=C, max_iter=max_iter)
    classifier.fit(x_train, y_train)
    accuracy = float(classifier.score(x_test, y_test))
    held_out_auc = auc(classifier.decision_function(x_test).tolist(), y_test)
    direction = torch.tensor(classifier.coef_[0], dtype=torch.float32)
    quality = ProbeQuality(
        logit_lens_tokens(model, tokenizer, direction), held_out_auc, accuracy, len(y_test), f"{source} (held-out split)"
    )
    metadata = {
        "source": f"logistic regression on {source}",
        "accuracy": accuracy,
        "n_train": len(y_train),
        "n_test": len(y_test),
        "features": "final hidden state after the final norm, mean over real tokens",
        "quality": quality.to_json(),
    }
    log.info("probe held-out accuracy %.4f, AUC %.4f (%d train / %d test texts)", accuracy, held_out_auc, len(y_train), len(y_test))
    return Probe(direction, metadata)


def single_token_ids(tokenizer: Any, word: str) -> int | None:
    """The word's token id when it is one token (with a leading space, as inside a sentence, or bare), else None."""
    for variant in (" " + word, word):
        ids = tokenizer(variant, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            return int(ids[0])
    return None


@torch.no_grad()
def embedding_difference_direction(
    model: nn.Module,
    tokenizer: Any,
    toxic_words: Sequence[str],
    neutral_words: Sequence[str],
    min_words: int = 3,
) -> Probe:
    """Mean embedding of the single-token toxic seed words minus that of the single-token neutral
    ones: the rows of the input embedding when the LM head is tied to it (GPT-2), else of the LM head
    (Llama-style models, whose `lm_head.weight` the authors used). Words that split into several
    tokens are left out; fewer than `min_words` left on a side is refused, listing them."""
    table, which = embedding_table(model)
    kept: dict[str, list[str]] = {}
    vectors = []
    for side, words in (("toxic", toxic_words), ("neutral", neutral_words)):
        ids = {w: single_token_ids(tokenizer, w) for w in words}
        kept[side] = [w for w, i in ids.items() if i is not None]
        fragments = [w for w, i in ids.items() if i is None]
        if len(kept[side]) < min_words:
            key = "probe.toxic_words" if side == "toxic" else "probe.neutral_words"
            raise ConfigError(
                key,
                f"only {len(kept[side])} of the {side} seed words are one token of this tokenizer "
                f"({kept[side] or 'none'}); these split into fragments: {fragments}. Fragments make the "
                f"difference a word-frequency direction: give at least {min_words} words that are one token "
                "(with or without a leading space)",
            )
        if fragments:
            log.info("embedding difference: left out the %s seed words that are not one token: %s", side, fragments)
        vectors.append(table[torch.tensor([ids[w] for w in kept[side]], device=table.device)].mean(0))
    direction = (vectors[0] - vectors[1]).cpu()
    return Probe(direction, {"source": f"embedding difference ({which})", "toxic_words": kept["toxic"], "neutral_words": kept["neutral"]})


def embedding_table(model: nn.Module) -> tuple[torch.Tensor, str]:
    """(vocab, d_model) fp32 token vectors: the LM head's rows when it is not tied to the input embedding."""
    inputs = full(model.get_input_embeddings().weight)  # trainer=fsdp: gathered
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or head.weight is model.get_input_embeddings().weight or full(head.weight).data_ptr() == inputs.data_ptr():
        return inputs.detach().float(), "input embeddings"
    return full(head.weight).detach().float(), "LM head rows"


# -- the config node -> a probe ---------------------------------------------------------------------------
LEGACY_SOURCES = {"raw": ProbeFile, "train": TrainedProbe, "embed_diff": EmbeddingDifference, "run": RunProbe}


def probe_source(node: Mapping[str, Any] | ProbeSource, key: str = "probe") -> Any:
    """The probe source a config node describes: `_target_` instantiated (any importable class or
    callable), or the older `source: raw|train|embed_diff|run` form (deprecated, still read)."""
    if callable(node) and not isinstance(node, Mapping):
        return node
    from lightning_dpo.utils.config import build

    settings = {k: v for k, v in dict(node).items() if v is not None or k == "path"}
    if "_target_" in settings:
        from omegaconf import OmegaConf

        return build(OmegaConf.create(settings), key)
    source = settings.pop("source", "train")
    if source not in LEGACY_SOURCES:
        raise ConfigError(f"{key}.source", f"unknown source {source!r}; accepted: {sorted(LEGACY_SOURCES)} (or give {key}._target_)")
    warnings.warn(
        f"config key '{key}.source' is deprecated: the probe configs are objects now ({key}._target_=... ; "
        f"conf/probe/*.yaml); '{source}' is read as {LEGACY_SOURCES[source].__name__}",
        DeprecationWarning,
        stacklevel=2,
    )
    try:
        return LEGACY_SOURCES[source](**settings)
    except TypeError as exc:
        raise ConfigError(key, f"{exc}") from None


def is_probe_file(node: Mapping[str, Any]) -> bool:
    """A config node that reads a probe file (ProbeFile, or the older `source: raw`)."""
    target = str(node.get("_target_") or "")
    return target.endswith(".ProbeFile") or (not target and node.get("source") == "raw")


def build_probe(
    model: nn.Module, tokenizer: Any, node: Mapping[str, Any] | ProbeSource | None = None, key: str = "probe", **settings: Any
) -> Probe:
    """A probe from a config node (or keyword settings), validated against the model's d_model, with its quality."""
    source = probe_source(node if node is not None else settings, key)
    probe = source(model, tokenizer)
    if not isinstance(probe, Probe):
        raise ConfigError(key, f"the probe source {type(source).__name__} returned {type(probe).__name__}, not a Probe")
    return probe.check_size(model.get_input_embeddings().weight.shape[1], key)
