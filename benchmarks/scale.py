"""Memory and speed of one process, FSDP2 on two processes, and LoRA (issue 21), on the demo and on
SmolLM2-135M-Instruct; and what gathering a sharded weight costs against the alternative.

    python benchmarks/scale.py demo       # the demo world: 1 process, trainer=fsdp x 2, LoRA, LoRA + fsdp x 2
    python benchmarks/scale.py smollm2    # experiment=smollm2_toxicity, 12 steps: the same four
    python benchmarks/scale.py gather     # value projections of a sharded weight: gather then project,
                                          # or a partial product per shard and an all-reduce (2 processes)
    python benchmarks/scale.py analyze --run <run dir> [analyze overrides]
                                          # `analyze` in 1 process and under torchrun with 2 (both
                                          # models sharded): wall time and the largest process's peak RSS

Every run is a real `python -m lightning_dpo.train` with the StepTimer callback (step_timer.py):
per process, the median wall time of an optimizer step (steps with a snapshot or an evaluation
are few and do not move the median) and the peak resident memory. The global batch is the same in
every configuration (the per-process batch halves on two processes). Threads: 2 for one process,
1 per process for two (the machine's 2 cores either way).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

DEMO = ["trainer.max_steps=40"]
SMOLLM2 = [
    "experiment=smollm2_toxicity",
    "trainer.max_steps=12",
    "trainer.val_check_interval=6",
    "callbacks.neuron_dynamics.every_n_steps=6",
    "callbacks.toxicity_eval.every_n_steps=12",
    "analyze=null",
]
LORA = {
    "demo": "+model.lora={r: 8, alpha: 16, target_modules: [c_attn, c_proj, c_fc]}",
    "smollm2": "model.lora={r: 8, alpha: 16, target_modules: [q_proj, v_proj, o_proj, up_proj, down_proj]}",
}
LORA_LR = {"demo": "optim.lr=1e-3", "smollm2": "optim.lr=2e-4"}


def configurations(model: str) -> list[tuple[str, list[str], int]]:
    """(name, overrides, processes); the global batch is 8 (demo) or 4 (SmolLM2) pairs everywhere."""
    base = DEMO if model == "demo" else SMOLLM2
    batch = 8 if model == "demo" else 4
    one = [f"data.batch_size={batch}"]
    two = ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2", f"data.batch_size={batch // 2}"]
    lora = [LORA[model], LORA_LR[model]]
    return [
        ("1 process", base + one, 1),
        ("FSDP2, 2 processes", base + two, 2),
        ("LoRA, 1 process", base + one + lora, 1),
        ("LoRA + FSDP2, 2 processes", base + two + lora, 2),
    ]


def run(name: str, overrides: list[str], processes: int, out: Path) -> dict:
    run_dir = out / name.replace(" ", "_").replace(",", "").replace("+", "plus")
    timer = run_dir / "timer"
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        WANDB_MODE="disabled",
        OMP_NUM_THREADS=str(2 // processes),
        PYTHONPATH=os.pathsep.join([str(BENCH), os.environ.get("PYTHONPATH", "")]),
    )
    cmd = [
        sys.executable,
        "-m",
        "lightning_dpo.train",
        *overrides,
        f"hydra.run.dir={run_dir}",
        "report=false",
        "+callbacks.step_timer._target_=step_timer.StepTimer",
        f"+callbacks.step_timer.out_dir={timer}",
    ]
    start = time.perf_counter()
    result = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    ranks = [json.loads(p.read_text()) for p in sorted(timer.glob("step_times_rank*.json"))]
    steps = ranks[0]["step_seconds"]
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    return {
        "name": name,
        "processes": processes,
        "median_step_s": statistics.median(steps),
        "steps": len(steps),
        "peak_rss_mib": [round(r["peak_rss_mib"]) for r in ranks],
        "wall_s": round(wall, 1),
        "checkpoint_mib": round(checkpoint.stat().st_size / 2**20) if checkpoint.exists() else None,
    }


def gather_benchmark(repeats: int) -> None:
    """Two gloo processes, a (d_mlp, d_model) weight sharded on dim 0 like FSDP2's: the value
    projections on 64 directions by gathering the weight (`full_tensor`, what the project does) or
    by a local product and an all-gather of the (d_mlp, 64) result."""
    script = f"""
