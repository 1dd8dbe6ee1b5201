"""Model surgery: reading and rewriting what a model's MLP neurons and residual stream carry.

hooks.py          the one hook module: architecture adapters (decoder layers, MLP and attention
                  output projections, final norm), value vectors, activation and residual hooks
probe.py          the probe direction w (train, load a released tensor, embedding difference) and its quality
interventions.py  ablation, patching, direction subtraction (which neurons: dynamics/selection.py)
steering.py       adding the probe direction to the residual stream, in units of its norm
pairs.py          preference pairs by steering (the make_pairs command and the demo world)
"""
