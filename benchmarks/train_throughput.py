"""Training throughput: lightning-dpo's DPOModule step against TRL's DPOTrainer, in one process.

Same model (random weights, same seed), same data (synthetic pairs of fixed length), same batch,
max length, precision, optimiser (AdamW, gradient-norm clip 1.0) and reference handling (a live
frozen reference of the policy's dtype). Each framework runs `--steps` optimizer steps; the time
from the end of step `--warmup` to the end of the last step gives pairs/s. Repetitions alternate
the two and the medians are reported. The last line is `ratio=<our pairs/s / TRL's pairs/s>`.

    python benchmarks/train_throughput.py --config cpu     # tiny GPT-2, 8 pairs, length 64, fp32
    python benchmarks/train_throughput.py --config gpu     # GPT-2-medium shape, 32 pairs, length 128, bf16
    python benchmarks/train_throughput.py --loss-types sigmoid,sft,ipo,simpo,orpo   # ours only: each loss.type's cost
Needs the `bench` extra (TRL).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

CONFIGS = {
    "cpu": {"model": {"n_layer": 4, "n_embd": 128, "n_head": 4}, "pairs": 8, "length": 64, "bf16": False},
    "gpu": {"model": {"n_layer": 24, "n_embd": 1024, "n_head": 16}, "pairs": 32, "length": 128, "bf16": True},
}
VOCAB = 50257


def word_tokenizer():
    """A tokenizer with GPT-2's vocabulary size (one token per synthetic word); no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCAB - 1)}
    vocab["<|endoftext|>"] = VOCAB - 1
    core = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    from tokenizers import decoders

    core.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|endoftext|>", unk_token="<|endoftext|>")


def synthetic_pairs(n: int, length: int, seed: int = 0) -> list[dict[str, str]]:
    """Prompt of length/2 - 1 words, completions of length/2 - 1 words (+ EOS): total < length."""
    g = torch.Generator().manual_seed(seed)
    half = length // 2 - 1

    def words(k: int) -> str:
        return " ".join(f"w{int(i)}" for i in torch.randint(0, VOCAB - 1, (k,), generator=g))

    return [{"prompt": words(half), "chosen": " " + words(half), "rejected": " " + words(half)} for _ in range(n)]


def build_policy(spec: dict, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB, n_positions=max(128, spec["length"]), resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **spec["model"]
    )
    return GPT2LMHeadModel(config)


