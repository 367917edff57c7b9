"""The memorization benchmark's parts: settings, data, baselines, training, metrics and the report.

``benchmarks/memorization.py`` is the command; this package holds what it runs, split by
concern so that the sweep script (``benchmarks/memorization_sweep.py``) reuses the same data,
training and measurement code as the benchmark itself.
"""
