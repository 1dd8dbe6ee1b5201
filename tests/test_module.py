"""DPOModule: step-0 invariants, gradient accumulation, reference handling, model loading."""

import math
from functools import partial

import lightning as L
import pytest
import torch

from helpers.data import write_pairs
from helpers.models import build_tiny, tiny_gpt2_config
from lightning_dpo.data import PreferenceDataModule
from lightning_dpo.model import DPOModule, PreferenceLoss
from lightning_dpo.model.loading import ModelLoadError, load_causal_lm, load_tokenizer
from lightning_dpo.model.schedules import warmup_schedule

pytestmark = pytest.mark.unit  # the unit tier: `pytest -m unit`, under a minute


def make_module(loss=None, lr=0.1, seed=0, **kwargs):
    return DPOModule(
        policy=build_tiny(tiny_gpt2_config(), seed=seed),
        loss=loss or PreferenceLoss(beta=0.1),
        optimizer=partial(torch.optim.SGD, lr=lr),
        scheduler=partial(warmup_schedule, warmup_steps=0),
        **kwargs,
    )


def make_data(tmp_path, tokenizer, batch_size=4, n=40, **kwargs):
    dm = PreferenceDataModule(
        tokenizer=tokenizer, path=str(write_pairs(tmp_path / "pairs.jsonl", n)), val_size=8, batch_size=batch_size, seed=1, **kwargs
    )
    dm.setup("fit")
    return dm


def trainer(**kwargs):
    defaults = dict(
        accelerator="cpu",
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,
        enable_model_summary=False,
    )
    defaults.update(kwargs)
    return L.Trainer(**defaults)


def test_step0_loss_is_exactly_ln2_and_rewards_are_zero(tmp_path, char_tokenizer):
    module = make_module()
    dm = make_data(tmp_path, char_tokenizer)
    batch = next(iter(dm.train_dataloader()))
    loss, values = module.compute(batch, diagnostics=True)
    assert loss.item() == torch.tensor(math.log(2)).item()
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert torch.equal(values[key], torch.zeros_like(values[key]))
    assert torch.equal(values["kl"], torch.zeros_like(values["kl"]))
    assert values["rewards/accuracies"].sum() == 0  # a tie is not a win


def test_reference_is_frozen_outside_optimizer_and_checkpoint():
    module = make_module()
    ref = module.reference
    assert all(not p.requires_grad for p in ref.parameters()) and not ref.training
    assert not any(n.startswith("reference") for n, _ in module.named_parameters())
    assert not any(k.startswith("reference") for k in module.state_dict())
    optimizer = module.configure_optimizers()["optimizer"]
    optimized = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not optimized & {id(p) for p in ref.parameters()}
    assert all(torch.equal(a, b) for a, b in zip(ref.parameters(), module.policy.parameters()))


def test_reference_dtype_and_reference_free():
    assert next(make_module(reference_dtype="float16").reference.parameters()).dtype == torch.float16
    assert make_module(loss=PreferenceLoss(reference_free=True)).reference is None


def test_gradient_accumulation_equals_the_large_batch(tmp_path, char_tokenizer):
    weights = []
    for batch_size, accumulate in ((8, 1), (4, 2)):
        L.seed_everything(0)
        module = make_module()
        dm = make_data(tmp_path, char_tokenizer, batch_size=batch_size)
        trainer(max_steps=3, accumulate_grad_batches=accumulate).fit(module, datamodule=dm)
        weights.append({k: v.clone() for k, v in module.policy.state_dict().items()})
    for key in weights[0]:
        assert torch.allclose(weights[0][key], weights[1][key], atol=1e-6), key


def test_training_reduces_the_loss(tmp_path, char_tokenizer):
    module = make_module(lr=0.5)
    dm = make_data(tmp_path, char_tokenizer)
    batch = next(iter(dm.val_dataloader()))
    before = module.compute(batch, diagnostics=False)[0].item()
    trainer(max_steps=20).fit(module, datamodule=dm)
    after = module.compute(batch, diagnostics=False)[0].item()
    assert after < before - 0.05


