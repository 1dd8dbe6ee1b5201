"""LoRA adapters (peft): the reference is the base with the adapters disabled (no second copy), the
dynamics use the effective value vectors W + scale B A, hf_model/ is the merged model and adapter/ the
adapter, resume is exact, and loss and adapter gradients equal TRL's DPOTrainer with the same peft_config."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from helpers.configs import SHORT_RUN, SMALL_WORLD, compose_train
from helpers.models import GPT2_TOKENIZER, build_tiny, tiny_gpt2_config, tiny_llama_config
from lightning_dpo.model import DPOModule, PreferenceLoss

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["c_attn", "c_proj"]}


def _randomize_adapters(model: torch.nn.Module, seed: int = 3) -> None:
    """B starts at zero (the adapter changes nothing); give every adapter weight a value, seeded by name."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                g = torch.Generator().manual_seed(seed + sum(map(ord, name)))
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize(
    "config, targets",
    [(tiny_gpt2_config(), ["c_attn", "c_proj"]), (tiny_llama_config(), ["q_proj", "o_proj", "down_proj"])],
    ids=["gpt2", "llama"],
)
def test_snapshot_value_projections_equal_the_merged_weights(config, targets):
    from lightning_dpo.dynamics.measure import measure
    from lightning_dpo.dynamics.probe_set import build_probe_tokens

    module = DPOModule(policy=build_tiny(config), loss=PreferenceLoss(), lora={**LORA, "target_modules": targets})
    _randomize_adapters(module.policy)
    merged = module.plain_policy().eval()
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16]]
    tokens = build_probe_tokens(merged, prompts, pad_token_id=0, num_positions=3, buckets=2)
    u = torch.nn.functional.normalize(torch.randn(32, generator=torch.Generator().manual_seed(0)), dim=0)
    adapted = measure(module.policy.eval(), tokens, {"p": u}, 0, n_buckets=2)
    plain = measure(merged, tokens, {"p": u}, 0, n_buckets=2)
    assert torch.allclose(adapted.projections, plain.projections, atol=1e-5)  # W + scale B A, not W
    assert torch.allclose(adapted.mean_activation, plain.mean_activation, atol=1e-5)
    assert torch.allclose(adapted.component_means("p").residual, plain.component_means("p").residual, atol=1e-5)
    with module.policy.disable_adapter():  # the reference: the base weights
        base = measure(module.policy, tokens, {"p": u}, 0, n_buckets=2)
    assert not torch.allclose(base.projections, adapted.projections, atol=1e-4)


def test_the_reference_is_the_base_without_a_second_copy():
    module = DPOModule(policy=build_tiny(tiny_gpt2_config()), loss=PreferenceLoss(), lora=LORA)
    assert module.reference is None and module.has_reference
    trainable = [n for n, p in module.policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    ids = torch.randint(1, 90, (4, 10))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": torch.zeros_like(ids, dtype=torch.bool)}
    batch["completion_mask"][:, 6:] = True
    loss, values = module.compute(batch, diagnostics=True)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)  # B = 0 at the start: policy = reference
    assert float(values["kl"].abs().max()) < 1e-6


