"""Studies, one folder each with a README of its result (experiments/README.md)."""
