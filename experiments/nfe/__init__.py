"""Sample quality against network evaluations per sampler (README.md)."""
