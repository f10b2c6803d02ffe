"""Entry point: `python launch.py --config=configs/imagenet512.py --workdir=DIR [--mode=train]`.

A shim over `sd_jax.cli` (also installed as the `sd-jax` command by `pip install .`).
"""

from sd_jax.cli import main

if __name__ == "__main__":
    main()
