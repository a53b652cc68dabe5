"""Benchmarks: ``python -m benchmarks.replay``."""
