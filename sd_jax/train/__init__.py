"""Training: the train state (`state`), the one train step and its loss forward (`step`), the loop
(`loop`), metrics and their writers (`metrics`, `logger`), stop signals (`stop`), and the periodic
sample grids and FIDs (`periodic`).

May import everything below it: `sd_jax.sample`, `sd_jax.eval`, `sd_jax.specs`,
`sd_jax.checkpoints`, `sd_jax.data`, `sd_jax.models`, `sd_jax.diffusion`, `sd_jax.sharding`,
`sd_jax.io`, `sd_jax.errors`.
"""
