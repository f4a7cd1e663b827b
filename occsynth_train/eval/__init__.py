"""Evaluation of trained runs: benchmarks and reports (evaluate.py), the metrics on numpy arrays
(metrics.py)."""
