"""The neuron side: reading and rewriting what a model's MLP neurons write.

    hooks.py          the one hook module: MLP output projections, value vectors, activation and residual hooks
    probe.py          the probe direction w (train, load a released tensor, embedding difference)
    snapshot.py       mean activations a_i and value projections p_i of every neuron (one model, one probe set)
    groups.py         contributions, changes, the eight groups (TP-, TN+, AP+, AN- and mirrors), shares
    interventions.py  ablation, patching, activation editing, direction subtraction
    steering.py       adding the probe direction to the residual stream
    pairs.py          preference pairs by steering (the make_pairs command and the demo world)
"""