class StepClock:
    """Wall-clock time at the end of every optimizer step."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def tick(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())

    def pairs_per_s(self, warmup: int, pairs: int) -> float:
        steps = len(self.times) - warmup
        return steps * pairs / (self.times[-1] - self.times[warmup - 1])


def run_ours(spec: dict, rows: list[dict], tokenizer, steps: int, workdir: Path, loss_type: str = "sigmoid") -> StepClock:
    import lightning as L

    from lightning_dpo.data import PreferenceDataModule
    from lightning_dpo.model import DPOModule, PreferenceLoss
    from lightning_dpo.model.schedules import warmup_schedule

    path = workdir / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    clock = StepClock()

    class Clock(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.tick()

    module = DPOModule(
        policy=build_policy(spec),
        loss=PreferenceLoss(type=loss_type.split("+"), beta=0.1, label_smoothing=0.01 if loss_type == "exo_pair" else 0.0),
        optimizer=partial(torch.optim.AdamW, lr=1e-6, fused=torch.cuda.is_available()),
        scheduler=partial(warmup_schedule, warmup_steps=0),
    )
    data = PreferenceDataModule(
        tokenizer=tokenizer,
        path=str(path),
        val_size=0,
        batch_size=spec["pairs"],
        max_prompt_length=spec["length"],
        max_completion_length=spec["length"],
        num_workers=0,
    )
    trainer = L.Trainer(
        accelerator="auto",
        devices=1,
        precision="bf16-mixed" if spec["bf16"] else "32-true",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        gradient_clip_val=1.0,
        log_every_n_steps=10,
        use_distributed_sampler=False,
        callbacks=[Clock()],
    )
    trainer.fit(module, datamodule=data)
    return clock


def run_trl(spec: dict, rows: list[dict], tokenizer, steps: int, workdir: Path) -> StepClock:
    import datasets
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    clock = StepClock()

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.tick()

    policy = build_policy(spec)
    reference = build_policy(spec)  # the same seed: an exact copy
    args = DPOConfig(
        output_dir=str(workdir / "trl"),
        per_device_train_batch_size=spec["pairs"],
        max_steps=steps,
        learning_rate=1e-6,
        beta=0.1,
        max_length=spec["length"],
        bf16=spec["bf16"],
        gradient_checkpointing=False,
        max_grad_norm=1.0,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        optim="adamw_torch_fused" if torch.cuda.is_available() else "adamw_torch",
        dataloader_num_workers=0,
        seed=0,
        lr_scheduler_type="constant",
        warmup_steps=0,
    )
    trainer = DPOTrainer(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[Clock()],
    )
    trainer.train()
    return clock


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (monotonic)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--loss-types",
        default=None,
        help="comma-separated loss.type values ('+' joins a combination, e.g. sigmoid+sft): "
        "lightning-dpo only, each type's pairs/s against the first's",
    )
    args = parser.parse_args(argv)
    spec = CONFIGS[args.config]
    if args.loss_types:
        return loss_table(spec, args)
    import lightning
    import transformers
    import trl

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}; torch {torch.__version__}, "
        f"lightning {lightning.__version__}, transformers {transformers.__version__}, trl {trl.__version__}"
    )
    print(f"config {args.config}: {spec}, {args.steps} steps ({args.warmup} warm-up), {args.repeats} repeats")
    tokenizer = word_tokenizer()
    rows = synthetic_pairs(spec["pairs"] * (args.steps + 2), spec["length"])
    results: dict[str, list[float]] = {"lightning-dpo": [], "trl": []}
    memory: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name, runner in (("lightning-dpo", run_ours), ("trl", run_trl)):
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                clock = runner(spec, rows, tokenizer, args.steps, Path(tmp))
                results[name].append(clock.pairs_per_s(args.warmup, spec["pairs"]))
                memory[name] = max(memory.get(name, 0.0), peak_memory_mb())
                print(f"repeat {repeat}: {name} {results[name][-1]:.2f} pairs/s", flush=True)
    ours, theirs = statistics.median(results["lightning-dpo"]), statistics.median(results["trl"])
    kind = "peak GPU memory allocated" if torch.cuda.is_available() else "process peak RSS so far (monotonic; TRL runs after ours)"
    print(f"lightning-dpo: {ours:.2f} pairs/s (median), {kind} {memory['lightning-dpo']:.0f} MiB")
    print(f"trl DPOTrainer: {theirs:.2f} pairs/s (median), {kind} {memory['trl']:.0f} MiB")
    print(f"ratio={ours / theirs:.2f}")
    return 0


def loss_table(spec: dict, args: argparse.Namespace) -> int:
    """Our training step's pairs/s per loss type (repetitions alternate the types; medians)."""
    types = args.loss_types.split(",")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}; torch {torch.__version__}"
    )
    print(f"config {args.config}: {spec}, {args.steps} steps ({args.warmup} warm-up), {args.repeats} repeats")
    tokenizer = word_tokenizer()
    rows = synthetic_pairs(spec["pairs"] * (args.steps + 2), spec["length"])
    results: dict[str, list[float]] = {t: [] for t in types}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for loss_type in types:
                clock = run_ours(spec, rows, tokenizer, args.steps, Path(tmp), loss_type)
                results[loss_type].append(clock.pairs_per_s(args.warmup, spec["pairs"]))
                print(f"repeat {repeat}: {loss_type} {results[loss_type][-1]:.2f} pairs/s", flush=True)
    first = statistics.median(results[types[0]])
    for loss_type in types:
        median = statistics.median(results[loss_type])
        print(
            f"{loss_type}: {median:.2f} pairs/s (median, range {min(results[loss_type]):.2f}-{max(results[loss_type]):.2f}), "
            f"{median / first:.2f} x {types[0]}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
