"""lightning-dpo: DPO with PyTorch Lightning and Hydra, with live neuron-group dynamics.

Layout (a batch travels top to bottom):
    data/        preference rows -> tokenized, right-padded chosen/rejected batches
    model/       policy + frozen reference, sequence log-probs, the loss table, the LightningModule
    train.py     the Hydra entry point (python -m lightning_dpo.train)
    mlp.py       one hook module for every architecture's MLP output projection
    dynamics/    probe set -> mean activations -> per-neuron contributions -> group shares -> files
    evaluation/  generation, scorers, perplexity, F1, interventions
    analyze.py, compare.py, plot.py, probe.py, make_pairs.py, evaluate.py: commands
"""

__version__ = "0.1.0"
