"""Every loss type against TRL 1.16 itself: same weights, same token ids, same batch.

TRL's DPOTrainer (and its CPO/ORPO trainers for simpo/orpo) builds the batch from a tiny
dataset; the very same tensors go through `DPOModule.compute`. Loss, the logged rewards and the
gradient of every policy parameter must agree within float tolerance.
"""

from __future__ import annotations

import copy
import os
import warnings

import pytest
import torch
import trl  # in the dev extra

from helpers.models import GPT2_TOKENIZER
from lightning_dpo.model import DPOModule, PreferenceLoss
from lightning_dpo.model.loading import frozen_copy

assert trl.__version__.startswith("1.16."), f"this table is checked against TRL 1.16, found {trl.__version__}"

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

ROWS = [
    {"prompt": "Tell me about cats", "chosen": " cats are calm and kind to people", "rejected": " cats are awful"},
    {"prompt": "The weather today", "chosen": " is mild", "rejected": " is a disaster, a total and utter mess"},
    {"prompt": "Write about the sea and", "chosen": " the waves roll in", "rejected": " the sea is boring"},
    {"prompt": "My neighbour", "chosen": " waters the plants every morning", "rejected": " is rude"},
]
DPO_CASES = [
    ({"loss_type": ["sigmoid"]}, {"type": "sigmoid"}),
    ({"loss_type": ["hinge"]}, {"type": "hinge"}),
    ({"loss_type": ["ipo"]}, {"type": "ipo"}),
    ({"loss_type": ["exo_pair"], "label_smoothing": 0.01}, {"type": "exo_pair", "label_smoothing": 0.01}),
    ({"loss_type": ["nca_pair"]}, {"type": "nca_pair"}),
    ({"loss_type": ["robust"], "label_smoothing": 0.2}, {"type": "robust", "label_smoothing": 0.2}),
    ({"loss_type": ["bco_pair"]}, {"type": "bco_pair"}),
    ({"loss_type": ["sppo_hard"]}, {"type": "sppo_hard"}),
    ({"loss_type": ["aot"], "label_smoothing": 0.1}, {"type": "aot", "label_smoothing": 0.1}),
    ({"loss_type": ["aot_unpaired"]}, {"type": "aot_unpaired"}),
    ({"loss_type": ["apo_zero"]}, {"type": "apo_zero"}),
    ({"loss_type": ["apo_down"]}, {"type": "apo_down"}),
    ({"loss_type": ["discopop"], "discopop_tau": 0.3}, {"type": "discopop", "discopop_tau": 0.3}),
    ({"loss_type": ["sft"]}, {"type": "sft"}),
    ({"loss_type": ["sigmoid_norm"]}, {"type": "sigmoid_norm"}),
    (
        {"loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0]},
        {"type": ["sigmoid", "bco_pair", "sft"], "weights": [0.8, 0.2, 1.0]},
    ),  # MPO
    ({"loss_type": ["sigmoid"], "f_divergence_type": "forward_kl"}, {"type": "sigmoid", "f_divergence": "forward_kl"}),
    ({"loss_type": ["hinge"], "f_divergence_type": "js_divergence"}, {"type": "hinge", "f_divergence": "js_divergence"}),
    (
        {"loss_type": ["ipo", "sft"], "f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.3},
        {"type": ["ipo", "sft"], "f_divergence": "alpha_divergence", "f_alpha": 0.3},
    ),
]


def _case_id(case) -> str:
    if "loss_type" not in case:
        return ""
    return "+".join(case["loss_type"]) + ("-" + case["f_divergence_type"] if "f_divergence_type" in case else "")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(GPT2_TOKENIZER)
    tok.pad_token = tok.eos_token
    return tok


@pytest.fixture(scope="module")
def weights():
    """(policy, reference) state dicts of a tiny GPT-2: the policy moved away from the reference."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=4, n_inner=64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0
    )
    reference = GPT2LMHeadModel(config)
    policy = copy.deepcopy(reference)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.5 * torch.randn_like(p) * p.std().clamp(min=0.02))
    return config, policy.state_dict(), reference.state_dict()


def _model(weights, which: int):
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel(weights[0])
    model.load_state_dict(weights[which])
    return model.train()


def _ours(weights, loss_kwargs: dict) -> DPOModule:
    loss = PreferenceLoss(beta=0.1, **loss_kwargs)
    module = DPOModule(policy=_model(weights, 1), loss=loss)
    if loss.needs_reference:
        module._set_reference(frozen_copy(_model(weights, 2)))
    return module


def _trainer(cls, config_cls, args: dict, weights, tokenizer, tmp_path, with_reference: bool):
    from datasets import Dataset

    config = config_cls(
        output_dir=str(tmp_path), per_device_train_batch_size=len(ROWS), report_to=[], use_cpu=True, bf16=False, beta=0.1, **args
    )
    kwargs = {"ref_model": _model(weights, 2)} if with_reference else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = cls(model=_model(weights, 1), args=config, train_dataset=Dataset.from_list(ROWS), processing_class=tokenizer, **kwargs)
    trainer.model.train()
    return trainer


def _compare_gradients(theirs: torch.nn.Module, ours: torch.nn.Module) -> None:
    their_grads = {n: p.grad for n, p in theirs.named_parameters() if p.grad is not None}
    our_grads = {n: p.grad for n, p in ours.named_parameters() if p.grad is not None}
    assert our_grads.keys() == their_grads.keys() and our_grads
    scale = max(g.abs().max().item() for g in their_grads.values())
    assert scale > 0
    for name, grad in their_grads.items():
        torch.testing.assert_close(our_grads[name], grad, rtol=1e-3, atol=1e-4 * scale, msg=name)


def _compare_rewards(metrics: dict, values: dict, prefix: str = "") -> None:
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        theirs = metrics[prefix + key]
        theirs = theirs[-1] if isinstance(theirs, list) else theirs
        assert values[key].float().mean().item() == pytest.approx(theirs, rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("trl_args, our_args", DPO_CASES, ids=_case_id)
def test_dpo_trainer_losses_equal_trl(trl_args, our_args, weights, tokenizer, tmp_path):
    from trl import DPOConfig, DPOTrainer

    trainer = _trainer(DPOTrainer, DPOConfig, trl_args, weights, tokenizer, tmp_path, with_reference=True)
    batch = next(iter(trainer.get_train_dataloader()))
    their_loss = trainer.compute_loss(trainer.model, batch)
    their_loss.backward()

    module = _ours(weights, our_args)
    ours = {k: batch[k] for k in ("input_ids", "attention_mask", "completion_mask")}
    our_loss, values = module.compute(ours, diagnostics=False)
    our_loss.backward()

    assert our_loss.item() == pytest.approx(their_loss.item(), rel=1e-4, abs=1e-6)
    _compare_rewards(trainer._metrics["train"], values)
    _compare_gradients(trainer.model, module.policy)


def _concatenated(trainer, batch, padding_value) -> dict[str, torch.Tensor]:
    """TRL's CPO/ORPO concatenated batch in our layout (chosen rows first, completion mask from the labels)."""
    cat = trainer.concatenated_inputs(batch, is_encoder_decoder=False, padding_value=padding_value, device="cpu")
    return {
        "input_ids": cat["concatenated_input_ids"],
        "attention_mask": cat["concatenated_attention_mask"],
        "completion_mask": (cat["concatenated_labels"] != -100).long(),  # TRL pads labels (and masks prompts) with -100
    }


def _assert_reference_free_loss_equals_trl(trainer, padding_value: int, weights, loss: dict) -> None:
    """One batch of a TRL reference-free trainer (CPO/ORPO) against our module with `loss`: loss,
    logged rewards and every parameter's gradient."""
    batch = next(iter(trainer.get_train_dataloader()))
    their_loss, metrics = trainer.get_batch_loss_metrics(trainer.model, batch)
    their_loss.backward()

    module = _ours(weights, loss)
    assert module.reference is None
    our_loss, values = module.compute(_concatenated(trainer, batch, padding_value), diagnostics=False)
    our_loss.backward()

    assert our_loss.item() == pytest.approx(their_loss.item(), rel=1e-4, abs=1e-6)
    _compare_rewards(metrics, values)
    _compare_gradients(trainer.model, module.policy)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_simpo_equals_trl_cpo_trainer(label_smoothing, weights, tokenizer, tmp_path):
    """SimPO = TRL's CPOTrainer with loss_type=simpo and cpo_alpha=0 (no behaviour-cloning term)."""
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    args = {"loss_type": "simpo", "cpo_alpha": 0.0, "simpo_gamma": 0.7, "label_smoothing": label_smoothing}
    trainer = _trainer(CPOTrainer, CPOConfig, args, weights, tokenizer, tmp_path, with_reference=False)
    _assert_reference_free_loss_equals_trl(
        trainer, trainer.pad_token_id, weights, {"type": "simpo", "simpo_gamma": 0.7, "label_smoothing": label_smoothing}
    )


def test_orpo_equals_trl_orpo_trainer(weights, tokenizer, tmp_path):
    """ORPO = TRL's ORPOTrainer: NLL over the chosen prompt+completion minus beta * log sigma(log odds ratio)."""
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    trainer = _trainer(ORPOTrainer, ORPOConfig, {}, weights, tokenizer, tmp_path, with_reference=False)
    _assert_reference_free_loss_equals_trl(trainer, trainer.padding_value, weights, {"type": "orpo"})


def test_bco_pair_keeps_no_state_across_steps_like_trl(weights, tokenizer, tmp_path):
    """Older TRL versions kept a running reward mean for bco_pair; 1.16 keeps none. Three SGD steps
    in both, each loss and gradient compared, so state carried by either side would show."""
    from trl import DPOConfig, DPOTrainer

    trainer = _trainer(DPOTrainer, DPOConfig, {"loss_type": ["bco_pair"]}, weights, tokenizer, tmp_path, with_reference=True)
    batch = next(iter(trainer.get_train_dataloader()))
    ours_batch = {k: batch[k] for k in ("input_ids", "attention_mask", "completion_mask")}
    module = _ours(weights, {"type": "bco_pair"})
    their_opt = torch.optim.SGD(trainer.model.parameters(), lr=1.0)
    our_opt = torch.optim.SGD(module.policy.parameters(), lr=1.0)
    losses = []
    for _ in range(3):
        their_opt.zero_grad()
        our_opt.zero_grad()
        their_loss = trainer.compute_loss(trainer.model, batch)
        their_loss.backward()
        our_loss, values = module.compute(ours_batch, diagnostics=False)
        our_loss.backward()
        assert our_loss.item() == pytest.approx(their_loss.item(), rel=1e-4, abs=1e-6)
        _compare_rewards(trainer._metrics["train"], values)
        _compare_gradients(trainer.model, module.policy)
        losses.append(our_loss.item())
        their_opt.step()
        our_opt.step()
    assert losses[0] != losses[1] != losses[2]  # the steps moved the weights, so each step was a new comparison
