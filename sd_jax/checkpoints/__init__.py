"""Orbax checkpoints of the train state: async atomic saves, verified restores (`checkpointer`),
per-array checksums and the model-tree check (`integrity`).

May import: `sd_jax.io`, `sd_jax.sharding`, `sd_jax.errors`.
"""
