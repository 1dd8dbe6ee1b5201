"""Evaluation: greedy generation, toxicity scorers, perplexity, F1 and neuron interventions."""
