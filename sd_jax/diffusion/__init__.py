"""The diffusion process as pure functions of arrays: schedules, losses and samplers.

Owns: the noise schedules (t -> logSNR), the forward process and the v / eps / x0
parametrisations, the training loss and its weightings, the samplers and guidance, and
`DiffusionSpec` / `SamplingSpec`, the typed settings they take. Nothing here reads a config
file or does I/O, so every function jits together with any denoiser and is tested alone.

May import: `sd_jax.errors` only (and jax, numpy).
"""
