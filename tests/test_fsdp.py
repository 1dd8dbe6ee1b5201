"""trainer=fsdp (FSDP2 through Lightning's ModelParallelStrategy) on 2 CPU processes (gloo): the same
run as one process with the same global batch, exact resume after SIGTERM, LoRA on top, and the
sharded pieces (padded shards, gathered weights, early stop across processes) one by one."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers.configs import SHORT_RUN, SMALL_WORLD, compose_train
from helpers.models import toy_width_decoder

TESTS = Path(__file__).parent
RUN = (
    SMALL_WORLD
    + SHORT_RUN
    + [
        "trainer.max_steps=6",
        "trainer.val_check_interval=3",
        "callbacks.toxicity_eval.every_n_steps=3",
        "callbacks.toxicity_eval.max_prompts=15",
    ]
)  # 15 prompts: shards of 8 and 7, the padding is exercised
FSDP = ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2", "data.batch_size=4"]
SINGLE = ["data.batch_size=8"]
LORA = ["+model.lora={r: 4, alpha: 8, target_modules: [c_attn, c_proj, c_fc]}", "optim.lr=1e-3"]
# fp32 sums in another order across 2 processes (gradient reduce-scatter, all-reduced snapshot sums)
ATOL = 5e-5


def _train(run_dir: Path, extra: list[str], expect: int = 0) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        WANDB_MODE="disabled",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    )
    cmd = [sys.executable, "-m", "lightning_dpo.train", *RUN, f"hydra.run.dir={run_dir}", *extra]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == expect, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def _checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def _column(path: Path, name: str) -> list[float]:
    with open(path) as handle:
        return [float(r[name]) for r in csv.DictReader(handle) if r.get(name)]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_same_run(single: Path, sharded: Path) -> None:
    a, b = _checkpoint(single), _checkpoint(sharded)
    assert a["global_step"] == b["global_step"] == 6
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, atol=ATOL, rtol=0, msg=key)
    assert _column(sharded / "metrics.csv", "train/loss") == pytest.approx(_column(single / "metrics.csv", "train/loss"), abs=1e-5)
    assert _column(sharded / "metrics.csv", "val/loss") == pytest.approx(_column(single / "metrics.csv", "val/loss"), abs=1e-5)
    steps = sorted(p.name for p in (single / "dynamics").glob("step_*.safetensors"))
    assert steps == sorted(p.name for p in (sharded / "dynamics").glob("step_*.safetensors")) and len(steps) == 4
    for name in steps + ["null_directions.safetensors"]:  # every snapshot tensor: sharded forwards, all-reduced sums
        x, y = load_file(single / "dynamics" / name), load_file(sharded / "dynamics" / name)
        assert x.keys() == y.keys()
        for key in x:
            torch.testing.assert_close(y[key].double(), x[key].double(), atol=ATOL, rtol=1e-4, msg=f"{name}:{key}")
    for name in ("groups.csv", "components.csv", "null.csv"):
        with open(single / "dynamics" / name) as f, open(sharded / "dynamics" / name) as g:
            assert next(csv.reader(f)) == next(csv.reader(g))
            assert sum(1 for _ in f) == sum(1 for _ in g)
    for name in ("tokens.safetensors", "prompts.jsonl"):  # the probe set: the same tokens
        assert _digest(single / "dynamics" / name) == _digest(sharded / "dynamics" / name)
    for step in ("0000000", "0000003", "0000006"):  # every prompt's continuation, gathered from both processes, in order
        name = f"generations_step_{step}.jsonl"
        assert (single / "eval" / name).read_text() == (sharded / "eval" / name).read_text()
    for name in ("hf_model", "hf_model_best"):  # a plain model, written by rank 0 from the gathered weights
        x, y = load_file(single / name / "model.safetensors"), load_file(sharded / name / "model.safetensors")
        assert x.keys() == y.keys() and all(torch.allclose(x[k], y[k], atol=ATOL) for k in x)
    assert json.loads((sharded / "status.json").read_text())["status"] == "completed"


def test_two_process_fsdp_equals_one_process_with_the_same_global_batch(tmp_path, small_world):
    _train(tmp_path / "single", SINGLE)
    result = _train(tmp_path / "fsdp", FSDP)
    _assert_same_run(tmp_path / "single", tmp_path / "fsdp")
    assert "lightning-dpo summary" in result.stdout and result.stdout.count("== lightning-dpo summary ==") == 1  # rank 0 only


@pytest.mark.slow
def test_fsdp_sigterm_then_resume_is_byte_identical_to_an_uninterrupted_fsdp_run(tmp_path, small_world):
    _train(tmp_path / "whole", FSDP)
    signal = ["+callbacks.signal_at._target_=helpers.signals.SignalAt", "+callbacks.signal_at.step=3"]
    interrupted = _train(tmp_path / "cut", FSDP + signal, expect=143)
    assert "stopped at step 3 on a signal" in interrupted.stdout + interrupted.stderr
    _train(tmp_path / "cut", FSDP + signal + ["ckpt_path=last"])
    a, b = _checkpoint(tmp_path / "whole"), _checkpoint(tmp_path / "cut")
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    for name in (
        ["metrics.csv", "toxicity_eval.csv", "hf_model/model.safetensors", "probe.safetensors"]
        + [f"dynamics/{p.name}" for p in (tmp_path / "whole" / "dynamics").iterdir()]
        + [f"eval/{p.name}" for p in (tmp_path / "whole" / "eval").iterdir()]
    ):
        assert _digest(tmp_path / "whole" / name) == _digest(tmp_path / "cut" / name), name


@pytest.mark.slow
def test_fsdp_sigkill_after_a_checkpoint_then_resume_equals_the_uninterrupted_fsdp_run(tmp_path, small_world):
    """SIGKILL to every process of an FSDP run (no handler runs): the resumed run ends with the
    weights, metrics and group table of a run never killed."""
    import signal
    import time

    # warmup_cap=null: the capped warm-up depends on trainer.max_steps, which differs between the runs
    every = ["callbacks.stop_checkpoint.every_n_steps=3", "trainer.val_check_interval=5", "optim.warmup_cap=null"]
    every += ["callbacks.toxicity_eval.every_n_steps=1000"]
    killed = tmp_path / "killed"
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "lightning_dpo.train", *RUN, *FSDP, *every, "trainer.max_steps=100000", f"hydra.run.dir={killed}"]
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 600
    while not (killed / "dynamics" / "step_0000010.safetensors").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()[-3000:] if process.stdout else ""
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # both ranks, as a node's out-of-memory killer or a cluster's hard stop would
    process.communicate(timeout=60)
    target = int(_checkpoint(killed)["global_step"]) + 4
    _train(killed, FSDP + every + [f"trainer.max_steps={target}", "ckpt_path=last"])
    _train(tmp_path / "straight", FSDP + every + [f"trainer.max_steps={target}"])
    a, b = _checkpoint(killed), _checkpoint(tmp_path / "straight")
    assert a["global_step"] == b["global_step"] == target
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in b["state_dict"])
    for name in ("metrics.csv", "dynamics/groups.csv"):
        with open(killed / name) as x, open(tmp_path / "straight" / name) as y:
            assert list(csv.DictReader(x)) == list(csv.DictReader(y)), name


@pytest.mark.slow
def test_lora_and_fsdp_compose(tmp_path, small_world):
    _train(tmp_path / "single", SINGLE + LORA)
    _train(tmp_path / "fsdp", FSDP + LORA)
    _assert_same_run(tmp_path / "single", tmp_path / "fsdp")
    x = load_file(tmp_path / "single" / "adapter" / "adapter_model.safetensors")
    y = load_file(tmp_path / "fsdp" / "adapter" / "adapter_model.safetensors")
    assert x.keys() == y.keys() and any("lora_B" in k and x[k].abs().max() > 0 for k in x)
    assert all(torch.allclose(x[k], y[k], atol=ATOL) for k in x)


def test_fsdp_preset_composes_and_refuses_what_it_sets():
    from hydra.utils import instantiate

    from lightning_dpo.training.sharding import FSDP2Strategy
    from lightning_dpo.utils.errors import ConfigError

    cfg = compose_train(["trainer=fsdp"])
    assert cfg.trainer.strategy._target_.endswith("FSDP2Strategy") and cfg.trainer.precision == "32-true"
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDP2Strategy) and strategy.mixed_precision == "auto"
    with pytest.raises(ConfigError, match="trainer.strategy.data_parallel_size"):
        FSDP2Strategy(data_parallel_size=2)
    with pytest.raises(ConfigError, match="trainer.strategy.mixed_precision"):
        FSDP2Strategy(mixed_precision="fp8")


def test_probe_token_shards_are_equal_and_the_padding_adds_nothing():
    from lightning_dpo.dynamics.probe_set import ProbeTokens

    n, width = 5, 6
    tokens = ProbeTokens(
        torch.arange(n * width).view(n, width),
        torch.ones(n, width, dtype=torch.long),
        torch.ones(n, width, dtype=torch.bool),
        torch.tensor([0, 1, 0, 1, 0]),
    )
    shards = [tokens.shard(rank, 2) for rank in range(2)]
    assert [s.input_ids.shape[0] for s in shards] == [3, 3]
    assert torch.equal(shards[0].input_ids, tokens.input_ids[[0, 2, 4]])
    assert torch.equal(shards[1].input_ids[:2], tokens.input_ids[[1, 3]])
    assert not shards[1].positions[2].any()  # the padded row averages no position
    assert int(sum(s.positions.sum() for s in shards)) == n * width


def test_decoding_stops_only_when_every_process_is_done():
    """`all_finished` decides the early stop: a process whose rows all ended keeps decoding (pads)
    while another has not, so both run as many forwards."""
    from helpers.models import build_tiny, tiny_gpt2_config
    from lightning_dpo.evaluation.generation import greedy_continue

    model = build_tiny(tiny_gpt2_config()).eval()
    ids = torch.tensor([[5, 6, 7]])
    mask = torch.ones_like(ids)
    first = greedy_continue(model, ids, mask, 6, eos_token_id=None, pad_token_id=0).new_tokens
    eos = int(first[0, 0])  # the first token ends the row at once
    alone = greedy_continue(model, ids, mask, 6, eos_token_id=eos, pad_token_id=0)
    calls = []
    synced = greedy_continue(
        model, ids, mask, 6, eos_token_id=eos, pad_token_id=0, all_finished=lambda done: calls.append(done) or len(calls) >= 4
    )
    assert alone.new_tokens.shape[1] == 1 and synced.new_tokens.shape[1] == 4  # ran on, as another process asked
    assert torch.equal(synced.new_tokens[0, 1:], torch.zeros(3, dtype=torch.long))  # the finished row only pads
    assert synced.continuation_ids(0)[:1] == alone.continuation_ids(0)[:1]


ARCHITECTURES = {  # the decoder families the presets name, at the toy world's width (its probes are 64 wide)
    "llama": {},
    "mistral": {"sliding_window": None},
    "gemma": {"head_dim": 16},
    "gemma2": {"head_dim": 16, "sliding_window": 64, "query_pre_attn_scalar": 16},
}


@pytest.mark.slow
@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_two_process_fsdp_equals_one_process_on_every_preset_architecture(tmp_path, small_world, architecture):
    """fully_shard per decoder block of Llama, Mistral, Gemma and Gemma-2 (random tiny models on the demo
    world's tokenizer and probes): the same run as one process, every dynamics file included."""
    config = toy_width_decoder(architecture, 640, **ARCHITECTURES[architecture])
    # the world's files copied out of it: a run on its own model may not take assets from inside the demo world
    world = Path(shutil.copytree(small_world.path, tmp_path / "world"))
    model = [
        "model.name_or_path=null",
        f"model.config={json.dumps(config).replace(chr(34), '')}",
        f"model.tokenizer={world / 'base_model'}",
        f"data.path={world / 'pairs.jsonl'}",
        f"probe.path={world / 'probe.safetensors'}",
        f"probe.eval_data={world / 'probe_texts.jsonl'}",
        "probe.allow_weak=true",  # a random model reads the trained probe's texts no better than chance
        f"prompts.source={world / 'eval_prompts.jsonl'}",
        f"scorer.words_file={world / 'insults.txt'}",
        f"callbacks.neuron_dynamics.probes.workplace.path={world / 'workplace_probe.safetensors'}",
        f"callbacks.neuron_dynamics.probes.workplace.eval_data={world / 'workplace_texts.jsonl'}",
        "+callbacks.neuron_dynamics.probes.workplace.allow_weak=true",
        f"callbacks.toxicity_eval.perplexity_text={world / 'lm_eval.txt'}",
        f"callbacks.toxicity_eval.f1_data={world / 'gold.jsonl'}",
    ]
    _train(tmp_path / "single", SINGLE + model)
    _train(tmp_path / "fsdp", FSDP + model)
    _assert_same_run(tmp_path / "single", tmp_path / "fsdp")


# -- the commands under torchrun: analyze's interventions and evaluate on a sharded model -----------------
ANALYZE = [
    "interventions.ablate_top=[8]",
    "interventions.ablate_top_positive=[]",
    "interventions.patch_groups=[[TP-],[TP-,TN+,AP+,AN-]]",
    "interventions.subtract={layer: 1, scale: 5}",  # the MLP-output hook, beside the activation hooks
]


@pytest.fixture(scope="module")
def analysed_run(tmp_path_factory, small_world) -> Path:
    """A DPO run whose 15 evaluation prompts split into shards of 8 and 7 (the padding is exercised)."""
    run_dir = tmp_path_factory.mktemp("analysed")
    _train(run_dir, ["trainer.max_steps=12", "optim.lr=1e-3", "data.batch_size=4"])
    return run_dir


def _command(name: str, args: list[str], processes: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    launch = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}"] if processes > 1 else [sys.executable]
    result = subprocess.run([*launch, "-m", f"lightning_dpo.{name}", *args], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def _assert_rows_close(single: list[dict[str, str]], sharded: list[dict[str, str]], rel: float, abs_: float = 1e-6) -> None:
    assert len(single) == len(sharded) and single
    for a, b in zip(single, sharded):
        assert a.keys() == b.keys()
        for key, value in a.items():
            try:
                x, y = float(value), float(b[key])
            except ValueError:  # labels, the scorer's name, `within_fluency`
                assert value == b[key], key
                continue
            assert y == pytest.approx(x, rel=rel, abs=abs_, nan_ok=True), f"{a.get('intervention') or a.get('group')}: {key}"


def test_analyze_under_torchrun_shards_both_models_and_gives_one_process_tables(tmp_path, analysed_run):
    """Table 1 and the group table of `analyze` with base and DPO models sharded over 2 processes
    (FSDP2, gloo) equal one process's: the same selected neurons, the same generations, every number
    within float summation order (the patched values are means all-reduced across processes)."""
    args = [f"dpo={analysed_run}", *ANALYZE]
    _command("analyze", [*args, f"out={tmp_path / 'single'}"], processes=1)
    sharded = _command("analyze", [*args, f"out={tmp_path / 'fsdp'}"], processes=2)
    assert "sharded over 2 processes (FSDP2)" in sharded.stdout + sharded.stderr
    assert sharded.stdout.count("wrote ") == 1  # the main process writes and prints
    single_table, sharded_table = _rows(tmp_path / "single" / "table.csv"), _rows(tmp_path / "fsdp" / "table.csv")
    labels = [r["intervention"] for r in single_table]
    assert "subtract probe direction at layer 1 (scale 5)" in labels and "ablate top 8 toxic neurons" in labels
    _assert_rows_close(single_table, sharded_table, rel=1e-5)
    _assert_rows_close(_rows(tmp_path / "single" / "groups.csv"), _rows(tmp_path / "fsdp" / "groups.csv"), rel=1e-5)
    assert (tmp_path / "single" / "generations.jsonl").read_text() == (tmp_path / "fsdp" / "generations.jsonl").read_text()
    analysis = json.loads((tmp_path / "fsdp" / "analysis.json").read_text())
    assert analysis["evaluation"]["processes"] == 2 and analysis["probe_set"]["prompts"] == 32


@pytest.mark.slow
def test_evaluate_under_torchrun_writes_one_process_files(tmp_path, analysed_run):
    """`evaluate` with the model sharded over 2 processes: eval.json and generations.jsonl byte for byte."""
    _command("evaluate", [f"model.name_or_path={analysed_run}", f"out={tmp_path / 'single'}"], processes=1)
    _command("evaluate", [f"model.name_or_path={analysed_run}", f"out={tmp_path / 'fsdp'}"], processes=2)
    for name in ("eval.json", "generations.jsonl"):
        assert (tmp_path / "single" / name).read_bytes() == (tmp_path / "fsdp" / name).read_bytes(), name


@pytest.mark.unit
def test_a_sharded_share_is_padded_to_the_longest_and_an_unsharded_one_is_not():
    from lightning_dpo.utils.processes import Processes

    items = ["a", "b", "c", "d", "e"]
    assert Processes(0, 2, sharded=True).split(items) == (["a", "c", "e"], 0)
    assert Processes(1, 2, sharded=True).split(items) == (["b", "d", "a"], 1)  # as many forwards as rank 0
    assert Processes(1, 2, sharded=False).split(items) == (["b", "d"], 0)
    assert Processes(2, 3, sharded=True).split(items) == (["c", "a"], 1)
    assert Processes().split(items) == (items, 0) and Processes().interleave(items) == items
