"""Parts of ``benchmarks/finetune_isolation.py``: records with secrets, arms, training, measurement, report."""