import os, time, statistics, torch, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import distribute_tensor, Shard
dist.init_process_group("gloo")
mesh = init_device_mesh("cpu", (2,))
rank = dist.get_rank()
for d_mlp, d_model in ((4096, 1024), (14336, 4096)):
    torch.manual_seed(0)
    weight = distribute_tensor(torch.randn(d_mlp, d_model), mesh, [Shard(0)])
    units = torch.nn.functional.normalize(torch.randn(64, d_model), dim=1)
    def gathered():
        return weight.full_tensor() @ units.t()
    def partial():
        local = weight.to_local() @ units.t()
        parts = [torch.empty_like(local) for _ in range(2)]
        dist.all_gather(parts, local)
        return torch.cat(parts)
    assert torch.allclose(gathered(), partial(), atol=1e-4)
    for name, fn in (("gather the weight, then project", gathered), ("project the shard, all-gather the result", partial)):
        times = []
        for _ in range({repeats}):
            dist.barrier(); start = time.perf_counter(); fn(); times.append(time.perf_counter() - start)
        moved = d_mlp * d_model * 4 / 2 if "gather the weight" in name else d_mlp * 64 * 4 / 2
        if rank == 0:
            print(f"| ({{d_mlp}}, {{d_model}}) | {{name}} | {{statistics.median(times) * 1000:.1f}} ms | {{moved / 2**20:.2f}} MiB |")
dist.destroy_process_group()
"""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as handle:
        handle.write(script)
    print("| weight (d_mlp, d_model) | method | median time | received per process |\n|---|---|---|---|")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", handle.name], check=True, env=env)


def analyze_benchmark(run_dir: str, overrides: list[str], out: Path) -> None:
    """`python -m lightning_dpo.analyze` on a run, in one process (2 threads) and sharded over two
    (torchrun, 1 thread each); a wrapper process reports its children's largest peak RSS."""
    wrapper = "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
    wrapper += "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024, file=sys.stderr); sys.exit(rc)"
    print("| analyze | wall (s) | largest process's peak RSS (MiB) |\n|---|---|---|")
    for processes in (1, 2):
        launch = ["-m", "torch.distributed.run", "--nproc_per_node=2"] if processes > 1 else []
        cmd = [sys.executable, "-c", wrapper, sys.executable, *launch, "-m", "lightning_dpo.analyze", f"dpo={run_dir}"]
        cmd += [*overrides, f"out={out / f'analysis_{processes}'}"]
        env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS=str(2 // processes))
        start = time.perf_counter()
        result = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if result.returncode != 0:
            raise SystemExit(f"analyze on {processes} process(es) failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
        peak = result.stderr.strip().splitlines()[-1]
        print(f"| {'1 process' if processes == 1 else 'FSDP2, 2 processes (torchrun)'} | {wall:.1f} | {peak} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["demo", "smollm2", "gather", "analyze"])
    parser.add_argument("--run", default=None, help="analyze: the run directory to analyze")
    parser.add_argument("--out", default=None, help="where the runs go (default: a temporary folder)")
    parser.add_argument("--repeats", type=int, default=20)
    args, extra = parser.parse_known_args()
    if args.what == "analyze":
        if not args.run:
            parser.error("analyze needs --run <run dir>")
        analyze_benchmark(args.run, extra, Path(args.out or tempfile.mkdtemp(prefix="scale-analyze-")))
        return
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.what == "gather":
        gather_benchmark(args.repeats)
        return
    out = Path(args.out or tempfile.mkdtemp(prefix=f"scale-{args.what}-"))
    print(f"runs in {out}")
    print("| configuration | median s/step | peak RSS per process (MiB) | last.ckpt (MiB) | wall (s) |\n|---|---|---|---|---|")
    for name, overrides, processes in configurations(args.what):
        r = run(name, overrides, processes, out)
        print(
            f"| {r['name']} | {r['median_step_s']:.3f} | {' / '.join(map(str, r['peak_rss_mib']))} | {r['checkpoint_mib']} | {r['wall_s']} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
