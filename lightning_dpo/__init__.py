"""lightning-dpo: DPO with PyTorch Lightning and Hydra, with live neuron-group dynamics.

Layout (a batch travels top to bottom; no module imports one listed after it):
    utils/       files written atomically, errors, Hydra glue, tables and figures
    data/        files -> preference rows -> tokenized pairs -> resumable batches; prompt and text sets
    model/       policy + frozen reference, sequence log-probs, the loss table, the LightningModule
    evaluation/  generation, scorers, perplexity, F1, one model's evaluation, a run's record
    neurons/     hooks, probe, snapshots, groups, interventions, steering, steered pairs
    dynamics/    the probe set, a run's dynamics files and figures
    training/    step boundaries, the run directory, metrics.csv, W&B, checkpoints
    callbacks/   (installed from the top-level callbacks/ folder) the measuring and checkpoint callbacks
    toy/         the demo world
    train.py, probe.py, evaluate.py, analyze.py, make_pairs.py, compare.py, plot.py: the commands (cli.py starts them)
"""

__version__ = "0.1.0"
