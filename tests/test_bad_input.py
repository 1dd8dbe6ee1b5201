"""Bad input and broken files: a one-line error naming the key, file or line, and nothing lost."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch

from helpers.configs import SHORT_RUN, SMALL_WORLD, compose_train
from helpers.data import write_pairs
from lightning_dpo.data import PreferenceDataModule, read_preference_rows
from lightning_dpo.train import train
from lightning_dpo.utils.errors import (
    ConfigError,
    DataError,
    LightningDPOError,
    OutputError,
)


def run(run_dir: Path, *overrides: str):
    return train(compose_train(SMALL_WORLD + SHORT_RUN + list(overrides), run_dir))


def _no_checkpoint(run_dir: Path) -> bool:
    return not list(run_dir.glob("checkpoints/*.ckpt"))


# -- sequences and pairs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.max_prompt_length=48", "data.max_prompt_length=48 + data.max_completion_length=32 = 80 tokens"),
        ("probe_set.num_positions=40", "probe_set.max_prompt_tokens=32 + probe_set.num_positions=40"),
        ("generation.max_new_tokens=40", "generation.max_prompt_tokens=32 + generation.max_new_tokens=40"),
        (  # the deprecated key still sets it, and is named as what was set
            "callbacks.neuron_dynamics.num_positions=40",
            "probe_set.max_prompt_tokens=32 + callbacks.neuron_dynamics.num_positions=40",
        ),
    ],
)
def test_sequences_longer_than_the_model_positions_fail_before_training(tmp_path, small_world, override, key):
    with pytest.raises(ConfigError, match="the model has positions for 64") as info:
        run(tmp_path, override)
    assert key in str(info.value) and _no_checkpoint(tmp_path)


def test_identical_pairs_are_dropped_with_a_count_and_none_left_stops(tmp_path, char_tokenizer):
    rows = [{"prompt": f"p{i}", "chosen": " same", "rejected": " same"} for i in range(3)]  # identical
    rows += [{"prompt": f"q{i}", "chosen": " abX", "rejected": " abY"} for i in range(3)]  # identical once cut to 3 tokens
    rows += [{"prompt": f"r{i}", "chosen": " good", "rejected": " bad"} for i in range(10)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dm = PreferenceDataModule(tokenizer=char_tokenizer, path=str(path), val_size=2, max_completion_length=3)
    dm.setup("fit")
    assert len(dm.train_dataset) + len(dm.val_dataset) == 10 and dm.truncation_report.identical_dropped == 6
    assert "6 pairs dropped because chosen and rejected are identical" in dm.summary()
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:6]))
    with pytest.raises(DataError, match="no usable preference pairs: all 6 have the same chosen and rejected"):
        PreferenceDataModule(tokenizer=char_tokenizer, path=str(path), val_size=1, max_completion_length=3).setup("fit")


# -- files of every kind ---------------------------------------------------------------------

PAIR = {"prompt": "p", "chosen": " c", "rejected": " r"}


def test_pair_files_with_a_bom_json_arrays_csv_and_parquet_are_read(tmp_path):
    import pandas as pd

    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + (json.dumps(PAIR) + "\n").encode() * 2)
    (tmp_path / "array.json").write_text(json.dumps([PAIR, PAIR]))
    pd.DataFrame([PAIR, PAIR]).to_csv(tmp_path / "pairs.csv", index=False)
    pd.DataFrame([PAIR, PAIR]).to_parquet(tmp_path / "pairs.parquet")
    for name in ("bom.jsonl", "array.json", "pairs.csv", "pairs.parquet"):
        records, report = read_preference_rows(str(tmp_path / name))
        assert [(r.prompt, r.chosen, r.rejected) for r in records] == [("p", " c", " r")] * 2 and report.kept == 2, name


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("dup.jsonl", '{"prompt": "p", "chosen": " a", "chosen": " b", "rejected": " r"}\n', "dup.jsonl:1: the key 'chosen' appears twice"),
        ("pairs.txt", "p\n", "pairs need JSONL"),
        ("pairs.dat", "prompt,chosen,rejected\n", "pairs.dat:1: not valid JSON .*JSONL expected"),
        ("object.json", json.dumps(PAIR), "must hold an array of objects"),
    ],
)
def test_unreadable_pair_files_name_the_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=message):
        read_preference_rows(str(tmp_path / name))


def test_a_directory_or_a_symlink_loop_as_data_path_fails_before_training(tmp_path, small_world):
    (tmp_path / "pairs_dir").mkdir()
    with pytest.raises(DataError, match="pairs_dir: is not a file .*data.path"):
        run(tmp_path / "run1", f"data.path={tmp_path / 'pairs_dir'}")
    os.symlink(tmp_path / "loop_b", tmp_path / "loop_a")
    os.symlink(tmp_path / "loop_a", tmp_path / "loop_b")
    with pytest.raises(DataError, match="loop_a: .*(symbolic-link loop|not found)"):
        run(tmp_path / "run2", f"data.path={tmp_path / 'loop_a'}")
    assert _no_checkpoint(tmp_path / "run1") and _no_checkpoint(tmp_path / "run2")


def test_a_missing_local_prompt_file_is_never_tried_on_the_hub(tmp_path):
    from lightning_dpo.data.texts import load_texts

    for source in (f"{tmp_path}/prompts.jsonl", "prompts.jsonl", "./data/prompts"):
        with pytest.raises(DataError, match=r"file not found \(config key 'callbacks.x.prompts'\)"):
            load_texts(source, key="callbacks.x.prompts")
    with pytest.raises(DataError, match="hub is unreachable"):  # an id: offline, it fails at once
        load_texts("allenai/real-toxicity-prompts", key="callbacks.x.prompts")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"hello\n", "is not a tensor file written by torch.save"),
        ("dict", "holds a dict with keys \\['a', 'b'\\]: expected one tensor"),
    ],
)
def test_a_probe_file_that_is_text_or_a_dict_is_named(tmp_path, content, message):
    from lightning_dpo.neurons.probe import load_probe

    path = tmp_path / "probe.pt"
    if content == "dict":
        torch.save({"a": torch.randn(4), "b": torch.randn(4)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(DataError, match=f"{path}: {message}"):
        load_probe(path)


def test_an_empty_model_folder_is_named(tmp_path, small_world):
    (tmp_path / "empty").mkdir()
    torch.save(torch.randn(64), tmp_path / "probe.pt")
    own = [
        "experiment=none",
        "model=hf",
        f"model.name_or_path={tmp_path / 'empty'}",
        "data=jsonl",
        f"data.path={write_pairs(tmp_path / 'p.jsonl')}",
        f"probe.path={tmp_path / 'probe.pt'}",
    ]
    with pytest.raises(LightningDPOError, match=f"{tmp_path / 'empty'}: expected a folder written by save_pretrained"):
        run(tmp_path / "run", *own)


# -- output directories, full disks, leftovers -----------------------------------------------


def test_a_read_only_run_directory_on_resume_is_named(tmp_path, small_world, monkeypatch):
    run_dir = tmp_path / "run"
    run(run_dir, "trainer.max_steps=2")
    real = Path.write_bytes

    def read_only(self, data):  # the tests run as root, where chmod restricts nothing: simulate EACCES
        if self.name.startswith(".write-test"):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", read_only)
    with pytest.raises(
        OutputError, match=rf"run directory \(paths.output_dir\) {run_dir} is not usable: cannot write {run_dir}: permission denied"
    ):
        run(run_dir, "trainer.max_steps=4", "ckpt_path=last")


def test_a_full_disk_names_the_file_that_failed_and_the_status_says_so(tmp_path, small_world, monkeypatch):
    def full(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    run_dir = tmp_path / "run"
    with pytest.raises(OutputError, match=r"cannot write .*checkpoints/best-step_0000004.ckpt: no space left on device"):
        run(run_dir)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and "best-step_0000004.ckpt: no space left on device" in status["error"]
    assert not list(run_dir.rglob("*.tmp"))


def test_no_leftovers_after_a_kill_and_no_extra_checkpoints(tmp_path, small_world):
    run_dir = tmp_path / "run"
    run(run_dir, "trainer.max_steps=6")  # not a multiple of the validation interval (4): the final step validates too
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir())[1:] == ["last.ckpt"]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir())[0] in ("best-step_0000004.ckpt", "best-step_0000006.ckpt")
    # what a SIGKILL in the middle of writes leaves behind
    (run_dir / "checkpoints" / ".last.ckpt.k3j2.tmp").write_bytes(b"partial")
    (run_dir / "dynamics" / ".step_0000008.safetensors.a1.tmp").write_bytes(b"partial")
    torch.save({"state_dict": {}}, run_dir / "checkpoints" / "best-step_0000100.ckpt")  # written after last.ckpt
    run(run_dir, "trainer.max_steps=8", "ckpt_path=last")
    assert not list(run_dir.rglob("*.tmp"))
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best-step_0000008.ckpt", "last.ckpt"]


def _strict_json(path: Path):
    def refuse(name):
        raise AssertionError(f"{path} holds a bare {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_status_json_is_strict_json(tmp_path, small_world):
    run_dir = tmp_path / "run"
    assert run(run_dir, "trainer.max_steps=2", "objective=dynamics/never_logged") != run(tmp_path / "r2", "trainer.max_steps=2")
    status = _strict_json(run_dir / "status.json")
    assert status["status"] == "completed" and status["objective"] is None
