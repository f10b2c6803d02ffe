"""Scoring samples: FID / sFID / IS (`fid`, `inception`), FD-digits (`digits_net`, `digits_eval`),
photo metrics (`photo_metrics`, `photo_eval`), pixel checks (`sample_quality`), and `--mode=eval`
(`mode`; of a sampling job's shards as they complete: `partial`).

May import: `sd_jax.checkpoints`, `sd_jax.data`, `sd_jax.io`, `sd_jax.errors`.
"""
