"""Files: local or gs:// paths (`paths`), ADM-format .npz streaming (`npz`), PNG grids (`images`),
the resumable shards of a sampling run (`shards`), the workdir lock (`lock`).

May import: `sd_jax.errors` only.
"""
