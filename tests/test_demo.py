"""The embedded demo, exactly as a new user runs it: `python -m lightning_dpo.train` (slow)."""

import csv
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reduces_toxicity(tmp_path):
    run_dir = tmp_path / "demo"
    env = dict(os.environ, LIGHTNING_DPO_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    result = subprocess.run(
        [sys.executable, "-m", "lightning_dpo.train", f"hydra.run.dir={run_dir}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for path in (
        ".hydra/config.yaml",
        "metrics.csv",
        "checkpoints/last.ckpt",
        "hf_model/config.json",
        "probe.safetensors",
        "dynamics/groups.csv",
        "dynamics/tokens.safetensors",
        "toxicity_eval.csv",
    ):
        assert (run_dir / path).exists(), path
    with open(run_dir / "toxicity_eval.csv") as handle:
        history = list(csv.DictReader(handle))
    before, after = float(history[0]["eval/toxicity"]), float(history[-1]["eval/toxicity"])
    assert history[0]["step"] == "0" and history[0]["scorer"] == "wordlist:insults.txt"
    assert before >= 0.25, "the base model should continue a good share of held-out prompts toxically"
    assert after <= 0.5 * before, (before, after)
    assert "greedy-continuation toxicity" in result.stdout and "neuron groups at step" in result.stdout
    # the run drew its figures and report.html at its end: seven per probe (the target's at the top), and the
    # run's own training and evaluation curves once
    figures = {p.name for p in (run_dir / "plots").glob("*.png")}
    per_probe = {
        "group_delta_sum.png",
        "reducing_shares.png",
        "net_vs_gross.png",
        "layer_group_heatmap.png",
        "toxic_neuron_activations.png",
        "components.png",
        "shares_vs_null.png",
    }
    assert figures == per_probe | {"training.png", "evaluation.png"}
    # another probe's "toxic neurons" are its top neurons by cosine
    other = per_probe - {"toxic_neuron_activations.png"} | {"top_neuron_activations.png"}
    assert {p.name for p in (run_dir / "plots" / "workplace").glob("*.png")} == other
    assert (run_dir / "report.html").is_file() and f"report: {run_dir / 'report.html'}" in result.stdout
    plots = subprocess.run([sys.executable, "-m", "lightning_dpo.plot", str(run_dir)], env=env, capture_output=True, text=True)
    assert plots.returncode == 0 and len(plots.stdout.split()) == 16  # redrawn: the 16 paths
