"""The probe set: fixed token sequences, the positions whose activations are averaged, and the
buckets of prompts the uncertainty is estimated over.

`fixed` (default): each prompt (cut to `max_prompt_tokens`, left-padded to one width P) plus
the *reference* model's greedy continuation of `num_positions` tokens, computed once at step 0;
the averaged positions are the `num_positions` positions that predict the generated tokens
(the last prompt token and the first num_positions - 1 generated ones). Every snapshot then
reads the same tokens, so a change in a_i is the neuron's own change, not a change of input.
`generate` (the paper's convention): the current policy generates its own continuation at each
snapshot, with the same position rule.

The fixed continuation depends only on the reference model and the prompts: `build_probe_tokens`
keeps it in the cache folder (keyed by a sha256 of the model's class, config and weights, the
prompt ids and every setting of the decoding), so the jobs of a sweep and every demo run decode it once.

Buckets: every prompt belongs to one of B buckets (a seeded shuffle dealt round-robin, so bucket
sizes differ by at most one and the file's order does not decide them); every snapshot keeps its
sums per bucket, from which the jackknife leaves one bucket out at a time (dynamics/uncertainty.py).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_dpo.evaluation.generation import greedy_continue, tokenize_prompts
from lightning_dpo.model.fingerprint import computation_key
from lightning_dpo.model.wrappers import is_sharded
from lightning_dpo.utils.io import atomic_save_safetensors
from lightning_dpo.utils.torch_utils import eval_mode, left_pad, model_device

log = logging.getLogger(__name__)

POSITION_MODES = ("fixed", "generate")


def assign_buckets(n: int, count: int, seed: int = 0) -> torch.Tensor:
    """(n,) long: prompt i's bucket; a seeded permutation dealt round-robin over `count` buckets."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    bucket = torch.empty(n, dtype=torch.long)
    bucket[order] = torch.arange(n) % max(1, count)
    return bucket


