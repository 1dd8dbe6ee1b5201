#!/usr/bin/env bash
# The GPU check (issue 21), one script of at most 8 minutes that writes everything to $OUT:
#   1. the throughput race against TRL: benchmarks/train_throughput.py --config gpu (GPT-2-medium
#      shape, 32 pairs, length 128, bf16), 2 repetitions          -> $OUT/throughput.log
#   2. the GPT-2-medium bf16 snapshot: benchmarks/snapshot.py gpt2-medium --dtype bf16 (98,304
#      neurons, 1,199 prompts x 20 positions)                     -> $OUT/snapshot.log
#   3. one FSDP2 run on one GPU (trainer=fsdp, bf16 mixed precision) on a small demo world, with
#      the dynamics and the evaluation, step times and peak memory -> $OUT/fsdp.log
#   4. one LoRA run on one GPU, the same world                     -> $OUT/lora.log
#   $OUT/summary.txt: each part's exit status and time; $OUT/env.txt: the GPU and the versions.
#
# On the lent machine (the `device` tool of this workplace), the image lacks a few packages; fetch
# them here first, as wheels for its Python 3.12, into .whl/ (ignored by git):
#   bash benchmarks/gpu_check.sh --fetch-wheels
# then run there, carrying .whl:   bash benchmarks/gpu_check.sh
# Each part has its own time limit; a part that fails or times out does not stop the others.
set -u
cd "$(dirname "$0")/.."

WHEELS="hydra-core==1.3.8 omegaconf==2.3.1 trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19"
if [ "${1:-}" = "--fetch-wheels" ]; then
  grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl $WHEELS
  # antlr4-python3-runtime (omegaconf's parser) has no wheel for 3.12 on PyPI: build one here
  python3 -m pip wheel --no-deps -w .whl "antlr4-python3-runtime==4.9.3"
  exit $?
fi

OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:$PWD/benchmarks:${PYTHONPATH:-}
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled PYTHONUNBUFFERED=1 LIGHTNING_DPO_CACHE=/tmp/lightning_dpo_cache

{ nvidia-smi; python3 -c "import sys, torch, lightning, transformers; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0)); print('lightning', lightning.__version__, 'transformers', transformers.__version__)"; } > "$OUT/env.txt" 2>&1

part() {  # part NAME SECONDS command...
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  echo "$name: exit $rc after $(( $(date +%s) - start )) s (limit $limit s)" >> "$OUT/summary.txt"
}

# a small demo world (built in seconds), GPU runs of 60 steps with the dynamics and the evaluation
WORLD="world.corpus_size=1500 world.num_pairs=240 world.num_eval_prompts=32 world.vocab_size=600 world.n_layer=2 world.n_embd=64 world.n_head=4 world.n_inner=128 world.pretrain_steps=150"
RUN="trainer.max_steps=60 trainer.val_check_interval=20 callbacks.neuron_dynamics.every_n_steps=20 callbacks.toxicity_eval.every_n_steps=30 report=false"
TIMER="+callbacks.step_timer._target_=step_timer.StepTimer"
summarize() {  # the step times and peak memory a StepTimer wrote
  python3 -c "import json, statistics, sys; r = json.load(open(sys.argv[1])); print('median s/step', statistics.median(r['step_seconds']), 'steps', len(r['step_seconds']), 'peak RSS MiB', round(r['peak_rss_mib']))" "$1/step_times_rank0.json" 2>&1
}

part throughput 170 python3 benchmarks/train_throughput.py --config gpu --repeats 2
part snapshot 100 python3 benchmarks/snapshot.py gpt2-medium --dtype bf16 --device cuda --prompts 1199 --batch-size 256 --repeats 3
# shellcheck disable=SC2086
part fsdp 100 python3 -m lightning_dpo.train $WORLD $RUN trainer=fsdp trainer.accelerator=gpu trainer.devices=1 \
  hydra.run.dir=/tmp/gpu_fsdp $TIMER +callbacks.step_timer.out_dir=/tmp/gpu_fsdp/timer
summarize /tmp/gpu_fsdp/timer >> "$OUT/fsdp.log"
# shellcheck disable=SC2086
part lora 100 python3 -m lightning_dpo.train $WORLD $RUN trainer=gpu "+model.lora={r: 8, alpha: 16, target_modules: [c_attn, c_proj, c_fc]}" \
  optim.lr=1e-3 hydra.run.dir=/tmp/gpu_lora $TIMER +callbacks.step_timer.out_dir=/tmp/gpu_lora/timer
summarize /tmp/gpu_lora/timer >> "$OUT/lora.log"
cat "$OUT/summary.txt"
