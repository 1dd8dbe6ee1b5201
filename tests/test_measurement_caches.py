"""What a run's start reads from the cache instead of measuring again: the probe's quality record
(its AUC checked against scikit-learn's) and the probe set's fixed continuation. Each is keyed by
everything its value depends on; an unreadable or foreign file is measured again, never trusted."""

from __future__ import annotations

import json
import random

import pytest
import torch

from helpers.models import build_tiny, tiny_gpt2_config
from lightning_dpo.neurons import probe as probe_module
from lightning_dpo.neurons.probe import Probe, auc, labelled_auc

pytestmark = pytest.mark.unit  # the unit tier: `pytest -m unit`, under a minute


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_scikit_learn_with_ties(seed):
    from sklearn.metrics import roc_auc_score

    rng = random.Random(seed)
    n = rng.randint(5, 300)
    labels = [rng.randint(0, 1) for _ in range(n)]
    labels[0], labels[1] = 0, 1  # both classes
    scores = [round(rng.gauss(0.3 * y, 1.0), 1) for y in labels]  # rounded: many ties
    assert auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auc_small_cases_by_hand():
    assert auc([0.1, 0.9], [0, 1]) == 1.0
    assert auc([0.9, 0.1], [0, 1]) == 0.0
    assert auc([0.5, 0.5, 0.5], [0, 1, 1]) == 0.5  # every pair tied: counted half
    assert auc([0.1, 0.5, 0.5], [0, 0, 1]) == 0.75  # (1 + 0.5) / 2
    with pytest.raises(ValueError, match="both labels"):
        auc([0.1, 0.2], [1, 1])


def _inputs():
    model = build_tiny(tiny_gpt2_config())
    rng = random.Random(0)
    token_ids = [[rng.randrange(96) for _ in range(rng.randint(3, 12))] for _ in range(40)]
    labels = [i % 2 for i in range(40)]
    probe = Probe(torch.randn(32, generator=torch.Generator().manual_seed(0)))
    return model, token_ids, labels, probe


def test_the_cached_auc_is_the_measured_one_and_is_read_back_without_a_forward(tmp_path, monkeypatch):
    model, token_ids, labels, probe = _inputs()
    measured = labelled_auc(model, token_ids, labels, probe, pad=0)  # no cache
    assert labelled_auc(model, token_ids, labels, probe, pad=0, cache_dir=tmp_path) == measured
    files = list((tmp_path / "probe_quality").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["auc"] == measured

    def no_forward(*args, **kwargs):
        raise AssertionError("the cached value should have been read")

    monkeypatch.setattr(probe_module, "pooled_over_ids", no_forward)
    assert labelled_auc(model, token_ids, labels, probe, pad=0, cache_dir=tmp_path) == measured


def test_anything_the_auc_depends_on_gives_a_new_cache_entry(tmp_path, monkeypatch):
    model, token_ids, labels, probe = _inputs()
    labelled_auc(model, token_ids, labels, probe, pad=0, cache_dir=tmp_path)
    other_model = build_tiny(tiny_gpt2_config())
    with torch.no_grad():
        other_model.transformer.h[0].mlp.c_proj.weight[0, 0] += 0.5  # one weight
    changes = [
        (other_model, token_ids, labels, probe),
        (model, [*token_ids[:-1], token_ids[-1] + [1]], labels, probe),  # one more token
        (model, token_ids, [1 - y for y in labels], probe),  # labels flipped
        (model, token_ids, labels, Probe(-probe.direction)),  # the direction
    ]
    for i, (m, ids, ys, p) in enumerate(changes, start=2):
        expected = labelled_auc(m, ids, ys, p, pad=0)  # measured without the cache
        assert labelled_auc(m, ids, ys, p, pad=0, cache_dir=tmp_path) == expected
        assert len(list((tmp_path / "probe_quality").glob("*.json"))) == i
    threads = torch.get_num_threads()
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads + 1)  # another thread count: another float path
    labelled_auc(model, token_ids, labels, probe, pad=0, cache_dir=tmp_path)
    assert len(list((tmp_path / "probe_quality").glob("*.json"))) == len(changes) + 2


@pytest.mark.parametrize(
    "content",
    ['{"version": 1, "auc": 1.5}', '{"version": 1, "auc": "0.9"}', '{"version": 0, "auc": 0.9}', "not json", '["auc"]'],
)
def test_an_unreadable_or_foreign_cache_file_is_measured_again_and_replaced(tmp_path, content):
    model, token_ids, labels, probe = _inputs()
    measured = labelled_auc(model, token_ids, labels, probe, pad=0, cache_dir=tmp_path)
    (path,) = (tmp_path / "probe_quality").glob("*.json")
    path.write_text(content)
    assert labelled_auc(model, token_ids, labels, probe, pad=0, cache_dir=tmp_path) == measured
    assert json.loads(path.read_text())["auc"] == measured


