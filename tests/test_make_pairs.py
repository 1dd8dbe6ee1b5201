"""The pairs builder: steering only while active, the alpha=0 and margin rules, resumable output."""

import json

import pytest

from helpers.configs import compose_command
from lightning_dpo.evaluation.generation import generate_continuations
from lightning_dpo.make_pairs import run
from lightning_dpo.model.loading import load_causal_lm, load_tokenizer
from lightning_dpo.neurons.hooks import count_hooks
from lightning_dpo.neurons.pairs import keep_pair
from lightning_dpo.neurons.probe import load_probe
from lightning_dpo.neurons.steering import steering


def test_steering_changes_generations_only_while_active(small_world):
    model, tokenizer = load_causal_lm(small_world.base_model).eval(), load_tokenizer(small_world.base_model)
    unit = load_probe(small_world.probe).unit
    prompts = [json.loads(line)["prompt"] for line in open(small_world.eval_prompts)][:16]
    before = generate_continuations(model, tokenizer, prompts)
    with steering(model, unit, alpha=12.0, layers=[0, 1]):
        steered = generate_continuations(model, tokenizer, prompts)
    after = generate_continuations(model, tokenizer, prompts)
    assert steered != before and after == before and count_hooks(model) == 0


@pytest.mark.parametrize(
    "chosen, rejected, margin, chosen_text, rejected_text, kept",
    [
        (0.0, 1.0, 0.0, " a", " b", True),
        (0.2, 0.5, 0.3, " a", " b", False),
        (0.1, 0.5, 0.3, " a", " b", True),
        (0.5, 0.5, 0.0, " a", " b", False),
        (0.0, 1.0, 0.0, "  ", " b", False),
        (0.0, 1.0, 0.0, " a", "", False),
    ],
)
def test_margin_rule(chosen, rejected, margin, chosen_text, rejected_text, kept):
    assert keep_pair(chosen, rejected, margin, chosen_text, rejected_text) is kept


def _config(world, out, *extra):
    return compose_command(
        "make_pairs",
        [
            f"model.name_or_path={world.base_model}",
            f"probe.path={world.probe}",
            f"prompts.source={world.eval_prompts}",
            "prompts.field=prompt",
            "min_prompt_tokens=4",
            "max_prompts=24",
            "scorer._target_=lightning_dpo.evaluation.scorers.WordListScorer",
            f"+scorer.words_file={world.insults}",
            "chunk_size=8",
            f"out={out}",
            *extra,
        ],
    )


def test_alpha_zero_gives_identical_continuations_and_drops_every_pair(tmp_path, small_world):
    report = run(_config(small_world, tmp_path / "pairs.jsonl", "steering.alpha=0"))
    assert report["prompts"] == 24 and report["kept"] == 0 and report["dropped"] == 24
    rows = [json.loads(line) for p in sorted((tmp_path / "pairs.jsonl.parts").glob("chunk_*.jsonl")) for line in p.read_text().splitlines()]
    assert all(r["chosen"] == r["rejected"] for r in rows)
    assert (tmp_path / "pairs.jsonl").read_text() == ""


