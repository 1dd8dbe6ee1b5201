"""`python -m lightning_dpo.probe`: build a probe direction and save it (`probe.safetensors`).

    python -m lightning_dpo.probe model.name_or_path=<hub id | folder | run dir | .ckpt> probe.source=train probe.data=<labelled file> out=probe.safetensors

The probe library (training, raw tensors, embedding differences): lightning_dpo/neurons/probe.py.
"""

from __future__ import annotations

import logging
from typing import Any

from lightning_dpo.evaluation.model_source import (
    describe_model_source,
    load_model_and_tokenizer,
)
from lightning_dpo.neurons.probe import Probe, build_probe, save_probe
from lightning_dpo.utils.torch_utils import resolve_device

log = logging.getLogger(__name__)


def run(cfg: Any) -> Probe:
    """The `probe` command: build the configured probe (conf/probe/) on the model and save it to `cfg.out`."""
    _, description = describe_model_source(cfg.model.name_or_path)
    log.info("building the probe on %s", description)
    model, tokenizer = load_model_and_tokenizer(cfg.model.name_or_path, cfg.model.tokenizer, cfg.model.dtype, cfg.model.get("gguf_file"))
    model.to(resolve_device(cfg.device))
    probe = build_probe(model, tokenizer, node=cfg.probe)
    save_probe(probe, cfg.out)
    print(f"saved {cfg.out}: d_model={probe.direction.numel()}, source: {probe.metadata.get('source')}")
    if probe.quality is not None:
        print(f"quality: {probe.quality.summary()}")
        print(f"top-20 tokens through the final norm and the unembedding: {probe.quality.top_tokens}")
    return probe


if __name__ == "__main__":
    from lightning_dpo.cli import hydra_command

    hydra_command(run, "probe")()
