"""`python -m lightning_dpo.plot <run_dir>`: the figures of a run, as PNG files in <run_dir>/plots/.

The figures themselves: lightning_dpo/training/figures.py (training, evaluation) and lightning_dpo/dynamics/figures.py.
"""

from __future__ import annotations

import argparse
import sys

from lightning_dpo.dynamics.figures import make_plots
from lightning_dpo.training.figures import make_run_plots
from lightning_dpo.utils.errors import LightningDPOError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightning_dpo.plot", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run directory holding dynamics/ (from the NeuronDynamicsCallback)")
    args = parser.parse_args(argv)
    try:
        paths = make_run_plots(args.run_dir) + make_plots(args.run_dir)
    except (FileNotFoundError, LightningDPOError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
