"""Sweeps: the compare table, and a real 2 x 2 multirun with offline W&B, a failure and a resume (slow)."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from helpers.configs import SMALL_WORLD
from lightning_dpo.compare import compare


def fake_job(root: Path, name: str, beta: float, lr: float, status: dict | None, rows: list[dict]) -> Path:
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text(f"loss:\n  beta: {beta}\n  type: sigmoid\noptim:\n  lr: {lr}\n")
    if status is not None:
        (job / "status.json").write_text(json.dumps(status))
    if rows:
        with open(job / "metrics.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=sorted({k for r in rows for k in r}))
            writer.writeheader()
            writer.writerows(rows)
    return job


def test_compare_lists_every_job_with_its_status(tmp_path):
    rows = [
        {"step": 0, "dynamics/TP-/share": "nan"},
        {
            "step": 10,
            "val/loss": 0.5,
            "dynamics/TP-/share": 0.3,
            "dynamics/AN-/share": 0.7,
            "dynamics/net_delta": 1.5,
            "eval/toxicity": 0.1,
        },
    ]
    fake_job(tmp_path, "loss.beta=0.1,optim.lr=1e-06", 0.1, 1e-6, {"status": "completed"}, rows)
    fake_job(tmp_path, "loss.beta=0.5,optim.lr=1e-06", 0.5, 1e-6, {"status": "failed", "error": "NonFiniteError: nan"}, rows[:1])
    fake_job(tmp_path, "loss.beta=0.1,optim.lr=5e-06", 0.1, 5e-6, {"status": "running"}, rows[:1])
    fake_job(tmp_path, "loss.beta=0.5,optim.lr=5e-06", 0.5, 5e-6, None, [])
    table = {t["job"]: t for t in compare(tmp_path)}
    assert len(table) == 4
    done = table["loss.beta=0.1,optim.lr=1e-06"]
    assert done["status"] == "completed" and done["steps"] == 10 and done["val/loss"] == 0.5 and done["share TP-"] == 0.3
    assert done["eval/toxicity"] == 0.1 and done["net_delta"] == 1.5
    assert table["loss.beta=0.5,optim.lr=1e-06"]["status"] == "failed" and "nan" in table["loss.beta=0.5,optim.lr=1e-06"]["error"]
    assert table["loss.beta=0.1,optim.lr=5e-06"]["status"] == "incomplete"
    assert table["loss.beta=0.5,optim.lr=5e-06"]["status"] == "not started"
    assert (tmp_path / "compare.md").read_text().count("\n") == 2 + 4
    assert (tmp_path / "plots" / "shares_by_job.png").exists() and (tmp_path / "plots" / "jobs_overview.png").exists()
    assert not (tmp_path / "plots" / "heatmap_tp_share.png").exists()  # one completed cell is no beta x lr map


def _cli(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lightning_dpo.train", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=1200
    )


def _offline_run_ids(job: Path) -> list[str]:
    return sorted(p.name.rsplit("-", 1)[1] for p in (job / "wandb").glob("offline-run-*"))


@pytest.mark.slow
def test_sweep_with_offline_wandb_a_failure_and_a_resume(tmp_path):
    env = dict(os.environ, LIGHTNING_DPO_CACHE=os.environ["LIGHTNING_DPO_CACHE"], WANDB_MODE="offline", HF_HUB_OFFLINE="1")
    common = SMALL_WORLD + [
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "trainer.log_every_n_steps=1",
        "data.batch_size=4",
        "data.val_size=16",
        "callbacks.neuron_dynamics.every_n_steps=2",
        "callbacks.toxicity_eval.every_n_steps=2",
        "callbacks.toxicity_eval.max_prompts=8",
        "logger=wandb",
    ]
    sweep = tmp_path / "sweep"
    result = _cli(["-m", "loss.beta=0.1,0.5", "optim.lr=1e-4,1e-3,-1", f"hydra.sweep.dir={sweep}", *common], env, tmp_path)
    assert result.returncode == 1  # the other jobs ran; the command says some did not complete
    assert "Traceback" not in result.stderr and "ConfigError" not in result.stderr.splitlines()[-1]
    assert "2 job(s) of the sweep did not complete" in result.stderr.splitlines()[-1]
    assert (sweep / "report.html").is_file() and (sweep / "compare.md").is_file()  # written despite the failures
    page = (sweep / "report.html").read_text()
    assert "must be a finite number &gt;= 0, got -1" in page and ">0.0001<" in page  # the failed job, and lr 1e-4 not shown as 0.000
    jobs = sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir())
    settings = {j: OmegaConf.load(j / ".hydra" / "config.yaml") for j in jobs}
    assert sorted((s.loss.beta, s.optim.lr) for s in settings.values()) == sorted((b, lr) for b in (0.1, 0.5) for lr in (1e-4, 1e-3, -1))
    assert all(len(j.name) <= 120 for j in jobs)  # long override lists are shortened with a hash
    good = [j for j in jobs if settings[j].optim.lr > 0]
    ids = [_offline_run_ids(j) for j in good]
    assert all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == 4  # one run per job, distinct ids
    assert all((j / "wandb_run_id.txt").read_text().strip() == i[0] for j, i in zip(good, ids))

    table = {t["job"]: t for t in compare(sweep)}
    assert len(table) == 6
    assert sum(t["status"] == "completed" for t in table.values()) == 4
    assert all(t["status"] == "failed" and "optim.lr" in t["error"] for t in table.values() if t["lr"] == -1)

    job = good[0]  # resume one job with more steps: same W&B run id, no duplicated snapshot
    beta, lr = settings[job].loss.beta, settings[job].optim.lr
    # the same sweep command with this job's values, ckpt_path=last and more steps: same job directory
    resumed = _cli(
        ["-m", f"loss.beta={beta}", f"optim.lr={lr}", f"hydra.sweep.dir={sweep}", "ckpt_path=last", *common, "trainer.max_steps=6"],
        env,
        tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert set(_offline_run_ids(job)) == {ids[0][0]} and len(list((job / "wandb").glob("offline-run-*"))) == 2
    with open(job / "dynamics" / "groups.csv") as handle:
        keys = [(r["step"], r["layer"], r["group"], r["probe"]) for r in csv.DictReader(handle)]
    assert len(keys) == len(set(keys)) and {k[0] for k in keys} == {"0", "2", "4", "6"}
    with open(job / "metrics.csv") as handle:
        steps = [r["step"] for r in csv.DictReader(handle)]
    assert len(steps) == len(set(steps)) and steps[-1] == "6"


@pytest.mark.parametrize("preset", ["launcher=slurm", "launcher=local_parallel", "hparams_search=optuna"])
def test_sweep_presets_compose_and_their_plugins_instantiate(preset):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from helpers.configs import CONF

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[preset, "paths.output_dir=/tmp/unused"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    if preset.startswith("launcher"):
        launcher = instantiate(cfg.hydra.launcher)
        assert type(launcher).__name__ in ("SlurmLauncher", "JoblibLauncher")
        if preset == "launcher=slurm":
            assert cfg.hydra.launcher.gpus_per_node == 1 and cfg.ckpt_path == "last"
    else:
        assert cfg.hydra.sweeper.direction == "minimize" and set(cfg.hydra.sweeper.params) == {"loss.beta", "optim.lr"}
        assert cfg.objective == "val/loss"


@pytest.mark.slow
def test_optuna_search_returns_the_objective(tmp_path):
    env = dict(os.environ, WANDB_MODE="disabled", HF_HUB_OFFLINE="1")
    args = [
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweep.dir={tmp_path}",
        *SMALL_WORLD,
        "trainer.max_steps=4",
        "data.batch_size=4",
        "data.val_size=16",
        "callbacks.toxicity_eval.max_prompts=8",
    ]
    result = _cli(args, env, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    best = OmegaConf.load(tmp_path / "optimization_results.yaml")
    statuses = [json.loads(p.read_text()) for p in tmp_path.glob("*/status.json")]
    assert len(statuses) == 2 and all(s["status"] == "completed" and s["objective"] > 0 for s in statuses)
    assert set(best.best_params) == {"loss.beta", "optim.lr"} and best.best_value == min(s["objective"] for s in statuses)


@pytest.mark.parametrize(
    "damage, file, reason",
    [
        ("binary config", ".hydra/config.yaml", "not a YAML config"),
        ("list config", ".hydra/config.yaml", "not a mapping of settings"),
        ("non-object status", "status.json", "not a JSON object"),
        ("binary status", "status.json", "not JSON"),
        ("non-numeric metrics", "metrics.csv", "non-numeric value in column 'val/loss'"),
        ("bad beta", ".hydra/config.yaml", "loss.beta is not a number: 'abc'"),
    ],
)
def test_compare_lists_a_damaged_job_as_unreadable_and_builds_the_rest(tmp_path, damage, file, reason):
    rows = [{"step": 0, "dynamics/TP-/share": 0.5}, {"step": 10, "val/loss": 0.5, "dynamics/TP-/share": 0.3}]
    fake_job(tmp_path, "good", 0.1, 1e-6, {"status": "completed"}, rows)
    bad = fake_job(tmp_path, "bad", 0.5, 1e-6, {"status": "completed"}, rows)
    target = bad / file
    if damage == "binary config" or damage == "binary status":
        target.write_bytes(b"\x00\xff\xfe\x00 binary")
    elif damage == "list config":
        target.write_text("- a\n- b\n")
    elif damage == "non-object status":
        target.write_text("[1, 2]")
    elif damage == "non-numeric metrics":
        target.write_text("step,val/loss\n0,0.5\n10,oops\n")
    elif damage == "bad beta":
        target.write_text("loss:\n  beta: abc\n  type: sigmoid\noptim:\n  lr: 1e-6\n")
    table = {t["job"]: t for t in compare(tmp_path)}
    assert table["good"]["status"] == "completed" and table["good"]["share TP-"] == 0.3
    assert table["bad"]["status"] == "unreadable" and table["bad"]["error"].startswith(f"{target}: {reason}")
    assert "| bad | unreadable |" in (tmp_path / "compare.md").read_text()


def test_compare_heatmap_text_is_dark_on_light_cells_and_light_on_dark(tmp_path):
    rows = lambda share: [{"step": 10, "dynamics/TP-/share": share, "dynamics/net_delta": share}]
    for beta, share in ((0.1, 0.0), (0.5, 1.0)):
        fake_job(tmp_path, f"b{beta}", beta, 1e-4, {"status": "completed"}, rows(share))
    from lightning_dpo.compare import job_summary, plot_heatmap
    from lightning_dpo.utils import figures as report

    texts = []
    original = report.annotate_cells

    def capture(ax, image, grid, fmt="{:.3g}", fontsize=8):
        original(ax, image, grid, fmt, fontsize)
        texts.extend((t.get_text(), t.get_color()) for t in ax.texts)

    import lightning_dpo.compare as compare_module

    compare_module.annotate_cells = capture
    try:
        summaries = [job_summary(tmp_path / "b0.1"), job_summary(tmp_path / "b0.5")]
        assert plot_heatmap(summaries, "share TP-", "t", "share (%)", tmp_path / "h.png") is not None
    finally:
        compare_module.annotate_cells = original
    colors = dict(texts)
    assert colors == {"0": "white", "100": "black"}  # viridis: dark purple at the low end, light yellow at the high end


def test_plot_on_a_truncated_snapshot_names_the_file(tmp_path, capsys):
    from lightning_dpo.plot import main

    (tmp_path / "dynamics").mkdir()
    path = tmp_path / "dynamics" / "step_0000000.safetensors"
    path.write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a":')
    assert main([str(tmp_path)]) == 2
    assert f"{path}: cannot read the snapshot" in capsys.readouterr().err


def test_compare_by_setting_gives_mean_and_range_over_seeds(tmp_path):
    """Jobs that differ only in seed/world.seed are one setting: mean, min and max of each metric."""
    import math

    from lightning_dpo.compare import by_setting, job_summary

    values = {("sigmoid", 0): (0.10, 0.40, 0.20), ("sigmoid", 1): (0.30, 0.20, 0.50), ("orpo", 0): (0.05, 0.90, 0.10)}
    for (kind, seed), (toxicity, tp_share, attention) in values.items():
        rows = [
            {"step": 0, "eval/toxicity": 0.5},
            {"step": 10, "eval/toxicity": toxicity, "dynamics/TP-/share": tp_share, "dynamics/toxicity/attention_share": attention},
        ]
        job = fake_job(tmp_path, f"loss.type={kind},world.seed={seed}", 0.1, 1e-6, {"status": "completed"}, rows)
        # report/logger say how a job ran, not what it trained: not part of the setting
        (job / ".hydra" / "overrides.yaml").write_text(
            f"- loss.type={kind}\n- world.seed={seed}\n- report={seed % 2 == 0}\n- logger=wandb\n"
        )
    fake_job(tmp_path, "loss.type=orpo,world.seed=1", 0.1, 1e-6, {"status": "failed", "error": "x"}, [])  # not counted
    table = {r["setting"]: r for r in compare_and_settings(tmp_path)}
    assert set(table) == {"loss.type=sigmoid", "loss.type=orpo"}
    sigmoid, orpo = table["loss.type=sigmoid"], table["loss.type=orpo"]
    assert sigmoid["jobs"] == 2 and orpo["jobs"] == 1
    assert (
        sigmoid["eval/toxicity mean"] == pytest.approx(0.2) and sigmoid["eval/toxicity min"] == 0.1 and sigmoid["eval/toxicity max"] == 0.3
    )
    assert sigmoid["share TP- mean"] == pytest.approx(0.3) and sigmoid["attention_share max"] == 0.5
    assert orpo["attention_share mean"] == 0.1 and math.isnan(orpo["share AN- mean"])
    text = (tmp_path / "compare_by_setting.md").read_text()
    assert "| loss.type=sigmoid | 2 | 0.2 [0.1, 0.3] |" in text and "| 30 [20, 40] |" in text and "share TP- (%)" in text
    assert job_summary(tmp_path / "loss.type=orpo,world.seed=0")["attention_share"] == 0.1
    assert by_setting([]) == []


def compare_and_settings(sweep: Path) -> list[dict]:
    import csv as _csv

    compare(sweep)
    with open(sweep / "compare_by_setting.csv", newline="") as handle:
        rows = list(_csv.DictReader(handle))
    return [{k: (v if k == "setting" else int(v) if k == "jobs" else float(v)) for k, v in r.items()} for r in rows]
