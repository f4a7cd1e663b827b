"""Evaluation: benchmarks and reports (evaluate.py), any model behind `--model` (models.py: run
directory, ONNX, TorchScript, package.module:factory), insightface .bin pair files
(insightface_bin.py), named suites with their table and plot (suite.py), and the metrics on numpy
arrays (metrics.py)."""
