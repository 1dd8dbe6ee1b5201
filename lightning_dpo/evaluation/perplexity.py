"""Perplexity over non-overlapping windows (Wikitext-2 test in the papers), reported as perplexity.

exp( sum of token NLLs / number of predicted tokens ); each window's first token has no
prediction. (One published version returned the log-perplexity; this returns both, labelled.)
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_dpo.model.loading import max_positions
from lightning_dpo.utils.torch_utils import eval_mode, model_device


@torch.no_grad()
def window_nll(model: nn.Module, ids: torch.Tensor) -> tuple[float, int]:
    """Summed NLL and number of predicted tokens for a batch of equal-length windows (B, T)."""
    logits = model(input_ids=ids, use_cache=False).logits
    nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum")
    return float(nll), ids[:, 1:].numel()


@torch.no_grad()
def perplexity(model: nn.Module, tokenizer: Any, text: str, window: int = 1024, batch_size: int = 4) -> dict[str, float]:
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    limit = max_positions(model)
    if limit:
        window = min(window, limit)
    windows = [ids[i : i + window] for i in range(0, len(ids), window)]
    windows = [w for w in windows if len(w) > 1]
    device = model_device(model)
    total_nll, total_tokens = 0.0, 0
    with eval_mode(model):
        full = [w for w in windows if len(w) == window]
        for start in range(0, len(full), batch_size):
            nll, n = window_nll(model, torch.tensor(full[start : start + batch_size], device=device))
            total_nll, total_tokens = total_nll + nll, total_tokens + n
        for w in windows:
            if len(w) != window:
                nll, n = window_nll(model, torch.tensor([w], device=device))
                total_nll, total_tokens = total_nll + nll, total_tokens + n
    mean_nll = total_nll / max(total_tokens, 1)
    return {"perplexity": math.exp(mean_nll), "log_perplexity": mean_nll, "tokens": total_tokens, "window": window}
