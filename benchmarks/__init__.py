"""Benchmarks: loraship against honest baselines (`make bench*`); not part of the wheel."""
