"""Files: local or gs:// paths (`paths`), ADM-format .npz streaming (`npz`), PNG grids (`images`).

May import: `sd_jax.errors` only.
"""
