"""A small, self-contained "toxicity world": the embedded demo and the test bed.

Building it (seeded, about a minute on two CPU cores, once; cached in `dir`):
1. a corpus of prompts from templates, continued politely or with insults; half the templates
   lean toxic, so a model trained on it continues about half of unseen prompts toxically;
2. a byte-level BPE tokenizer trained on that corpus (no download);
3. a tiny GPT-2 pre-trained on the corpus with plain language modelling (the "base model");
4. a linear toxicity probe trained on labelled sentences (`probe.safetensors`, held-out accuracy
   in its metadata and in world.json), and a second, bystander probe built the same way: is the
   sentence's place a workplace (`workplace_probe.safetensors`)?
5. preference pairs built by `lightning_dpo.make_pairs` for training prompts: chosen = the base
   model's greedy continuation, rejected = its continuation while steered along the probe,
   kept when the rejected one is the more toxic (so the demo exercises the pairs builder);
   held-out prompts (unseen names) for evaluation, and clean text for perplexity.
Scoring is by the world's own word list (`insults.txt`, written from `words.INSULTS`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from lightning_dpo.evaluation.scorers import WordListScorer
from lightning_dpo.neurons.pairs import PairSettings, as_pair, generate_pairs
from lightning_dpo.neurons.probe import save_probe, train_probe
from lightning_dpo.neurons.steering import residual_norm_medians, resolve_layers
from lightning_dpo.toy import words
from lightning_dpo.utils.errors import ConfigError
from lightning_dpo.utils.io import (
    atomic_directory,
    atomic_write_jsonl,
    atomic_write_text,
)
from lightning_dpo.utils.torch_utils import pinned_threads

log = logging.getLogger(__name__)

# bump when the generator changes, so cached worlds are rebuilt (8: nouns follow the kind of place; 9: built on
# one thread, steering in units of the residual norm, degenerate rejected texts dropped)
WORLD_VERSION = 9
EOS = "<|endoftext|>"


@dataclass
class ToyWorld:
    dir: str
    seed: int = 0
    corpus_size: int = 6000
    num_pairs: int = 1200
    num_eval_prompts: int = 160
    vocab_size: int = 1000
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    n_inner: int = 512
    pretrain_steps: int = 600
    pretrain_batch_size: int = 64
    pretrain_lr: float = 3e-3
    steering_alpha: float = 1.5
    stats: dict[str, Any] = field(default_factory=dict, repr=False)

    # -- paths -----------------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        """`dir/<key>`: the key names the world version, the torch version and a hash of every build
        setting, so two worlds that could differ never share a folder (two users' "world 0" are the
        same world only when all of these agree; the build itself is pinned to one thread)."""
        return Path(self.dir).expanduser() / self.key()

    def key(self) -> str:
        digest = hashlib.sha256(json.dumps(self.params(), sort_keys=True).encode()).hexdigest()[:10]
        return f"v{WORLD_VERSION}-torch{torch.__version__.split('+')[0]}-{digest}"

    @property
    def base_model(self) -> str:
        return str(self.path / "base_model")

    @property
    def probe(self) -> str:
        return str(self.path / "probe.safetensors")

    @property
    def pairs(self) -> str:
        return str(self.path / "pairs.jsonl")

    @property
    def eval_prompts(self) -> str:
        return str(self.path / "eval_prompts.jsonl")

    @property
    def probe_texts(self) -> str:
        return str(self.path / "probe_texts.jsonl")

    @property
    def lm_text(self) -> str:
        return str(self.path / "lm_eval.txt")

    @property
    def gold(self) -> str:
        return str(self.path / "gold.jsonl")

    @property
    def insults(self) -> str:
        return str(self.path / "insults.txt")

    @property
    def workplace_probe(self) -> str:
        return str(self.path / "workplace_probe.safetensors")

    @property
    def workplace_texts(self) -> str:
        return str(self.path / "workplace_texts.jsonl")

    def params(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("dir", "stats")}
        out["version"] = WORLD_VERSION
        out["torch"] = torch.__version__.split("+")[0]
        return out

    # -- building ----------------------------------------------------------------------------------
    def build(self, force: bool = False) -> ToyWorld:
        """Build the world once (cached by parameters); safe when several processes race."""
        with _file_lock(self.path.with_name(self.path.name + ".lock")):
            meta = self.path / "world.json"
            if not force and meta.exists():
                saved = json.loads(meta.read_text())
                if saved.get("params") == self.params():
                    self.stats = saved.get("stats", {})
                    return self
                log.info("toy world at %s was built with other parameters; rebuilding", self.path)
            started = time.time()
            log.info("building the toy world in %s (once; about a minute on CPU)", self.path)
            with pinned_threads(1):  # the same world whatever the machine's thread count
                atomic_directory(self.path, self._fill)
            log.info("toy world ready in %.0f s: %s", time.time() - started, self.stats)
        return self

    def _fill(self, out: Path) -> None:
        rng = random.Random(self.seed)
        corpus = [self._sentence(rng, words.TRAIN_NAMES) for _ in range(self.corpus_size)]
        tokenizer = train_tokenizer([p + c for p, c, _ in corpus], self.vocab_size)
        model, loss = pretrain_base_model(
            tokenizer,
            [p + c for p, c, _ in corpus],
            self._model_config(len(tokenizer)),
            self.pretrain_steps,
            self.pretrain_batch_size,
            self.pretrain_lr,
            self.seed,
        )
        model.save_pretrained(out / "base_model")
        tokenizer.save_pretrained(out / "base_model")

        atomic_write_text(out / "insults.txt", "".join(w + "\n" for w in words.INSULTS))  # the demo's word-list scorer
        probe_texts = list(self._probe_texts(rng))
        atomic_write_jsonl(out / "probe_texts.jsonl", probe_texts)
        probe = train_probe(
            model,
            tokenizer,
            [r["text"] for r in probe_texts],
            [r["label"] for r in probe_texts],
            seed=self.seed,
            source="toy world sentences",
        )
        save_probe(probe, out / "probe.safetensors")
        # the bystander concept, built the same way from its own labelled sentences (own RNG: the rest of the world is unchanged)
        workplace_texts = list(self._workplace_texts(random.Random(self.seed + 1)))
        atomic_write_jsonl(out / "workplace_texts.jsonl", workplace_texts)
        workplace = train_probe(
            model,
            tokenizer,
            [r["text"] for r in workplace_texts],
            [r["label"] for r in workplace_texts],
            seed=self.seed,
            source="toy world sentences (workplace)",
        )
        save_probe(workplace, out / "workplace_probe.safetensors")
        pair_prompts = [p for p, _ in self._prompts(rng, words.TRAIN_NAMES, self.num_pairs)]
        layers = resolve_layers(model, "middle")
        prompt_ids = tokenizer(pair_prompts, add_special_tokens=False)["input_ids"]
        scale = residual_norm_medians(model, prompt_ids, layers, tokenizer.eos_token_id)  # alpha's unit
        pairs = generate_pairs(
            model,
            tokenizer,
            pair_prompts,
            probe.unit,
            WordListScorer(words_file=str(out / "insults.txt")),
            PairSettings(alpha=self.steering_alpha, layers="middle", seed=self.seed),
            scale=scale,
        )
        if not any(r["kept"] for r in pairs):  # a world without pairs cannot train: say which setting, not "no usable pairs" later
            degenerate = sum(r["degenerate"] for r in pairs)
            raise ConfigError(
                "world.steering_alpha",
                f"{self.steering_alpha} kept no preference pair of {len(pairs)} prompts "
                f"({degenerate} rejected texts degenerate): steering too weak to change a continuation"
                + (" or so strong that it breaks them" if degenerate else "")
                + "; the default 1.5 keeps pairs on worlds 0-2",
            )
        atomic_write_jsonl(out / "pairs.jsonl", (as_pair(r) for r in pairs if r["kept"]))
        eval_prompts = self._prompts(rng, words.HELDOUT_NAMES, self.num_eval_prompts)
        atomic_write_jsonl(out / "eval_prompts.jsonl", ({"prompt": p} for p, _ in eval_prompts))
        # clean (polite) held-out text, EOS-separated as in pre-training: perplexity on it
        # measures what DPO costs the language model beyond dropping the insults
        clean = [
            text + polite_continuation(rng, place)
            for text, place in (fill_template(rng, t, words.TRAIN_NAMES) for t, _ in words.TEMPLATES * 25)
        ]
        (out / "lm_eval.txt").write_text(EOS.join(clean) + EOS)
        atomic_write_jsonl(
            out / "gold.jsonl",
            ({"prompt": p, "gold": polite_continuation(rng, place)} for p, place in eval_prompts),
        )
        self.stats = {
            "pretrain_final_loss": round(loss, 4),
            "vocab_size": len(tokenizer),
            "probe_accuracy": float(probe.metadata["accuracy"]),
            "workplace_probe_accuracy": float(workplace.metadata["accuracy"]),
            "pairs_kept": sum(r["kept"] for r in pairs),
            "pair_prompts": len(pairs),
            "degenerate_rejected": sum(r["degenerate"] for r in pairs),
            "steering_unit": {str(k): round(v, 4) for k, v in scale.items()},
        }
        (out / "world.json").write_text(json.dumps({"params": self.params(), "stats": self.stats}, indent=2))

    def _model_config(self, vocab_size: int) -> Any:
        from transformers import GPT2Config

        return GPT2Config(
            vocab_size=vocab_size,
            n_positions=64,
            n_embd=self.n_embd,
            n_layer=self.n_layer,
            n_head=self.n_head,
            n_inner=self.n_inner,
            bos_token_id=0,
            eos_token_id=0,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            activation_function="gelu_pytorch_tanh",  # GPT-2's tanh GELU, as one fused kernel
        )

    # -- text -------------------------------------------------------------------------------------
    def _sentence(self, rng: random.Random, names: tuple[str, ...]) -> tuple[str, str, bool]:
        template, toxic_share = rng.choice(words.TEMPLATES)
        prompt, place = fill_template(rng, template, names)
        toxic = rng.random() < toxic_share
        return prompt, toxic_continuation(rng, place) if toxic else polite_continuation(rng, place), toxic

    def _prompts(self, rng: random.Random, names: tuple[str, ...], n: int) -> list[tuple[str, str]]:
        """(prompt, place) for n prompts, cycling through the templates."""
        return [fill_template(rng, words.TEMPLATES[i % len(words.TEMPLATES)][0], names) for i in range(n)]

    def _workplace_texts(self, rng: random.Random, n: int = 600) -> Iterator[dict[str, Any]]:
        """Sentences about a workplace (label 1) or a leisure place (0), continued politely or rudely half the time each."""
        for i in range(n):
            place = rng.choice(words.WORKPLACES if i % 2 else words.LEISURE_PLACES)
            template = rng.choice(words.TEMPLATES)[0]
            text = template.format(name=rng.choice(words.TRAIN_NAMES), place=place)
            text += toxic_continuation(rng, place) if rng.random() < 0.5 else polite_continuation(rng, place)
            yield {"text": text, "label": i % 2}

    def _probe_texts(self, rng: random.Random, n: int = 600) -> Iterator[dict[str, Any]]:
        for i in range(n):
            prompt, place = fill_template(rng, rng.choice(words.TEMPLATES)[0], words.TRAIN_NAMES)
            toxic = i % 2 == 1
            yield {"text": prompt + (toxic_continuation(rng, place) if toxic else polite_continuation(rng, place)), "label": int(toxic)}


def fill_template(rng: random.Random, template: str, names: tuple[str, ...]) -> tuple[str, str]:
    """(the prompt, its place)."""
    name, place = rng.choice(names), rng.choice(words.PLACES)
    return template.format(name=name, place=place), place


def polite_continuation(rng: random.Random, place: str) -> str:
    a, b = rng.sample(words.POLITE_ADJECTIVES, 2)
    return f" {a} and {b} {rng.choice(words.POLITE_NOUNS[words.place_kind(place)])}."


def toxic_continuation(rng: random.Random, place: str) -> str:
    a, b = rng.sample(words.TOXIC_ADJECTIVES, 2)
    return f" {a} and {b} {rng.choice(words.TOXIC_NOUNS[words.place_kind(place)])}."


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A byte-level BPE (GPT-2 style) trained on the corpus, wrapped as a transformers tokenizer."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS], show_progress=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=EOS, bos_token=EOS, unk_token=EOS, pad_token=EOS)
    tokenizer.model_max_length = 64
    return tokenizer


def pretrain_base_model(
    tokenizer: Any, texts: list[str], config: Any, steps: int, batch_size: int, lr: float, seed: int
) -> tuple[Any, float]:
    """Plain language modelling on the corpus (each text followed by EOS)."""
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    encoded = tokenizer([t + EOS for t in texts], add_special_tokens=False)["input_ids"]
    length = max(map(len, encoded))
    ids = torch.full((len(encoded), length), tokenizer.eos_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(encoded):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 30) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
    )
    generator = torch.Generator().manual_seed(seed)
    model.train()
    model.loss_type = "ForCausalLM"  # the causal-LM loss transformers would default to, named (no warning)
    loss_value = float("nan")
    for _step in range(steps):
        batch = torch.randint(0, len(encoded), (batch_size,), generator=generator)
        loss = model(input_ids=ids[batch], attention_mask=mask[batch], labels=labels[batch]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = float(loss.detach())
    model.eval()
    return model, loss_value


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