@dataclass
class ProbeTokens:
    input_ids: torch.Tensor  # (N, P + n) left-padded prompts + generated tokens
    attention_mask: torch.Tensor  # (N, P + n)
    positions: torch.Tensor  # (N, P + n) bool: the averaged positions
    bucket: torch.Tensor | None = None  # (N,) long: each prompt's bucket (None: one bucket)

    def buckets(self) -> torch.Tensor:
        return self.bucket if self.bucket is not None else torch.zeros(self.input_ids.shape[0], dtype=torch.long)

    def shard(self, rank: int, world: int) -> ProbeTokens:
        """Rows rank, rank + world, ...; every process gets the same number of rows (a short shard is
        padded with copies of row 0 whose positions are all off, so they add nothing): under
        trainer=fsdp each forward is a collective, and every process must run as many."""
        total = self.input_ids.shape[0]
        rows = torch.arange(rank, total, world)
        missing = -(-total // world) - len(rows)
        padded = torch.cat([rows, torch.zeros(missing, dtype=torch.long)])  # (ceil(N / world),)
        positions = self.positions[padded].clone()
        positions[len(rows) :] = False
        return ProbeTokens(self.input_ids[padded], self.attention_mask[padded], positions, self.buckets()[padded])

    def to_dict(self) -> dict[str, torch.Tensor]:
        out = {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "positions": self.positions}
        if self.bucket is not None:
            out["bucket"] = self.bucket
        return out


def prompt_ids_for(tokenizer: Any, prompts: Sequence[str], max_prompt_tokens: int | None, prepend_bos: bool = False) -> list[list[int]]:
    """The probe set's prompt ids: first `max_prompt_tokens` tokens (None: uncut), optionally after a BOS."""
    return tokenize_prompts(tokenizer, prompts, max_prompt_tokens, truncation_side="right", prepend_bos=prepend_bos)


@torch.no_grad()
def _decode_probe_tokens(
    model: nn.Module, prompt_ids: list[list[int]], pad_token_id: int, num_positions: int, batch_size: int, buckets: int, seed: int
) -> ProbeTokens:
    """Prompts + `model`'s greedy continuation (exactly `num_positions` tokens, EOS not stopping),
    the prompts dealt into `buckets` buckets."""
    ids, mask = left_pad(prompt_ids, pad_token_id)  # one width for all rows
    device = model_device(model)
    chunks = []
    with eval_mode(model):
        for start in range(0, ids.shape[0], batch_size):
            gen = greedy_continue(
                model,
                ids[start : start + batch_size].to(device),
                mask[start : start + batch_size].to(device),
                num_positions,
                eos_token_id=None,
                pad_token_id=pad_token_id,
                stop_at_eos=False,
            )
            chunks.append((gen.input_ids.cpu(), gen.attention_mask.cpu()))
    input_ids = torch.cat([c[0] for c in chunks])
    attention_mask = torch.cat([c[1] for c in chunks])
    width = ids.shape[1]
    positions = torch.zeros_like(input_ids, dtype=torch.bool)
    positions[:, width - 1 : width - 1 + num_positions] = True
    return ProbeTokens(input_ids, attention_mask, positions, assign_buckets(len(prompt_ids), buckets, seed))


TOKENS_CACHE_VERSION = 1  # bump when the decoding of the fixed continuation changes: older files are then not read


def build_probe_tokens(
    model: nn.Module,
    prompt_ids: list[list[int]],
    pad_token_id: int,
    num_positions: int = 20,
    batch_size: int = 64,
    buckets: int = 1,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> ProbeTokens:
    """Prompts + `model`'s greedy continuation (exactly `num_positions` tokens, EOS not stopping),
    the prompts dealt into `buckets` buckets. With `cache_dir`, read from `<cache_dir>/probe_tokens/`
    when the same model decoded the same prompts with the same settings before (the key also holds
    the device, the thread count and the autocast state, which can change a greedy token); a file
    that is not one this code wrote is decoded again and replaced. A sharded model (trainer=fsdp)
    always decodes: every process must."""
    if cache_dir is None or is_sharded(model):
        return _decode_probe_tokens(model, prompt_ids, pad_token_id, num_positions, batch_size, buckets, seed)
    path = Path(cache_dir) / "probe_tokens" / f"{_tokens_key(model, prompt_ids, pad_token_id, num_positions, batch_size)}.safetensors"
    cached = _read_cached_tokens(path, len(prompt_ids), num_positions)
    if cached is not None:
        return ProbeTokens(*cached, assign_buckets(len(prompt_ids), buckets, seed))
    tokens = _decode_probe_tokens(model, prompt_ids, pad_token_id, num_positions, batch_size, buckets, seed)
    try:
        atomic_save_safetensors(
            path,
            {"input_ids": tokens.input_ids, "attention_mask": tokens.attention_mask, "positions": tokens.positions},
            {"version": str(TOKENS_CACHE_VERSION)},
        )
    except OSError as exc:  # a read-only cache costs a decoding next time, nothing else
        log.warning("probe tokens not cached (%s)", exc)
    return tokens


def _tokens_key(model: nn.Module, prompt_ids: list[list[int]], pad_token_id: int, num_positions: int, batch_size: int) -> str:
    settings = f"v{TOKENS_CACHE_VERSION}|{computation_key(model)}|{pad_token_id}|{num_positions}|{batch_size}"
    digest = hashlib.sha256(settings.encode())
    for row in prompt_ids:
        digest.update(torch.tensor(row, dtype=torch.int64).numpy().tobytes() + b"|")
    return digest.hexdigest()[:24]


def _read_cached_tokens(path: Path, rows: int, num_positions: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(input_ids, attention_mask, positions) of a cache file this code wrote, else None."""
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
            version = (handle.metadata() or {}).get("version")
        ids, mask, positions = tensors["input_ids"], tensors["attention_mask"], tensors["positions"]
        shape = ids.shape
        if (
            version == str(TOKENS_CACHE_VERSION)
            and ids.dim() == 2
            and shape[0] == rows
            and mask.shape == shape
            and positions.shape == shape
            and ids.dtype == torch.long
            and positions.dtype == torch.bool
            and int(positions.sum()) == rows * num_positions
        ):
            return ids, mask, positions
    except Exception:  # any file that is not a complete one of ours: decoded again
        pass
    log.info("probe tokens cache %s unreadable: decoded again", path)
    return None
