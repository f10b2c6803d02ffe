"""The shipped config files. `pip install` installs them as `sd_jax.configs` (pyproject.toml); in
a checkout `import sd_jax` maps `sd_jax.configs` to this folder. A config file builds on another
with `from sd_jax.configs import base`."""
