"""benchmarks/gpu_check.sh stays ready to run while no GPU is lent: every training command in it
composes with today's configs, every benchmark flag it passes exists, and its parts' time limits
fit the 8 minutes the check may take (nothing here needs a GPU)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.configs import compose_train

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _parts() -> list[tuple[str, int, list[str]]]:
    text = SCRIPT.read_text().replace("\\\n", " ")
    variables = dict(re.findall(r'^(\w+)="([^"]*)"$', text, flags=re.M))
    parts = []
    for name, limit, command in re.findall(r"^part (\w+) (\d+) (.+)$", text, flags=re.M):
        for key, value in variables.items():
            command = command.replace(f"${key}", value)
        parts.append((name, int(limit), shlex.split(command)))
    return parts


@pytest.mark.unit
def test_the_gpu_check_fits_its_eight_minutes_and_names_its_four_parts():
    parts = _parts()
    assert [name for name, _, _ in parts] == ["throughput", "snapshot", "fsdp", "lora"]
    assert sum(limit for _, limit, _ in parts) <= 8 * 60


@pytest.mark.unit
def test_every_training_command_of_the_gpu_check_composes():
    for name, _, argv in _parts():
        if argv[1:3] != ["-m", "lightning_dpo.train"]:
            continue
        overrides = [a for a in argv[3:] if not a.startswith("hydra.")]
        cfg = compose_train(overrides)
        assert cfg.trainer.accelerator == "gpu" and cfg.trainer.max_steps == 60, name
        assert "step_timer" in cfg.callbacks, name
        if name == "fsdp":
            assert cfg.trainer.strategy._target_.endswith("FSDP2Strategy") and cfg.trainer.devices == 1
        if name == "lora":
            assert cfg.model.lora.r == 8 and cfg.trainer.precision == "bf16-mixed"


def test_every_benchmark_flag_the_gpu_check_passes_exists():
    for name, _, argv in _parts():
        if not argv[1].startswith("benchmarks/"):
            continue
        # argparse checks the flags and choices before it reaches --help: exit 0 only if all exist
        result = subprocess.run([sys.executable, argv[1], *argv[2:], "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{name}: {result.stderr[-2000:]}"
