"""The path a researcher takes: their own model, pairs, probe and prompts (nothing of the demo world),
and the paper preset rehearsed offline with the real GPT-2 tokenizer and files shaped like the authors'."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from helpers.configs import compose_train
from helpers.models import GPT2_TOKENIZER
from lightning_dpo.train import train
from lightning_dpo.utils.errors import ConfigError

WORDS = [
    "the",
    "a",
    "of",
    "people",
    "market",
    "friends",
    "said",
    "that",
    "were",
    "kind",
    "and",
    "honest",
    "every",
    "day",
    "went",
    "to",
    "school",
    "with",
    "us",
]


def _sentence(rng: random.Random, n: int) -> str:
    return " " + " ".join(rng.choice(WORDS) for _ in range(n))


def lee_pairs(path: Path, n: int = 100, flipped: int = 8, seed: int = 0) -> Path:
    """Lee et al.'s released format: prompt_text, unpert_gen_text (chosen), pert_gen_text (rejected);
    every fifth prompt is over 64 tokens; the last `flipped` rows prefer what the others reject, so
    that a validation set made of them gets worse as training learns (early stopping then acts)."""
    rng = random.Random(seed)
    with open(path, "w") as handle:
        for i in range(n):
            prompt = f"Row {i}:" + _sentence(rng, 80 if i % 5 == 0 else 8)
            polite, rude = _sentence(rng, 6), " you idiot" + _sentence(rng, 4)
            chosen, rejected = (rude, polite) if i >= n - flipped else (polite, rude)
            handle.write(json.dumps({"prompt_text": prompt, "unpert_gen_text": chosen, "pert_gen_text": rejected}) + "\n")
    return path


def rtp_prompts(path: Path, n: int = 20) -> Path:
    """RealToxicityPrompts rows: the text nested under prompt.text, a challenging flag (12 of 20 here)."""
    rng = random.Random(1)
    with open(path, "w") as handle:
        for i in range(n):
            handle.write(
                json.dumps(
                    {
                        "filename": f"{i}.txt",
                        "challenging": i % 5 < 3,
                        "prompt": {"text": f"Prompt {i}" + _sentence(rng, 6), "toxicity": 0.1},
                    }
                )
                + "\n"
            )
    return path


def tiny_gpt2_on_the_real_tokenizer() -> str:
    config = {"model_type": "gpt2", "vocab_size": 50257, "n_positions": 256, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_inner": 64}
    return json.dumps(config).replace('"', "")


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("LIGHTNING_DPO_CACHE", str(cache))
    return cache


def test_the_paper_preset_rehearsed_offline(tmp_path, empty_cache):
    from transformers import AutoTokenizer

    pairs, prompts = lee_pairs(tmp_path / "toxicity_pairwise.jsonl"), rtp_prompts(tmp_path / "challenge_prompts.jsonl")
    torch.save(torch.randn(1, 32), tmp_path / "probe.pt")  # Lee et al.'s probe.pt shape: (1, d_model)
    run_dir = tmp_path / "run"
    cfg = compose_train(
        [
            "experiment=toxicity_gpt2_medium",
            f"data.path={pairs}",
            f"probe.path={tmp_path / 'probe.pt'}",
            # offline stand-ins: a tiny GPT-2 on the real tokenizer, a local RTP-shaped file, an offline scorer, a CPU
            "model.name_or_path=null",
            f"model.config={tiny_gpt2_on_the_real_tokenizer()}",
            f"model.tokenizer={GPT2_TOKENIZER}",
            f"prompts.source={prompts}",
            "scorer=profanity_check",
            "callbacks.toxicity_eval.perplexity_text=null",
            "trainer.accelerator=cpu",
            # a run short enough for a test, validated on the 8 contradicting rows: val/loss rises and early stopping acts
            "trainer.max_steps=60",
            "trainer.val_check_interval=2",
            "callbacks.early_stopping.patience=2",
            "optim.lr=0.01",
            "optim.warmup_steps=0",
            "data.val_size=8",
        ],
        run_dir,
    )
    # what the preset promises, read from the composed config
    assert (cfg.data.format, cfg.data.prompt_truncation, cfg.data.append_eos, cfg.data.shuffle, cfg.data.val_split) == (
        "lee",
        "keep_start",
        False,
        False,
        "last",
    )
    assert cfg.callbacks.neuron_dynamics.max_prompts is None and cfg.callbacks.neuron_dynamics.positions == "generate"
    assert (
        cfg.callbacks.early_stopping.monitor == "val/loss"
        and compose_train(["experiment=toxicity_gpt2_medium"]).callbacks.early_stopping.patience == 30
    )
    train(cfg)

    # Lee's truncation: prompts keep their first 64 tokens, no EOS after a completion, the last 64 rows validate
    from lightning_dpo.utils.config import build

    tokenizer = AutoTokenizer.from_pretrained(GPT2_TOKENIZER)
    tokenizer.pad_token = tokenizer.eos_token
    data = build(compose_train(["experiment=toxicity_gpt2_medium", f"data.path={pairs}"], run_dir).data, "data", tokenizer=tokenizer)
    data.setup("fit")
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    assert [r.line for r in data.val_records] == list(range(37, 101))
    first = data.train_dataset.pairs[0]
    assert (
        first.prompt_ids == tokenizer(rows[0]["prompt_text"])["input_ids"][:64] and len(tokenizer(rows[0]["prompt_text"])["input_ids"]) > 64
    )
    assert first.chosen_ids == tokenizer(rows[0]["unpert_gen_text"])["input_ids"] and tokenizer.eos_token_id not in first.chosen_ids

    # all challenging prompts probed, each model's own continuation, early stopping, the best model exported
    meta = json.loads((run_dir / "dynamics" / "meta.json").read_text())
    assert meta["num_prompts"] == 12 and meta["positions"] == "generate" and not (run_dir / "dynamics" / "tokens.safetensors").exists()
    status = json.loads((run_dir / "status.json").read_text())
    best = json.loads((run_dir / "hf_model_best" / "lightning_dpo.json").read_text())
    assert status["status"] == "completed" and status["step"] < 60  # stopped early
    assert best["monitor"] == "val/loss" and best["step"] < status["step"] and (run_dir / "hf_model" / "config.json").exists()
    eval_meta = json.loads((run_dir / "eval" / "meta.json").read_text())
    assert eval_meta["scorer"] == "profanity_check (crude proxy)" and "12 prompts" in eval_meta["prompts"]
    assert eval_meta["perplexity_text"].startswith("the validation pairs' prompts (8 prompts")
    assert not any(empty_cache.iterdir())  # nothing of the demo world was built or read


def test_a_run_on_your_own_model_pairs_probe_and_prompts_builds_no_demo_world(tmp_path, empty_cache):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "my_model"
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=128, n_embd=32, n_layer=2, n_head=4, n_inner=64)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(GPT2_TOKENIZER).save_pretrained(folder)
    rng = random.Random(2)
    with open(tmp_path / "pairs.jsonl", "w") as handle:
        for i in range(40):
            handle.write(
                json.dumps(
                    {"prompt": f"Item {i}:" + _sentence(rng, 6), "chosen": _sentence(rng, 5), "rejected": " idiot" + _sentence(rng, 4)}
                )
                + "\n"
            )
    (tmp_path / "prompts.txt").write_text("".join(f"Tell me about {w}\n" for w in WORDS[:10]))
    torch.save(torch.randn(32), tmp_path / "probe.pt")
    run_dir = tmp_path / "run"
    train(
        compose_train(
            [
                "experiment=none",
                "model=hf",
                f"model.name_or_path={folder}",
                "data=jsonl",
                f"data.path={tmp_path / 'pairs.jsonl'}",
                "data.val_size=8",
                f"probe.path={tmp_path / 'probe.pt'}",
                f"prompts.source={tmp_path / 'prompts.txt'}",
                "trainer.accelerator=cpu",
                "trainer.max_steps=4",
                "trainer.val_check_interval=2",
                "callbacks.neuron_dynamics.every_n_steps=2",
            ],
            run_dir,
        )
    )
    eval_meta = json.loads((run_dir / "eval" / "meta.json").read_text())
    assert eval_meta["scorer"] == "profanity_check (crude proxy)"  # the defaults of a run that is not the demo
    assert eval_meta["perplexity_text"].startswith("the validation pairs' prompts (8 prompts")  # natural text, never generations
    text = (run_dir / "eval" / "perplexity_text.txt").read_text()
    assert "Item" in text and "idiot" not in text  # the prompts, not the completions
    assert eval_meta["prompts"] == f"{tmp_path / 'prompts.txt'} (10 prompts)"
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    # no demo world built: the cache holds only the probe set's continuation, decoded once for this model
    assert [p.name for p in empty_cache.iterdir()] == ["probe_tokens"]


def test_a_run_that_keeps_demo_assets_with_its_own_model_is_refused_naming_them(tmp_path, small_world):
    from helpers.data import write_pairs

    torch.save(torch.randn(64), tmp_path / "probe.pt")
    # your own pairs, but still the demo bundle's prompt set, probe and scorer (experiment=demo)
    with pytest.raises(
        ConfigError, match=r"probe.path, prompts.source, scorer.words_file point into the demo's toy world while data.path is your own"
    ):
        train(compose_train([f"data.path={write_pairs(tmp_path / 'pairs.jsonl')}"], tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()
