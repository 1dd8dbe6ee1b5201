"""The Hydra entry point end to end on the small toy world: outputs, resume, monitoring."""

import csv
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers.configs import SHORT_RUN, SMALL_WORLD, compose_train
from lightning_dpo.train import train

TRAIN_METRICS = [
    "train/loss",
    "train/rewards/chosen",
    "train/rewards/rejected",
    "train/rewards/accuracies",
    "train/rewards/margins",
    "train/logps/chosen",
    "train/logps/rejected",
    "train/logits/chosen",
    "train/logits/rejected",
    "train/kl",
    "train/lr",
    "train/grad_norm",
]
VAL_METRICS = [m.replace("train/", "val/") for m in TRAIN_METRICS if m not in ("train/lr", "train/grad_norm")]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def run(run_dir: Path, *overrides: str):
    cfg = compose_train(SMALL_WORLD + SHORT_RUN + list(overrides), run_dir)
    return train(cfg)


def weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def test_short_run_writes_the_public_outputs(tmp_path, small_world, monkeypatch):
    import gc

    from lightning_dpo.lifecycle import run as lifecycle

    frozen = []
    freeze = lifecycle.freeze_heap
    monkeypatch.setattr(lifecycle, "freeze_heap", lambda: (freeze(), frozen.append(gc.get_freeze_count())))
    run_dir = tmp_path / "run"
    objective = run(run_dir)
    assert frozen and frozen[0] > 0 and gc.get_freeze_count() == 0  # frozen for the fit, collectable again after it
    rows = read_csv(run_dir / "metrics.csv")
    final_val = [float(r["val/loss"]) for r in rows if r.get("val/loss")][-1]
    assert objective == final_val  # train() returns the final val/loss (what a search minimises)
    columns = set(rows[0])
    assert set(TRAIN_METRICS + VAL_METRICS) <= columns
    assert {"dynamics/TP-/share", "dynamics/gross_reduction", "dynamics/net_delta", "eval/toxicity"} <= columns
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(set(steps))  # one row per logging step
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(run_dir / "hf_model")
    AutoTokenizer.from_pretrained(run_dir / "hf_model")
    trained = weights(run_dir)
    assert torch.equal(model.state_dict()["transformer.wte.weight"], trained["policy.transformer.wte.weight"])
    assert (run_dir / "probe.safetensors").exists() and (run_dir / "dynamics" / "groups.csv").exists()
    assert '"status": "completed"' in (run_dir / "status.json").read_text()


def test_resume_reproduces_the_uninterrupted_run(tmp_path, small_world):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run(straight, "trainer.max_steps=8")
    run(resumed, "trainer.max_steps=4")
    assert int(torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]) == 4
    run(resumed, "trainer.max_steps=8", "ckpt_path=last")

    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_csv(straight / "metrics.csv") == read_csv(resumed / "metrics.csv")
    assert read_csv(straight / "dynamics" / "groups.csv") == read_csv(resumed / "dynamics" / "groups.csv")
    assert read_csv(straight / "toxicity_eval.csv") == read_csv(resumed / "toxicity_eval.csv")
    snapshots = sorted(p.name for p in (straight / "dynamics").glob("step_*.safetensors"))
    assert snapshots == sorted(p.name for p in (resumed / "dynamics").glob("step_*.safetensors"))
    for name in snapshots:
        x, y = load_file(straight / "dynamics" / name), load_file(resumed / "dynamics" / name)
        assert all(torch.equal(x[k], y[k]) for k in x)


def test_monitoring_does_not_change_training(tmp_path, small_world):
    run(tmp_path / "with")
    run(tmp_path / "without", "~callbacks.neuron_dynamics", "~callbacks.toxicity_eval")
    a, b = weights(tmp_path / "with"), weights(tmp_path / "without")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_fresh_run_never_mixes_with_an_earlier_one(tmp_path, small_world):
    from lightning_dpo.utils.errors import OutputError

    run_dir = tmp_path / "run"
    run(run_dir, "trainer.max_steps=2")
    before = (run_dir / "metrics.csv").read_text()
    with pytest.raises(OutputError, match="ckpt_path=last"):
        run(run_dir, "trainer.max_steps=2")
    assert (run_dir / "metrics.csv").read_text() == before  # nothing touched

    (run_dir / "checkpoints" / "last.ckpt").unlink()  # an attempt that died before its first checkpoint
    run(run_dir, "trainer.max_steps=2", "ckpt_path=last")
    archived = list((run_dir / "previous").glob("*/metrics.csv"))
    assert len(archived) == 1 and archived[0].read_text() == before


def test_a_run_stopped_between_snapshots_keeps_its_end_measurements_consistent_after_resume(tmp_path, small_world):
    run_dir = tmp_path / "run"
    run(run_dir, "trainer.max_steps=5")  # snapshots every 2, evaluations every 4, and both at the end (5)
    run(run_dir, "trainer.max_steps=8", "ckpt_path=last")
    groups = {int(r["step"]) for r in read_csv(run_dir / "dynamics" / "groups.csv")}
    evals = [int(r["step"]) for r in read_csv(run_dir / "toxicity_eval.csv")]
    assert groups == {0, 2, 4, 5, 6, 8} and evals == [0, 4, 5, 8]
    logged = {int(r["step"]) for r in read_csv(run_dir / "metrics.csv") if r.get("dynamics/net_delta")}
    assert logged == groups
    assert sorted(int(p.stem.split("_")[1]) for p in (run_dir / "dynamics").glob("step_*.safetensors")) == sorted(groups)