def _prompts() -> list[list[int]]:
    return [[(5 * i + j) % 90 + 1 for j in range(2 + i % 5)] for i in range(10)]


def test_the_cached_continuation_equals_the_decoded_one_and_is_read_back(tmp_path, monkeypatch):
    from lightning_dpo.dynamics import probe_set

    model = build_tiny(tiny_gpt2_config())
    decoded = probe_set.build_probe_tokens(model, _prompts(), 0, num_positions=6, batch_size=4, buckets=3, seed=2)  # no cache
    first = probe_set.build_probe_tokens(model, _prompts(), 0, 6, 4, buckets=3, seed=2, cache_dir=tmp_path)
    (path,) = (tmp_path / "probe_tokens").glob("*.safetensors")

    def no_decoding(*args, **kwargs):
        raise AssertionError("the cached continuation should have been read")

    monkeypatch.setattr(probe_set, "_decode_probe_tokens", no_decoding)
    again = probe_set.build_probe_tokens(model, _prompts(), 0, 6, 4, buckets=3, seed=2, cache_dir=tmp_path)
    for tokens in (first, again):
        for name in ("input_ids", "attention_mask", "positions", "bucket"):
            assert torch.equal(getattr(tokens, name), getattr(decoded, name)), name
    monkeypatch.undo()
    for args in ((_prompts()[:-1], 0, 6, 4), (_prompts(), 0, 7, 4), (_prompts(), 0, 6, 3)):  # prompts, length, batching
        probe_set.build_probe_tokens(model, *args, cache_dir=tmp_path)
    other = build_tiny(tiny_gpt2_config(), seed=1)
    probe_set.build_probe_tokens(other, _prompts(), 0, 6, 4, cache_dir=tmp_path)
    assert len(list((tmp_path / "probe_tokens").glob("*.safetensors"))) == 5
    path.write_bytes(b"not a safetensors file")  # damaged: decoded again and replaced
    assert torch.equal(probe_set.build_probe_tokens(model, _prompts(), 0, 6, 4, cache_dir=tmp_path).input_ids, decoded.input_ids)
    from safetensors.torch import load_file, save_file

    assert torch.equal(load_file(str(path))["input_ids"], decoded.input_ids)
    wrong = {k: v[:-1] for k, v in load_file(str(path)).items()}  # a row short: not this prompt set's
    save_file(wrong, str(path), metadata={"version": str(probe_set.TOKENS_CACHE_VERSION)})
    assert probe_set.build_probe_tokens(model, _prompts(), 0, 6, 4, cache_dir=tmp_path).input_ids.shape[0] == len(_prompts())


def test_a_cache_that_cannot_be_written_costs_the_measurement_and_nothing_else(tmp_path, monkeypatch, caplog):
    from lightning_dpo.dynamics import probe_set
    from lightning_dpo.utils.errors import OutputError

    def refuse(path, *args, **kwargs):
        raise OutputError(f"cannot write {path}: read-only file system")

    monkeypatch.setattr(probe_module, "atomic_write_json", refuse)
    monkeypatch.setattr(probe_set, "atomic_save_safetensors", refuse)
    model, token_ids, labels, probe = _inputs()
    with caplog.at_level("WARNING"):
        assert labelled_auc(model, token_ids, labels, probe, pad=0, cache_dir=tmp_path) == labelled_auc(
            model, token_ids, labels, probe, pad=0
        )
        tokens = probe_set.build_probe_tokens(model, _prompts(), 0, 6, 4, cache_dir=tmp_path)
    assert torch.equal(tokens.input_ids, probe_set.build_probe_tokens(model, _prompts(), 0, 6, 4).input_ids)
    assert "probe quality not cached" in caplog.text and "probe tokens not cached" in caplog.text


def test_a_model_is_hashed_once_while_its_weights_are_fixed_and_again_after(monkeypatch):
    import hashlib

    from lightning_dpo.model import fingerprint

    calls, sha256 = [], hashlib.sha256
    monkeypatch.setattr(fingerprint.hashlib, "sha256", lambda *a: calls.append(1) or sha256(*a))
    model = build_tiny(tiny_gpt2_config())
    with fingerprint.weights_fixed():
        first = fingerprint.model_fingerprint(model)
        assert fingerprint.model_fingerprint(model) == first and len(calls) == 1  # the run's start: one hash per model
    with torch.no_grad():
        model.transformer.h[0].mlp.c_proj.weight[0, 0] += 0.5
    assert fingerprint.model_fingerprint(model) != first and len(calls) == 2  # outside: every call hashes
