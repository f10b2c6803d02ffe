"""Scoring samples: FID / sFID / IS (`fid`, `inception`), FD-digits (`digits_net`, `digits_eval`),
pixel checks (`sample_quality`), and `--mode=eval` (`mode`).

May import: `sd_jax.checkpoints`, `sd_jax.data`, `sd_jax.io`, `sd_jax.errors`.
"""