def test_an_interrupted_run_resumes_to_the_same_file(tmp_path, small_world, monkeypatch):
    extra = ["chosen_temperature=1.0", "rejected_temperature=1.0", "steering.alpha=0.75"]  # sampling: the seeds must carry over
    report = run(_config(small_world, tmp_path / "straight.jsonl", *extra))
    assert 0 < report["kept"] < 24 and report["rejected_scores"]["mean"] > report["chosen_scores"]["mean"]
    import lightning_dpo.make_pairs as mp

    original, calls = mp.generate_pairs, []

    def dies_on_the_second_chunk(*args, **kwargs):
        calls.append(args[-1])
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return original(*args, **kwargs)

    monkeypatch.setattr(mp, "generate_pairs", dies_on_the_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        run(_config(small_world, tmp_path / "resumed.jsonl", *extra))
    assert not (tmp_path / "resumed.jsonl").exists() and len(list((tmp_path / "resumed.jsonl.parts").glob("chunk_*"))) == 1
    monkeypatch.setattr(mp, "generate_pairs", original)
    run(_config(small_world, tmp_path / "resumed.jsonl", *extra))
    assert (tmp_path / "resumed.jsonl").read_text() == (tmp_path / "straight.jsonl").read_text()
    from lightning_dpo.utils.errors import ConfigError

    with pytest.raises(ConfigError, match="other settings"):  # a half-done run is never mixed with other settings
        run(_config(small_world, tmp_path / "resumed.jsonl", "steering.alpha=2"))


def test_a_failed_start_does_not_block_the_corrected_command(tmp_path, small_world, monkeypatch):
    import lightning_dpo.make_pairs as mp

    def fails(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(mp, "generate_pairs", fails)
    with pytest.raises(RuntimeError):
        run(_config(small_world, tmp_path / "pairs.jsonl", "batch_size=4096", "steering.alpha=4"))
    monkeypatch.undo()
    report = run(_config(small_world, tmp_path / "pairs.jsonl", "steering.alpha=0.75"))  # other settings: nothing was produced
    assert (
        report["prompts"] == 24 and json.loads((tmp_path / "pairs.jsonl.parts" / "settings.json").read_text())["steering"]["alpha"] == 0.75
    )


def test_degenerate_pairs_are_counted_and_warned(tmp_path, small_world, caplog):
    import logging

    from lightning_dpo.make_pairs import pair_warnings

    class Tokens:  # one id per word
        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [[sum(map(ord, word)) for word in t.split()] for t in texts]}

    rows = [
        {"kept": True, "rejected": "idiot idiot idiot", "chosen": " ok", "chosen_score": 0.0},
        {"kept": True, "rejected": " you fool", "chosen": " ok", "chosen_score": 0.9},
        {"kept": True, "rejected": " you fool", "chosen": " fine", "chosen_score": 0.1},
        {"kept": False, "rejected": "x x", "chosen": " ok", "chosen_score": 0.9},
    ]
    assert pair_warnings(rows, Tokens()) == {
        "rejected_one_repeated_token": 1,
        "rejected_shared_with_another_pair": 2,
        "chosen_above_threshold": 1,
    }
    with caplog.at_level(logging.WARNING):
        # a huge push, degenerate texts kept (steering.drop_degenerate=false): the warnings count them
        report = run(_config(small_world, tmp_path / "pairs.jsonl", "steering.alpha=4", "steering.drop_degenerate=false"))
    assert set(report["warnings"]) == {"rejected_one_repeated_token", "rejected_shared_with_another_pair", "chosen_above_threshold"}
    assert report["warnings"]["rejected_shared_with_another_pair"] > 0 and "kept pairs: rejected shared with another pair" in caplog.text


def test_the_demo_world_builds_its_pairs_with_it(small_world):
    rows = [json.loads(line) for line in open(small_world.pairs)]
    assert len(rows) == small_world.stats["pairs_kept"] > 0
    assert all(r["rejected_score"] > r["chosen_score"] for r in rows)
    assert small_world.stats["probe_accuracy"] >= 0.95


def test_the_steering_unit_is_the_median_residual_norm_and_the_shift_is_exact(small_world):
    import torch

    from lightning_dpo.neurons.steering import residual_norm_medians

    model, tokenizer = load_causal_lm(small_world.base_model).eval(), load_tokenizer(small_world.base_model)
    prompts = [json.loads(line)["prompt"] for line in open(small_world.eval_prompts)][:12]
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    scale = residual_norm_medians(model, ids, [0], tokenizer.eos_token_id, batch_size=5)
    norms = []  # brute force: one unpadded prompt at a time, the first block's output from output_hidden_states
    for row in ids:
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([row]), output_hidden_states=True).hidden_states[1][0]
        norms.append(hidden.norm(dim=-1))
    assert scale[0] == pytest.approx(float(torch.cat(norms).median()), rel=1e-5)
    unit = load_probe(small_world.probe).unit
    captured = {}
    handle = model.transformer.h[0].register_forward_hook(
        lambda m, a, out: captured.__setitem__("x", out[0] if isinstance(out, tuple) else out)
    )
    x = torch.tensor([ids[0]])
    with torch.no_grad():
        model(input_ids=x)
        plain = captured["x"].clone()
    handle.remove()
    probe_after = {}
    handle = model.transformer.h[1].register_forward_pre_hook(lambda m, args, **kw: probe_after.__setitem__("x", args[0]))
    with torch.no_grad(), steering(model, unit, alpha=0.5, layers=[0], scale=scale):
        model(input_ids=x)
    handle.remove()
    assert torch.allclose(probe_after["x"] - plain, (0.5 * scale[0] * unit).expand_as(plain), atol=1e-5)  # alpha x median x u