def test_precomputed_reference_logps_equal_the_live_reference(tmp_path, char_tokenizer):
    from lightning_dpo.model.logprobs import sequence_logps

    dm = make_data(tmp_path, char_tokenizer)
    module = make_module(precompute_reference=True, reference_cache_dir=str(tmp_path / "cache"))
    live = module.reference
    trainer(max_steps=1).fit(module, datamodule=dm)
    assert module.reference is None  # dropped from memory once the log-probs are cached
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1
    for dataset in (dm.train_dataset, dm.val_dataset):
        batch = dm._collate()([dataset[i] for i in range(len(dataset))])
        with torch.no_grad():
            logps, _ = sequence_logps(live, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        n = len(dataset)
        assert torch.allclose(batch["ref_chosen_logps"], logps[:n], atol=1e-5)
        assert torch.allclose(batch["ref_rejected_logps"], logps[n:], atol=1e-5)


def test_reference_cache_is_invalidated_by_data_or_model_changes(tmp_path, char_tokenizer):
    from lightning_dpo.model.fingerprint import model_fingerprint
    from lightning_dpo.model.reference_cache import data_fingerprint

    (tmp_path / "a").mkdir()
    dm_a = make_data(tmp_path / "a", char_tokenizer)
    dm_b = PreferenceDataModule(tokenizer=char_tokenizer, path=str(write_pairs(tmp_path / "b.jsonl", 40, seed=5)), val_size=8, seed=1)
    dm_b.setup("fit")
    assert data_fingerprint(dm_a.train_dataset, dm_a.val_dataset) != data_fingerprint(dm_b.train_dataset, dm_b.val_dataset)
    model = build_tiny(tiny_gpt2_config())
    before = model_fingerprint(model)
    assert model_fingerprint(build_tiny(tiny_gpt2_config())) == before  # same weights, same key
    with torch.no_grad():
        next(model.parameters()).view(-1)[5] += 1e-3
    assert model_fingerprint(model) != before
    swapped = build_tiny(tiny_gpt2_config())
    with torch.no_grad():  # two neurons' value vectors swapped: same sums, same edges, another model
        w = swapped.transformer.h[0].mlp.c_proj.weight
        w[[3, 5]] = w[[5, 3]].clone()
    assert model_fingerprint(swapped) != before


def test_loading_a_hub_id_path_from_a_saved_folder(tmp_path):
    from lightning_dpo.toy.world import train_tokenizer

    model = build_tiny(tiny_gpt2_config())
    model.save_pretrained(tmp_path / "model")
    train_tokenizer(["hello world, this is a tiny corpus"] * 20, 300).save_pretrained(tmp_path / "model")
    loaded = load_causal_lm(str(tmp_path / "model"))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    tokenizer = load_tokenizer(str(tmp_path / "model"))
    assert tokenizer.pad_token_id is not None


def test_unreachable_hub_id_fails_with_a_hint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no retries: the hub counts as unreachable at once
    with pytest.raises(ModelLoadError, match="model.name_or_path=/path/to/folder"):
        load_causal_lm("some-org/no-such-model-here")


def test_kl_metric_and_kl_penalty_against_an_independent_computation(tmp_path, char_tokenizer):
    """train/kl = mean per-token KL(policy || reference) on completions; the kl_gamma penalty adds
    kl_gamma x (mean over completion tokens of KL(reference || policy), chosen + rejected)."""
    module = make_module(loss=PreferenceLoss(beta=0.1, kl_gamma=0.5))
    with torch.no_grad():  # move the policy away from the reference
        for p in module.policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    dm = make_data(tmp_path, char_tokenizer)
    batch = next(iter(dm.train_dataloader()))
    loss, values = module.compute(batch, diagnostics=True)
    ids, attn, cmask = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    with torch.no_grad():
        lp = torch.log_softmax(module.policy(input_ids=ids, attention_mask=attn).logits.double(), -1)
        lq = torch.log_softmax(module.reference(input_ids=ids, attention_mask=attn).logits.double(), -1)
    kl_pq, per_seq_qp = [], []
    for row in range(ids.shape[0]):
        positions = [t - 1 for t in range(ids.shape[1]) if cmask[row, t]]  # positions predicting completion tokens
        kl_pq += [float((lp[row, t].exp() * (lp[row, t] - lq[row, t])).sum()) for t in positions]
        per_seq_qp.append(sum(float((lq[row, t].exp() * (lq[row, t] - lp[row, t])).sum()) for t in positions) / len(positions))
    assert values["kl"].mean().item() == pytest.approx(sum(kl_pq) / len(kl_pq), rel=1e-4)
    n = ids.shape[0] // 2
    penalty = torch.tensor(per_seq_qp[:n]) + torch.tensor(per_seq_qp[n:])
    assert loss.item() == pytest.approx(values["loss"].mean().item(), rel=1e-6)
    assert (values["loss"] - penalty.float() * 0.5).mean().item() == pytest.approx(
        PreferenceLoss(beta=0.1)(*_logps(module, batch)).loss.item(), rel=1e-4
    )


def _logps(module, batch):
    from lightning_dpo.model.logprobs import sequence_logps

    ids, attn, cmask = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    with torch.no_grad():
        pol, _ = sequence_logps(module.policy, ids, attn, cmask)
        ref, _ = sequence_logps(module.reference, ids, attn, cmask)
    n = ids.shape[0] // 2
    lengths = cmask.sum(1)
    return pol[:n], pol[n:], ref[:n], ref[n:], lengths[:n], lengths[n:]


def test_warmup_then_constant_or_cosine():
    from lightning_dpo.model.schedules import warmup_factor

    assert [warmup_factor(s, 3, "constant", None, 0.0) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cosine = [warmup_factor(s, 2, "cosine", 12, 0.0) for s in range(13)]
    assert cosine[:2] == [1 / 3, 2 / 3] and cosine[2] == 1.0 and cosine[7] == pytest.approx(0.5) and cosine[12] == pytest.approx(0.0)


def test_gradient_checkpointing_changes_nothing_but_memory(tmp_path, char_tokenizer):
    dm = make_data(tmp_path, char_tokenizer)
    batch = next(iter(dm.train_dataloader()))
    grads = []
    for checkpointing in (False, True):
        module = make_module(gradient_checkpointing=checkpointing)
        module.train()
        loss, _ = module.compute(batch, diagnostics=False)
        loss.backward()
        grads.append([p.grad.clone() for p in module.policy.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


def test_precomputed_reference_logps_are_reused_from_the_cache(tmp_path, char_tokenizer, monkeypatch):
    import lightning_dpo.model.reference_cache as rc

    dm = make_data(tmp_path, char_tokenizer)
    trainer(max_steps=1).fit(make_module(precompute_reference=True, reference_cache_dir=str(tmp_path / "cache")), datamodule=dm)
    monkeypatch.setattr(rc, "compute_reference_logps", lambda *a, **k: pytest.fail("recomputed"))
    dm = make_data(tmp_path, char_tokenizer)  # e.g. a resumed run: same data, same initial weights
    trainer(max_steps=1).fit(make_module(precompute_reference=True, reference_cache_dir=str(tmp_path / "cache")), datamodule=dm)


def test_validation_split_by_fraction_and_hub_style_dataset_folder(tmp_path, char_tokenizer):
    dm = PreferenceDataModule(tokenizer=char_tokenizer, path=str(write_pairs(tmp_path / "p.jsonl", 40)), val_size=0.25)
    dm.setup("fit")
    assert (len(dm.train_dataset), len(dm.val_dataset)) == (30, 10)
    folder = tmp_path / "hub_dataset"  # `datasets.load_dataset(<id>)` reads a local folder the same way
    folder.mkdir()
    write_pairs(folder / "train.jsonl", 12)
    dm = PreferenceDataModule(tokenizer=char_tokenizer, hub_id=str(folder), val_size=2)
    dm.setup("fit")
    assert len(dm.train_dataset) == 10
