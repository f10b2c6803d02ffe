"""Looking at a config without training it: `--mode=inspect` (`inspect`) and `--mode=plan` (`plan`).

May import `sd_jax.train` (plan traces the train step's own loss) and everything below it.
"""