@pytest.mark.parametrize(
    "ids, degenerate",
    [
        ([5, 5, 5, 5], True),
        ([1, 2, 1, 2, 1, 2, 1, 2, 1, 2], True),
        ([1, 2, 3, 4, 5, 6], False),
        ([7], False),
        ([1, 2, 3, 3, 3, 4], False),
        ([1, 9, 9, 9, 9, 2], True),
    ],
)
def test_a_rejected_text_that_repeats_itself_is_degenerate(ids, degenerate):
    from lightning_dpo.neurons.pairs import is_degenerate

    assert is_degenerate(ids) is degenerate


def test_a_scan_reports_each_alpha_and_writes_no_pairs(tmp_path, small_world):
    report = run(_config(small_world, tmp_path / "pairs.jsonl", "steering.alpha=[0,0.75,8]", "steering.scan_prompts=16"))
    rows = {r["alpha"]: r for r in report["scan"]}
    assert set(rows) == {0.0, 0.75, 8.0} and not (tmp_path / "pairs.jsonl").exists()
    assert rows[0.0]["kept"] == 0 and rows[0.75]["kept"] > 0 and rows[8.0]["degenerate_share"] > rows[0.75]["degenerate_share"]
    assert (tmp_path / "pairs.jsonl.scan.md").read_text().count("\n|") >= 4 and "median residual norm" in (
        tmp_path / "pairs.jsonl.scan.md"
    ).read_text()
    saved = json.loads((tmp_path / "pairs.jsonl.scan.json").read_text())
    assert len(saved["rows"]) == 3 and saved["rows"][1]["examples"]


@pytest.mark.parametrize(
    "steps, fraction, cap, total, expected",
    [
        (150, None, 0.1, 60, 6),
        (150, None, 0.1, 6128, 150),
        (10, None, 0.1, 150, 10),
        (150, 0.2, 0.1, 60, 12),
        (150, None, None, 60, 150),
        (0, None, 0.1, 60, 0),
    ],
)
def test_the_warm_up_is_relative_to_the_run(steps, fraction, cap, total, expected):
    from lightning_dpo.model.schedules import effective_warmup

    assert effective_warmup(steps, total, fraction, cap) == expected


def test_a_short_rmsprop_run_reaches_its_learning_rate():
    """Lee et al.'s 150 warm-up steps, in a 60-step run: capped at 6, so the rate is reached at step 6."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from helpers.configs import compose_train

    cfg = compose_train(["optim=rmsprop", "trainer.max_steps=60"])
    optimizer = torch.optim.RMSprop([torch.zeros(1, requires_grad=True)], lr=OmegaConf.select(cfg, "optim.lr"))
    scheduler = instantiate(cfg.optim.scheduler)(optimizer)
    rates = []
    for _ in range(8):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] < cfg.optim.lr and rates[6] == pytest.approx(cfg.optim.lr)
