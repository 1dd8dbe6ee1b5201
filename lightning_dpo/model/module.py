"""DPOModule: the LightningModule where a batch becomes a preference loss.

The policy is any Hugging Face causal LM; the reference is an exact frozen copy of the initial
policy, kept *outside* the module's registered children so that it is never in the optimizer,
never in a checkpoint (it is rebuilt from the original weights on resume) and never wrapped by
DDP. With `precompute_reference=True` its log-probs are computed once before training, cached on
disk, and the reference is dropped from memory.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn
from torchmetrics import MeanMetric

from lightning_dpo.model.loading import apply_lora, frozen_copy, load_causal_lm, resolve_dtype
from lightning_dpo.model.logprobs import (
    CompletionLogits,
    per_sequence_sum,
    per_token_kl,
    sequence_logps,
)
from lightning_dpo.model.losses import PreferenceLoss
from lightning_dpo.model.schedules import warmup_schedule
from lightning_dpo.model.wrappers import is_sharded, local, unwrap
from lightning_dpo.utils.errors import ConfigError, NonFiniteError

log = logging.getLogger(__name__)

# Metric names follow TRL's DPOTrainer; each is logged as train/<name> and val/<name>.
METRICS = (
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "logits/chosen",
    "logits/rejected",
    "kl",
)
NONFINITE_POLICIES = ("raise", "skip")
PROGRESS_BAR = ("loss", "rewards/accuracies")


def _metric_key(name: str) -> str:
    return name.replace("/", "__")  # ModuleDict keys cannot hold every character


class DPOModule(L.LightningModule):
    def __init__(
        self,
        name_or_path: str | None = None,
        config: Mapping[str, Any] | None = None,
        tokenizer: str | None = None,
        gguf_file: str | None = None,
        dtype: str = "float32",
        reference_dtype: str | None = None,
        precompute_reference: bool = False,
        reference_cache_dir: str | None = None,
        disable_dropout: bool = True,
        gradient_checkpointing: bool = False,
        trust_remote_code: bool = False,
        attn_implementation: str | None = None,
        loss: PreferenceLoss | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        on_nonfinite: str = "raise",
        policy: nn.Module | None = None,
        lora: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        if on_nonfinite not in NONFINITE_POLICIES:
            raise ConfigError("model.on_nonfinite", f"got {on_nonfinite!r}; accepted: {list(NONFINITE_POLICIES)}")
        self.loss_fn = loss or PreferenceLoss()
        if precompute_reference and not self.loss_fn.needs_reference:
            raise ConfigError("model.precompute_reference", f"has no use: loss {self.loss_fn.type} needs no reference")
        if precompute_reference and self.loss_fn.kl_gamma:
            raise ConfigError("model.precompute_reference", "cannot be combined with loss.kl_gamma > 0 (needs reference logits)")
        if precompute_reference and not reference_cache_dir:
            raise ConfigError("model.reference_cache_dir", "precomputed reference log-probs need a cache directory")
        self.save_hyperparameters(ignore=["loss", "optimizer", "scheduler", "policy"])
        for key, value in list(self.hparams.items()):  # plain containers: a checkpoint holds nothing a safe load refuses
            if isinstance(value, (DictConfig, ListConfig)):
                self.hparams[key] = OmegaConf.to_container(value, resolve=True)
        self.hparams["loss"] = self.loss_fn.to_dict()
        self.optimizer_factory = optimizer or partial(torch.optim.RMSprop, lr=1e-6)
        self.scheduler_factory = scheduler or partial(warmup_schedule, warmup_steps=150)
        self.on_nonfinite = on_nonfinite
        self.precompute_reference = precompute_reference

        self.policy = (
            policy
            if policy is not None
            else load_causal_lm(name_or_path, config, dtype, disable_dropout, trust_remote_code, attn_implementation, gguf_file)
        )
        self.lora = dict(lora) if lora else None
        if self.lora:  # the policy trains LoRA adapters; the reference is the same weights with them disabled
            self.policy = apply_lora(self.policy, self.lora)
        self.policy.train()  # from_pretrained returns eval mode; Lightning trains what it is given
        reference = None
        if self.loss_fn.needs_reference and not self.lora:
            reference = frozen_copy(self.policy, resolve_dtype(reference_dtype, "model.reference_dtype"))
        if self.lora and reference_dtype is not None:
            raise ConfigError(
                "model.reference_dtype", "with LoRA the reference is the policy with its adapters disabled: it has the policy's dtype"
            )
        self._set_reference(reference)
        if gradient_checkpointing:
            self.policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.policy.config.use_cache = False

        self.train_metrics = nn.ModuleDict({_metric_key(m): MeanMetric() for m in METRICS})
        self.val_metrics = nn.ModuleDict({_metric_key(m): MeanMetric() for m in METRICS})
        self._step_loss = torch.zeros(())  # summed over the micro-batches of one optimizer step
        self._step_batch: tuple[int, torch.Tensor] | None = None  # (batch_idx, pair indices) for error messages
        self.last_val_step: int | None = None
        self._reference_precomputed = False

    # -- the frozen reference ------------------------------------------------------------------
    @property
    def reference(self) -> nn.Module | None:
        return self.__dict__["_reference"]

    @contextlib.contextmanager
    def reference_model(self, device: torch.device) -> Iterator[nn.Module]:
        """The frozen reference to compute with: the frozen copy, or (LoRA) the policy with its adapters disabled."""
        if self.lora:
            with self.policy.disable_adapter():
                yield self.policy
        else:
            yield self._reference_on(device)

    @property
    def has_reference(self) -> bool:
        return self.reference is not None or (bool(self.lora) and self.loss_fn.needs_reference)

    def plain_policy(self, state: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
        """The policy as a plain transformers model (LoRA: a merged copy), for export; with `state`
        (a full policy state dict: a sharded policy's, or a checkpoint's), a new unsharded copy holding it."""
        if state is not None:
            model = self.unsharded_policy(state)
            return model.merge_and_unload() if self.lora else model
        if is_sharded(self.policy):
            raise ValueError("a sharded policy is exported from its full state dict (full_policy_state)")
        return copy.deepcopy(self.policy).merge_and_unload() if self.lora else self.policy

    def unsharded_policy(self, state: Mapping[str, torch.Tensor]) -> nn.Module:
        """A new policy on the CPU, unsharded (LoRA: with its adapters, unmerged), holding `state`."""
        from transformers import AutoModelForCausalLM

        dtype = next(iter(state.values())).dtype if state else torch.float32
        model = AutoModelForCausalLM.from_config(unwrap(self.policy).config, dtype=dtype)
        if self.lora:
            model = apply_lora(model, self.lora)
        missing, unexpected = model.load_state_dict(dict(state), strict=False)
        missing = [k for k in missing if k not in _tied_keys(model)]
        if missing or unexpected:
            raise ValueError(f"the policy state does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        return model

    def full_policy_state(self) -> dict[str, Any]:
        """The policy's full state dict on the CPU. Sharded (trainer=fsdp): gathered, a collective
        every process enters; rank 0 gets the tensors, the others an empty dict."""
        if not is_sharded(self.policy):
            return {k: v.detach().cpu() for k, v in self.policy.state_dict().items()}
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self.policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_policy_weights(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Policy weights from a checkpoint's state dict (keys without the `policy.` prefix), in place."""
        self.policy.load_state_dict(dict(weights), strict=False)

    def _set_reference(self, reference: nn.Module | None) -> None:
        # stored in __dict__, not as a registered child: no checkpoint, optimizer or DDP involvement
        self.__dict__["_reference"] = reference

    def _reference_on(self, device: torch.device) -> nn.Module:
        reference = self.reference
        assert reference is not None  # only asked for when there is one
        if next(reference.parameters()).device != device:
            reference.to(device)
        return reference

    def configure_model(self) -> None:
        """trainer=fsdp: shard the policy and the frozen reference the same way (training/sharding.py).
        Lightning calls this before every fit, validate or test: sharding twice is a no-op."""
        shard = getattr(self.trainer.strategy, "shard", None)
        if shard is None:
            return
        shard(self.policy)
        if self.reference is not None:
            shard(self.reference)

    def setup(self, stage: str) -> None:
        # runs before a checkpoint is restored, so the policy still holds the initial weights here
        if not (self.precompute_reference and self.has_reference and stage == "fit"):
            return
        from lightning_dpo.model.reference_cache import attach_reference_logps

        datamodule = self.trainer.datamodule
        datamodule.setup("fit")
        device = self.trainer.strategy.root_device
        with self.reference_model(device) as reference:
            attach_reference_logps(
                reference,
                datamodule,
                self.hparams.reference_cache_dir,
                device,
                is_global_zero=self.trainer.is_global_zero,
                barrier=self.trainer.strategy.barrier,
            )
        self._set_reference(None)  # the point of precomputing: free its memory
        self._reference_precomputed = True  # the log-probs ride in the batches from now on

    # -- batch -> loss ---------------------------------------------------------------------------
    def compute(self, batch: Mapping[str, torch.Tensor], diagnostics: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss and the per-pair (or per-token) values behind every metric."""
        # (2n, T): rows 0..n-1 are prompt+chosen, rows n..2n-1 prompt+rejected (collate_pairs), right-padded
        ids, attn, cmask = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
        n = ids.shape[0] // 2
        prompt_targets = None
        if self.loss_fn.needs_sequence_nll:  # ORPO: also the chosen rows' prompt tokens (every attended token after the first)
            prompt_targets = attn.bool() & ~cmask.bool()
            prompt_targets[n:] = False
            prompt_targets[:, 0] = False
        policy_logps, policy_cl = sequence_logps(
            self.policy, ids, attn, cmask, prompt_targets
        )  # (2n,) summed log p(completion); logits (K, V)
        lengths = cmask.sum(1)  # (2n,) completion tokens per row
        sequence_nll = None
        if prompt_targets is not None:  # mean -log p over the chosen rows' prompt and completion tokens
            total = policy_logps[:n].sum() + policy_cl.extra_logps.sum()
            sequence_nll = -total / (lengths[:n].sum() + policy_cl.extra_logps.numel())

        ref_logps, ref_cl = None, None
        if "ref_chosen_logps" in batch:  # precomputed: (n,) + (n,) -> (2n,), chosen first like the rows
            ref_logps = torch.cat([batch["ref_chosen_logps"], batch["ref_rejected_logps"]]).to(policy_logps)
        elif self.has_reference and not self._reference_precomputed:
            with torch.no_grad(), self.reference_model(ids.device) as reference:
                ref_logps, ref_cl = sequence_logps(reference, ids, attn, cmask)

        kl_penalty = None
        policy_log_probs = ref_log_probs = None
        if ref_cl is not None and (self.loss_fn.kl_gamma or diagnostics):
            policy_log_probs = torch.log_softmax(policy_cl.logits.float(), dim=-1)  # (K, V), K completion tokens of all 2n rows
            ref_log_probs = torch.log_softmax(ref_cl.logits.float(), dim=-1)
        if self.loss_fn.kl_gamma and policy_log_probs is not None and ref_log_probs is not None:
            kl_ref_policy = _sequence_mean(per_token_kl(ref_log_probs, policy_log_probs), policy_cl, lengths)
            kl_penalty = kl_ref_policy[:n] + kl_ref_policy[n:]  # (n,) chosen + rejected

        out = self.loss_fn(
            policy_logps[:n],
            policy_logps[n:],
            None if ref_logps is None else ref_logps[:n],
            None if ref_logps is None else ref_logps[n:],
            lengths[:n],
            lengths[n:],
            kl_penalty,
            sequence_nll,
        )
        per_pair_loss = out.losses if kl_penalty is None else out.losses + self.loss_fn.kl_gamma * kl_penalty
        values = {
            "loss": per_pair_loss.detach(),
            "rewards/chosen": out.chosen_rewards,
            "rewards/rejected": out.rejected_rewards,
            "rewards/accuracies": (out.chosen_rewards > out.rejected_rewards).float(),
            "rewards/margins": out.chosen_rewards - out.rejected_rewards,
            "logps/chosen": policy_logps[:n].detach(),
            "logps/rejected": policy_logps[n:].detach(),
        }
        if diagnostics:
            with torch.no_grad():
                mean_logit = policy_cl.logits.detach().float().mean(-1)  # per completion token
                chosen_tokens = policy_cl.rows < n
                values["logits/chosen"] = mean_logit[chosen_tokens]
                values["logits/rejected"] = mean_logit[~chosen_tokens]
                if policy_log_probs is not None and ref_log_probs is not None:
                    values["kl"] = per_token_kl(policy_log_probs.detach(), ref_log_probs)
        return out.loss, values

    # -- training ----------------------------------------------------------------------------------
    def _is_logging_step(self) -> bool:
        every = self.trainer.log_every_n_steps
        return every > 0 and (self.global_step + 1) % every == 0

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logging_step = self._is_logging_step()
        loss, values = self.compute(batch, diagnostics=logging_step)
        self._step_loss = self._step_loss.to(loss.device) + loss.detach()
        self._step_batch = (batch_idx, batch["index"])  # read only if the step fails: no host sync here
        if logging_step:  # aggregated over the step's micro-batches, logged at the optimizer step
            for name, value in values.items():
                self.train_metrics[_metric_key(name)].update(value)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Check the step's loss and gradient norm; a non-finite one stops or skips the step."""
        grads = [local(p.grad) for p in self.policy.parameters() if p.grad is not None]  # trainer=fsdp: this process's shard
        norm = _total_norm(grads) if grads else torch.zeros(())
        norm = self._reduce_if_sharded(norm)
        loss, self._step_loss = self._step_loss, torch.zeros(())
        finite = torch.isfinite(torch.stack([loss.to(norm), norm]))
        if not bool(finite.all()):  # the one host sync of the step
            what = "loss" if not bool(finite[0]) else "gradient norm"
            batch_idx, index = self._step_batch or (-1, torch.zeros(0))
            pairs = index.tolist()
            message = (
                f"non-finite {what} at optimizer step {self.global_step} "
                f"(batch {batch_idx} of epoch {self.current_epoch}; pair indices {pairs[:16]})"
            )
            if self.on_nonfinite == "raise":
                raise NonFiniteError(message + "; set model.on_nonfinite=skip to skip such steps")
            log.warning("%s: skipping this optimizer step", message)
            optimizer.zero_grad(set_to_none=True)  # the optimizer then leaves every parameter as it is
        if self._is_logging_step():
            self._log_train_metrics(optimizer, norm if bool(finite.all()) else None)

    def _log_train_metrics(self, optimizer: torch.optim.Optimizer, grad_norm: torch.Tensor | None) -> None:
        """The step's train metrics, straight to the loggers under `global_step` (the updates behind
        the weights the loss was computed with). Logged here, before `on_train_batch_end`, so that
        a checkpoint written at this step already holds them (Lightning's own `self.log` would flush
        them only after the checkpoint hooks)."""
        metrics = {f"train/{name}": float(value) for name, value in self._compute_metrics(self.train_metrics).items()}
        metrics["train/lr"] = float(optimizer.param_groups[0]["lr"])
        if grad_norm is not None:
            metrics["train/grad_norm"] = float(grad_norm)
        metrics["epoch"] = float(self.current_epoch)
        for logger in self.loggers:
            logger.log_metrics(metrics, step=self.global_step)
        for name in PROGRESS_BAR:  # the progress bar only; the loggers have them already
            if f"train/{name}" in metrics:
                self.log(f"train/{name}", metrics[f"train/{name}"], prog_bar=True, logger=False, on_step=True, on_epoch=False)

    def _reduce_if_sharded(self, norm: torch.Tensor) -> torch.Tensor:
        if self._trainer is not None and is_sharded(self.policy):  # each process summed the squares of its shard
            return self.trainer.strategy.reduce(norm.pow(2), reduce_op="sum").sqrt()
        return norm

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # never replace a good checkpoint with a broken state (trainer=fsdp: every process checks its shard, all decide)
        broken = next((name for name, param in self.policy.named_parameters() if not bool(torch.isfinite(local(param)).all())), None)
        sharded = self._trainer is not None and self.trainer.world_size > 1
        if sharded and self.trainer.strategy.reduce_boolean_decision(broken is not None, all=False) and broken is None:
            broken = "(on another process)"
        if broken is not None:
            raise NonFiniteError(f"refusing to save a checkpoint at step {self.global_step}: parameter {broken} is not finite")

    # -- validation --------------------------------------------------------------------------------
    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        _, values = self.compute(batch, diagnostics=True)
        for name, value in values.items():
            self.val_metrics[_metric_key(name)].update(value)

    def on_validation_epoch_end(self) -> None:
        for name, value in self._compute_metrics(self.val_metrics).items():
            self.log(f"val/{name}", value, prog_bar=name in PROGRESS_BAR, on_step=False, on_epoch=True)
        if not self.trainer.sanity_checking:
            # Lightning would log validation under the step *before* the last update; log it under
            # the number of updates behind the weights, like the train and dynamics metrics
            self.log("step", float(self.global_step), on_step=False, on_epoch=True)
            self.last_val_step = self.global_step

    @staticmethod
    def _compute_metrics(metrics: nn.ModuleDict) -> dict[str, torch.Tensor]:
        """Each metric's mean since the last call, then reset (metrics never updated are left out)."""
        out = {}
        for name in METRICS:
            metric = metrics[_metric_key(name)]
            if metric.update_count == 0:
                continue  # e.g. kl without a live reference
            out[name] = metric.compute()
            metric.reset()
        return out

    # -- optimisation ------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:  # Lightning's optimizer-and-scheduler dict
        params = [p for p in self.policy.parameters() if p.requires_grad]
        try:
            optimizer = self.optimizer_factory(params)
        except ValueError as exc:  # torch validates lr, betas, eps, weight_decay
            raise ConfigError("optim.optimizer", str(exc)) from exc
        for group in optimizer.param_groups:
            if not group["lr"] > 0:
                raise ConfigError("optim.lr", f"must be > 0, got {group['lr']}")
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}


def _sequence_mean(per_token: torch.Tensor, cl: CompletionLogits, lengths: torch.Tensor) -> torch.Tensor:
    return per_sequence_sum(per_token, cl) / lengths.clamp(min=1).to(per_token.dtype)


def _total_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    norms = torch._foreach_norm(tensors)
    return torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))


def _tied_keys(model: nn.Module) -> set[str]:
    """State-dict keys that share their tensor with an earlier key (the LM head tied to the embeddings)."""
    seen: dict[int, str] = {}
    tied = set()
    for key, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            tied.add(key)
        seen.setdefault(id(tensor), key)
    return tied
