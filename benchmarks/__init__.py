"""Benchmarks: ``python -m benchmarks.train_step`` and ``python -m benchmarks.evaluate``.

Each compares the framework with a plain-PyTorch reference measured side by side in one
process (interleaved repeats), and prints JSON plus a table.
"""
