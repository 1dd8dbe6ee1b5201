"""Evaluation: greedy generation, toxicity scorers, perplexity, F1, one model's evaluation, and what a run records for it."""
