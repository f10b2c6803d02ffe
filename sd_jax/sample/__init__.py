"""Sampling a trained model: the compiled sampler on a mesh (`generate`), params-only restore
(`restore`), `--mode=sample` (`mode`, its shards in `sd_jax.io.shards`) and its cost (`cost`).

May import: `sd_jax.specs`, `sd_jax.checkpoints`, `sd_jax.models`, `sd_jax.diffusion`,
`sd_jax.sharding`, `sd_jax.io`, `sd_jax.errors`.
"""
