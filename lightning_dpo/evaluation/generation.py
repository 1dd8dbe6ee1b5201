"""Batched generation with left padding, for toxicity evaluation, the dynamics probe set and pairs.

One implementation for every caller: prompts are left-padded with a correct attention mask and
explicit position ids, decoding uses the KV cache, and the continuation is separated from the
prompt by token count (never by string replacement). Greedy by default; `temperature > 0`
samples, reproducibly given a seeded `generator`.

Why not `transformers`' `generate`: sampling here draws from a `torch.Generator` the caller owns
(make_pairs seeds one per chunk, so an interrupted run resumes to the same file; `generate`
samples from the global RNG), the papers' neuron analysis needs exactly N argmax steps whatever
the EOS (`stop_at_eos=False`), and a loop this short is tested token for token against a plain
greedy loop without a cache (tests/test_evaluation.py) on every architecture the project supports.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lightning_dpo.data.tokenize import pad_id
from lightning_dpo.utils.errors import ConfigError
from lightning_dpo.utils.torch_utils import (
    eval_mode,
    left_pad,
    model_device,
    position_ids_from_mask,
)


@dataclass
class Generation:
    input_ids: torch.Tensor  # (B, P + n): left-padded prompt then generated tokens
    attention_mask: torch.Tensor  # (B, P + n)
    prompt_length: int  # P, the padded prompt width
    new_tokens: torch.Tensor  # (B, n)
    new_mask: torch.Tensor  # (B, n): False after an EOS when stopping at EOS

    def continuation_ids(self, row: int) -> list[int]:
        return self.new_tokens[row][self.new_mask[row]].tolist()


def tokenize_prompts(
    tokenizer: Any,
    prompts: Sequence[str],
    max_prompt_tokens: int | None = 32,
    truncation_side: str = "right",
    prepend_bos: bool = False,
) -> list[list[int]]:
    """Prompt ids cut to `max_prompt_tokens` (None: uncut): `right` keeps the first tokens (as the
    published evaluation did), `left` keeps the last ones. `prepend_bos` puts the tokenizer's BOS
    (GPT-2: <|endoftext|>) first, as TransformerLens' `prepend_bos`, unless the tokenizer did."""
    if truncation_side not in ("right", "left"):
        raise ConfigError("truncation_side", f"got {truncation_side!r}; accepted: ['right', 'left']")
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    out = []
    for ids in tokenizer(list(prompts), add_special_tokens=True, verbose=False)["input_ids"]:
        ids = list(ids)
        if prepend_bos and (not ids or ids[0] != bos):
            ids = [bos] + ids
        if max_prompt_tokens and len(ids) > max_prompt_tokens:
            ids = ids[:max_prompt_tokens] if truncation_side == "right" else ids[-max_prompt_tokens:]
        out.append(ids or [tokenizer.eos_token_id])
    return out


def _next_token(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(logits.device)


@torch.no_grad()
def greedy_continue(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int | None,
    pad_token_id: int,
    stop_at_eos: bool = True,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    all_finished: Callable[[bool], bool] | None = None,
) -> Generation:
    """Decode `max_new_tokens` tokens from left-padded prompts: argmax, or sampling at `temperature`.

    With `stop_at_eos=False` every row gets exactly `max_new_tokens` tokens (the published
    neuron analysis ran 20 argmax steps regardless of EOS). `all_finished(done_here)` decides the
    early stop across processes (trainer=fsdp: every process must run as many forwards).
    """
    batch = input_ids.shape[0]
    device = input_ids.device
    positions = position_ids_from_mask(attention_mask)
    cache_arg = _cache_argument(model)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    past = _cache_of(out)
    next_token = _next_token(out.logits[:, -1], temperature, generator)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    new_tokens, new_mask = [], []
    mask = attention_mask
    last_pos = positions[:, -1:]
    for t in range(max_new_tokens):
        new_tokens.append(torch.where(finished, torch.full_like(next_token, pad_token_id), next_token))
        new_mask.append(~finished)
        if stop_at_eos and eos_token_id is not None:
            finished = finished | (next_token == eos_token_id)
        done = bool(finished.all())
        if t == max_new_tokens - 1 or (all_finished(done) if all_finished is not None else done):
            break
        mask = torch.cat([mask, (~finished).long().unsqueeze(1)], dim=1)
        last_pos = last_pos + 1
        out = model(
            input_ids=new_tokens[-1].unsqueeze(1),
            attention_mask=mask,
            position_ids=last_pos,
            use_cache=True,
            **{cache_arg: past},
        )
        past = _cache_of(out)
        next_token = _next_token(out.logits[:, -1], temperature, generator)
    tokens = torch.stack(new_tokens, dim=1)
    tmask = torch.stack(new_mask, dim=1)
    return Generation(
        input_ids=torch.cat([input_ids, tokens], dim=1),
        attention_mask=torch.cat([attention_mask, tmask.long()], dim=1),
        prompt_length=input_ids.shape[1],
        new_tokens=tokens,
        new_mask=tmask,
    )


def _cache_argument(model: nn.Module) -> str:
    """transformers renamed `past_key_values` to `cache` during 5.x; use whichever this version takes."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache_of(output: Any) -> Any:
    return output["cache"] if "cache" in output else output["past_key_values"]


def generate_continuations(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    max_prompt_tokens: int = 32,
    max_new_tokens: int = 20,
    batch_size: int = 64,
    truncation_side: str = "right",
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    all_finished: Callable[[bool], bool] | None = None,
) -> list[str]:
    """Continuations (text after the prompt, up to EOS) of each prompt; greedy unless temperature > 0.
    `all_finished`: the early stop across processes (see `greedy_continue`)."""
    prompt_ids = tokenize_prompts(tokenizer, prompts, max_prompt_tokens, truncation_side)
    pad = pad_id(tokenizer)
    texts: list[str] = []
    device = model_device(model)
    with eval_mode(model):
        for start in range(0, len(prompt_ids), batch_size):
            ids, mask = left_pad(prompt_ids[start : start + batch_size], pad)
            gen = greedy_continue(
                model,
                ids.to(device),
                mask.to(device),
                max_new_tokens,
                tokenizer.eos_token_id,
                pad,
                temperature=temperature,
                generator=generator,
                all_finished=all_finished,
            )
            for row in range(ids.shape[0]):
                cont = [t for t in gen.continuation_ids(row) if t != tokenizer.eos_token_id]
                texts.append(tokenizer.decode(cont, skip_special_tokens=True))
    return texts
