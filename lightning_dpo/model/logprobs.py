"""Where a batch becomes per-sequence log-probabilities.

Only the positions that predict a completion token go through the LM head: the backbone's
hidden states are gathered at those positions first, so the (tokens x vocab) logits exist only
for completion tokens (prompt and padding never reach the head). Log-softmax runs in fp32 via
`F.cross_entropy`, which never materialises a second (tokens x vocab) copy.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from lightning_dpo.model.wrappers import is_sharded, unwrap

# Architectures whose causal-LM head is exactly `lm_head(final_hidden_state)` (plus Gemma-2's
# documented soft-capping); others fall back to the full forward and a gather.
_HEAD_ONLY_TYPES = {"gpt2", "llama", "mistral", "gemma", "gemma2", "qwen2", "qwen3", "phi3", "gpt_neox", "opt"}


@dataclass
class CompletionLogits:
    logits: torch.Tensor  # (K, vocab), K = number of completion tokens in the batch
    targets: torch.Tensor  # (K,) token ids being predicted
    rows: torch.Tensor  # (K,) which sequence each token belongs to
    num_rows: int
    extra_logps: torch.Tensor | None = None  # (K2,) fp32 log p of the `extra_targets` tokens, when asked for


def prediction_mask(completion_mask: torch.Tensor) -> torch.Tensor:
    """Positions whose next-token prediction is a completion token (the mask shifted left by one)."""
    mask = torch.zeros_like(completion_mask, dtype=torch.bool)
    mask[:, :-1] = completion_mask[:, 1:].bool()
    return mask


def completion_logits(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
    extra_targets: torch.Tensor | None = None,
) -> CompletionLogits:
    """Logits at the positions predicting completion tokens, for any HF causal LM.

    `extra_targets` (N, T) marks further tokens (never completion tokens) whose log-probs are
    wanted too, from the same forward: ORPO's NLL also covers the chosen prompt.
    """
    if completion_mask[:, 0].any():
        raise ValueError("a completion cannot start at position 0: every row needs at least one prompt token")
    pred = prediction_mask(completion_mask)  # (N, T) bool: positions whose next token is a completion token (K in all)
    targets = input_ids[:, 1:][completion_mask[:, 1:].bool()]
    rows = torch.arange(input_ids.shape[0], device=input_ids.device).unsqueeze(1).expand_as(pred)[pred]  # (K,) row of each
    extra_pred = None if extra_targets is None else prediction_mask(extra_targets)  # (N, T), K2 positions
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in _HEAD_ONLY_TYPES and hasattr(model, "get_output_embeddings") and not is_sharded(model):
        inner = unwrap(model)  # a LoRA policy: its decoder is inside peft's wrapper (the adapters stay active)
        hidden = inner.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)[0]  # (N, T, d_model)
        head = partial(_head, inner)
        logits = head(hidden[pred])  # (K, d_model) -> (K, V): the head sees completion positions only
        extra = None if extra_pred is None else head(hidden[extra_pred])  # (K2, V)
    else:  # the model's own forward (FSDP2 gathers the root's weights only there): logits from the first predicted position on
        used = (pred | extra_pred) if extra_pred is not None else pred
        first = int(used.any(0).nonzero()[0]) if used.any() and _takes_logits_to_keep(model) else 0
        keep = {"logits_to_keep": input_ids.shape[1] - first} if first else {}
        all_logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **keep).logits  # (N, T - first, V)
        logits = all_logits[pred[:, first:]]
        extra = None if extra_pred is None else all_logits[extra_pred[:, first:]]
    extra_logps = None
    if extra is not None and extra_targets is not None:
        extra_logps = -F.cross_entropy(extra.float(), input_ids[:, 1:][extra_targets[:, 1:].bool()], reduction="none")
    return CompletionLogits(logits, targets, rows, input_ids.shape[0], extra_logps)


def _takes_logits_to_keep(model: nn.Module) -> bool:
    return "logits_to_keep" in inspect.signature(unwrap(model).forward).parameters


def _head(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    logits = model.get_output_embeddings()(hidden)
    softcap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / softcap) * softcap if softcap else logits


def token_logps(cl: CompletionLogits) -> torch.Tensor:
    """log p(target) per completion token, in fp32."""
    return -F.cross_entropy(cl.logits.float(), cl.targets, reduction="none")


def per_sequence_sum(values: torch.Tensor, cl: CompletionLogits) -> torch.Tensor:
    out = torch.zeros(cl.num_rows, dtype=values.dtype, device=values.device)
    return out.index_add(0, cl.rows, values)


def sequence_logps(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
    extra_targets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, CompletionLogits]:
    """Summed completion log-probs per sequence (N,), and the logits they came from."""
    cl = completion_logits(model, input_ids, attention_mask, completion_mask, extra_targets)
    return per_sequence_sum(token_logps(cl), cl), cl


def per_token_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, from log-probabilities over the vocabulary (fp32)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)
