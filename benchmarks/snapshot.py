"""Speed of one neuron-dynamics snapshot, and the callback's share of the demo's training time.

    python benchmarks/snapshot.py demo            # the demo model, 1,199 prompts x 20 positions
    python benchmarks/snapshot.py gpt2-medium     # GPT-2-medium shape (random weights), 98,304 neurons
        [--prompts 1199] [--batch-size 256] [--dtype bf16] [--device cuda]
    python benchmarks/snapshot.py callback-share  # the demo training with its default callbacks
    python benchmarks/snapshot.py hooks           # what the hooks add to the probe set's forward

A snapshot is `take_snapshot` on the fixed probe tokens (prompts of 32 tokens + a 20-token
continuation, averaged over the 20 predicting positions): the transformer body's forward with
the c_proj pre-hooks, fp32 sums, and the value projections. Building the tokens (the reference's
greedy continuation, once per run) is timed separately.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch

ROOT = Path(__file__).resolve().parents[1]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_snapshot(model, vocab: int, prompts: int, batch_size: int, dtype: str, device: str, repeats: int = 3, warmup: bool = True) -> dict:
    from lightning_dpo.dynamics import build_probe_tokens, take_snapshot

    model = model.to(device).eval()
    g = torch.Generator().manual_seed(0)
    prompt_ids = [torch.randint(1, vocab, (32,), generator=g).tolist() for _ in range(prompts)]
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()
    with autocast:
        sync()
        start = time.perf_counter()
        tokens = build_probe_tokens(model, prompt_ids, pad_token_id=0, num_positions=20, batch_size=batch_size)
        sync()
        build_s = time.perf_counter() - start
        unit = torch.randn(model.config.n_embd, generator=g)
        if warmup:
            take_snapshot(model, tokens, unit, step=0, batch_size=batch_size)
        times = []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            snap = take_snapshot(model, tokens, unit, step=0, batch_size=batch_size)
            sync()
            times.append(time.perf_counter() - start)
    return {
        "neurons": snap.mean_activation.numel(),
        "prompts": prompts,
        "positions": int(tokens.positions.sum()),
        "token_build_s": build_s,
        "snapshot_s_median": statistics.median(times),
        "snapshot_s_all": times,
    }


def bench_demo(args) -> None:
    from lightning_dpo.model.loading import load_causal_lm
    from lightning_dpo.toy import ToyWorld
    from lightning_dpo.utils.cache import default_cache_dir

    world = ToyWorld(dir=str(Path(default_cache_dir()) / "toy_world" / "seed0")).build()
    model = load_causal_lm(world.base_model)
    print(
        time_snapshot(
            model, model.config.vocab_size, args.prompts, args.batch_size, args.dtype, args.device, args.repeats, not args.no_warmup
        )
    )


def bench_gpt2_medium(args) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=24, n_embd=1024, n_head=16, vocab_size=50257))
    print(time_snapshot(model, 50257, args.prompts, args.batch_size, args.dtype, args.device, args.repeats, not args.no_warmup))


def bench_callback_share(args) -> None:
    """Run the demo (default config) and split its fit time into the dynamics callback's hooks
    (probe training, probe tokens, every snapshot, files) and the rest."""
    import lightning as L
    from hydra import compose, initialize_config_dir

    from lightning_dpo.callbacks.neuron_dynamics import NeuronDynamicsCallback
    from lightning_dpo.toy.config import register_toy_resolver
    from lightning_dpo.train import train
    from lightning_dpo.utils.config import register_resolvers

    register_resolvers()
    register_toy_resolver()
    spent = {"on_train_start": 0.0, "on_train_batch_end": 0.0, "on_train_end": 0.0}

    def timed(hook, method):
        def wrapper(self, *a, **k):
            start = time.perf_counter()
            try:
                return method(self, *a, **k)
            finally:
                spent[hook] += time.perf_counter() - start

        return wrapper

    for hook in spent:
        setattr(NeuronDynamicsCallback, hook, timed(hook, getattr(NeuronDynamicsCallback, hook)))
    fit_time = {}
    original_fit = L.Trainer.fit

    def timed_fit(self, *a, **k):
        start = time.perf_counter()
        original_fit(self, *a, **k)
        fit_time["s"] = time.perf_counter() - start

    L.Trainer.fit = timed_fit
    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"paths.output_dir={tmp}", *args.overrides])
        train(cfg)
    dyn = cfg.callbacks.neuron_dynamics
    total = sum(spent.values())
    periodic = spent["on_train_batch_end"] + spent["on_train_end"]
    print(
        {
            "fit_s": round(fit_time["s"], 3),
            "callback_s": round(total, 3),
            "share_of_fit_time": round(total / fit_time["s"], 4),
            "set_up_s (probe, tokens, step-0 snapshot)": round(spent["on_train_start"], 3),
            "periodic_s": round(periodic, 3),
            "periodic_share": round(periodic / fit_time["s"], 4),
            "every_n_steps": dyn.every_n_steps,
            "max_prompts": dyn.max_prompts,
            "max_steps": cfg.trainer.max_steps,
        }
    )


def bench_hooks(args) -> None:
    """The demo model on 64 random 32-token prompts + a 20-token continuation, two random probes:
    the bare transformer body's forward against `measure` without and with the component split,
    called in turn `--calls` times each (medians, in ms); the difference is what the hooks add."""
    from lightning_dpo.dynamics import build_probe_tokens
    from lightning_dpo.dynamics.measure import measure
    from lightning_dpo.model.loading import load_causal_lm
    from lightning_dpo.toy import ToyWorld
    from lightning_dpo.utils.cache import default_cache_dir
    from lightning_dpo.utils.torch_utils import position_ids_from_mask

    world = ToyWorld(dir=str(Path(default_cache_dir()) / "toy_world" / "seed0")).build()
    model = load_causal_lm(world.base_model).eval()
    g = torch.Generator().manual_seed(0)
    tokens = build_probe_tokens(
        model, [torch.randint(1, model.config.vocab_size, (32,), generator=g).tolist() for _ in range(64)], 0, 20, 256
    )
    units = {name: torch.nn.functional.normalize(torch.randn(model.config.n_embd, generator=g), dim=0) for name in ("a", "b")}
    body = getattr(model, "base_model", model)

    def forward() -> None:
        with torch.no_grad():
            body(
                input_ids=tokens.input_ids,
                attention_mask=tokens.attention_mask,
                position_ids=position_ids_from_mask(tokens.attention_mask),
                use_cache=False,
            )

    calls = {
        "forward": forward,
        "measure_neurons": lambda: measure(model, tokens, units, 0, 256, components=False),
        "measure_with_components": lambda: measure(model, tokens, units, 0, 256, components=True),
    }
    times: dict[str, list[float]] = {k: [] for k in calls}
    for fn in calls.values():
        fn()  # warm-up
    for _ in range(args.calls):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append(1000 * (time.perf_counter() - start))
    medians = {f"{k}_ms": round(statistics.median(v), 1) for k, v in times.items()}
    medians["hooks_ms"] = round(medians["measure_with_components_ms"] - medians["forward_ms"], 1)
    print(medians)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["demo", "gpt2-medium", "callback-share", "hooks"])
    parser.add_argument("--prompts", type=int, default=1199)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calls", type=int, default=40, help="hooks: calls of each kind")
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up snapshot (slow CPU runs)")
    parser.add_argument("overrides", nargs="*", help="callback-share: Hydra overrides of the demo config")
    args = parser.parse_args(argv)
    print(
        f"torch {torch.__version__}, device {args.device}"
        + (
            f" ({torch.cuda.get_device_name(0)})"
            if args.device.startswith("cuda")
            else f", {os.cpu_count()} CPUs, {torch.get_num_threads()} threads"
        )
    )
    {"demo": bench_demo, "gpt2-medium": bench_gpt2_medium, "callback-share": bench_callback_share, "hooks": bench_hooks}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
