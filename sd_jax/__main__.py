"""`python -m sd_jax`: the `sd-jax` command (`sd_jax/cli.py`), e.g. where the console script is
not on the PATH (a notebook's kernel)."""

from sd_jax.cli import main

if __name__ == "__main__":
    main()