def test_lora_loss_and_adapter_gradients_equal_trl(tmp_path):
    """TRL's DPOTrainer with the same peft_config on identical ids: loss, rewards and every adapter's gradient."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel
    from trl import DPOConfig, DPOTrainer

    rows = [
        {"prompt": "Tell me about cats", "chosen": " cats are calm and kind", "rejected": " cats are awful"},
        {"prompt": "The weather today", "chosen": " is mild", "rejected": " is a disaster, a total mess"},
    ]
    tokenizer = AutoTokenizer.from_pretrained(GPT2_TOKENIZER)
    tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=4, n_inner=64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0
    )
    state = GPT2LMHeadModel(config).state_dict()

    def base():
        model = GPT2LMHeadModel(config)
        model.load_state_dict(state)
        return model

    peft_config = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True, task_type="CAUSAL_LM"
    )
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=len(rows), report_to=[], use_cpu=True, bf16=False, beta=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = DPOTrainer(
            model=base(), args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer, peft_config=peft_config
        )
    module = DPOModule(policy=base(), loss=PreferenceLoss(beta=0.1), lora={**LORA})
    _randomize_adapters(module.policy)
    ours = {n: p for n, p in module.policy.named_parameters() if "lora_" in n}
    theirs = {n: p for n, p in trainer.model.named_parameters() if "lora_" in n}
    assert ours.keys() == theirs.keys()
    with torch.no_grad():
        for name, p in theirs.items():
            p.copy_(ours[name])
    trainer.model.train()
    batch = next(iter(trainer.get_train_dataloader()))
    their_loss = trainer.compute_loss(trainer.model, batch)
    their_loss.backward()
    our_loss, values = module.compute({k: batch[k] for k in ("input_ids", "attention_mask", "completion_mask")}, diagnostics=False)
    our_loss.backward()
    assert our_loss.item() == pytest.approx(their_loss.item(), rel=1e-4, abs=1e-6)
    metrics = trainer._metrics["train"]
    assert values["rewards/margins"].mean().item() == pytest.approx(metrics["rewards/margins"][-1], rel=1e-4, abs=1e-6)
    scale = max(p.grad.abs().max().item() for p in theirs.values())
    for name, p in theirs.items():
        torch.testing.assert_close(ours[name].grad, p.grad, rtol=1e-3, atol=1e-4 * scale, msg=name)


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory, small_world):
    from omegaconf import OmegaConf

    from helpers.signals import SignalAt  # noqa: F401  (referenced by _target_)
    from lightning_dpo.train import train
    from lightning_dpo.utils.errors import RunInterrupted

    root = tmp_path_factory.mktemp("lora")
    overrides = SMALL_WORLD + SHORT_RUN + ["+model.lora={r: 4, alpha: 8, dropout: 0.0, target_modules: [c_attn, c_proj]}", "optim.lr=0.01"]
    train(compose_train(overrides, root / "straight"))
    cfg = compose_train(overrides, root / "resumed")
    cfg.callbacks = {"signal_at": {"_target_": "helpers.signals.SignalAt", "step": 3}, **OmegaConf.to_container(cfg.callbacks)}
    with pytest.raises(RunInterrupted):
        train(cfg)
    train(compose_train(overrides + ["ckpt_path=last"], root / "resumed"))
    return root


def test_a_lora_run_trains_the_adapters_only_and_exports_both(lora_runs, small_world):
    from transformers import AutoModelForCausalLM

    run = lora_runs / "straight"
    base = AutoModelForCausalLM.from_pretrained(small_world.base_model)
    merged = AutoModelForCausalLM.from_pretrained(run / "hf_model")
    assert (run / "adapter" / "adapter_config.json").is_file() and json.loads((run / "adapter" / "adapter_config.json").read_text())[
        "r"
    ] == 4
    assert not (run / "hf_model" / "adapter_config.json").exists()  # a plain model
    b, m = base.state_dict(), merged.state_dict()
    changed = [k for k in b if not torch.equal(b[k], m[k])]
    assert changed and all(k.endswith(("c_attn.weight", "c_proj.weight")) for k in changed)  # only the adapted layers moved
    assert torch.equal(b["transformer.wte.weight"], m["transformer.wte.weight"])


def test_a_lora_run_resumes_byte_identically(lora_runs):
    for name in ("metrics.csv", "dynamics/groups.csv", "dynamics/components.csv", "dynamics/null.csv", "toxicity_eval.csv"):
        assert (lora_runs / "straight" / name).read_bytes() == (lora_runs / "resumed" / name).read_bytes(), name
    a = torch.load(lora_runs / "straight" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(lora_runs / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
