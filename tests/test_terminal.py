"""What a user sees in the terminal: one progress line by optimizer step, no library chatter, and
an end-of-run summary (also in train.log) that says where things are and what to run next."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers.configs import SHORT_RUN, SMALL_WORLD
from helpers.models import GPT2_TOKENIZER
from lightning_dpo.callbacks.progress import StepProgressBar, progress_line

# what the demo printed before (issue 16): none of it may come back
CHATTER = (
    "Seed set to",
    "Loading weights",
    "GPU available",
    "TPU available",
    "💡 Tip",
    "LeafSpec",
    "weights_only",
    "Writing model shards",
    "loss_type=None",
    "Epoch ",
    "Token indices sequence length",
)


def test_progress_line_fits_80_columns_and_drops_fields_from_the_right():
    metrics = {"train/loss": 0.012345, "train/rewards/accuracies": 0.984, "val/loss": 0.011}
    line = progress_line(120, 150, metrics, rate=4.1)
    assert line == "step 120/150  loss 0.0123  acc 0.98  val/loss 0.0110  4.10 step/s  ETA 0:07"
    assert len(line) <= 79
    assert progress_line(123456, 1000000, metrics, rate=0.01).startswith("step 123456/1000000  loss 0.0123")
    assert all(len(progress_line(10**k, 10 ** (k + 1), metrics, rate=3.0)) <= 79 for k in range(12))
    assert progress_line(5, 150, metrics, rate=3.0, width=30) == "step 5/150  loss 0.0123"
    assert progress_line(5, None, {}, rate=None) == "step 5"


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def _drive(bar: StepProgressBar, steps: int, accumulate: int = 1) -> None:
    trainer = SimpleNamespace(
        global_step=0, max_steps=steps, progress_bar_metrics={"train/loss": 0.5}, is_global_zero=True, sanity_checking=False
    )
    bar._trainer = trainer
    bar.on_train_start(trainer, None)
    time.sleep(0.01)
    for batch in range(steps * accumulate):
        trainer.global_step = (batch + 1) // accumulate
        bar.on_train_batch_end(trainer, None, None, None, batch)
    bar.on_train_end(trainer, None)


def test_in_a_log_file_the_bar_prints_a_line_every_tenth_of_the_run():
    stream = _Stream(tty=False)
    _drive(StepProgressBar(stream=stream), steps=150, accumulate=2)
    lines = stream.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["1/150"] + [f"{s}/150" for s in range(15, 151, 15)]
    assert "\r" not in stream.getvalue()


def test_on_a_terminal_the_bar_redraws_one_line():
    stream = _Stream(tty=True)
    _drive(StepProgressBar(stream=stream), steps=20)
    text = stream.getvalue()
    assert text.count("\r") == 20 and text.count("\n") == 1 and text.endswith("\n")
    assert all(len(chunk.rstrip("\n")) <= 79 for chunk in text.split("\r"))


def test_truncating_on_purpose_prints_no_tokenizer_warning(caplog):
    """A long prompt is cut to max_prompt_length by design: no "Token indices sequence length" warning."""
    from transformers import AutoTokenizer

    from lightning_dpo.data.records import PreferenceRecord
    from lightning_dpo.data.tokenize import tokenize_pairs
    from lightning_dpo.evaluation.generation import tokenize_prompts

    tokenizer = AutoTokenizer.from_pretrained(GPT2_TOKENIZER)
    long_text = "word " * 3000  # > GPT-2's 1024 positions
    with caplog.at_level(logging.WARNING):
        tokenize_pairs(tokenizer, [PreferenceRecord(long_text, " yes " * 2000, " no", 1)], 64, 64, "keep_end", True)
        ids = tokenize_prompts(tokenizer, [long_text], max_prompt_tokens=32)
    assert len(ids[0]) == 32
    assert "Token indices sequence length" not in caplog.text


@pytest.mark.usefixtures("small_world")
def test_a_run_prints_progress_and_a_summary_without_chatter(tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    result = subprocess.run(
        [sys.executable, "-m", "lightning_dpo.train", *SMALL_WORLD, *SHORT_RUN, "report=true", f"hydra.run.dir={run}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert [c for c in CHATTER if c in output] == []
    progress = [line for line in output.splitlines() if line.startswith("step ")]
    assert progress and progress[-1].startswith("step 8/8") and all(len(line) <= 79 for line in progress)
    summary = output[output.index("== lightning-dpo summary ==") :]
    assert f"report: {run / 'report.html'}" in summary and "python -m lightning_dpo.analyze dpo=" in summary
    assert "trainer.max_steps=16" in summary and "ckpt_path=last" in summary
    assert "over 32 prompts of dynamics/prompts.jsonl" in summary  # the prompts behind the group table
    assert summary.strip() in Path(run / "train.log").read_text(encoding="utf-8")
    assert output.count("data: ") == 2  # once when the data is read, once in the summary
