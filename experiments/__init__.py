"""Experiments: sweeps, aggregation, benchmark, SNR figure (scripts; not part of the package)."""
