"""Inspect mode: parameter count equals a real init, FLOPs from XLA scale as the math says.

Budget: ~30 s on 2 cores (one compiled tiny init, a few lowerings, one launch.py child).
"""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import numpy as np
from model_utils import inputs, jit, key, tiny_config
from utils import run_python

from sd_jax.models import build_model, init
from sd_jax.models import summary as model_summary
from sd_jax.tools import inspect as inspect_model


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_inspect_params_match_real_init(capsys):
    config = tiny_config("imagenet256", "uvit", transformer_depth=2)
    inspect_model.run(config)
    out = capsys.readouterr().out
    summary = last_json(out)
    model = build_model(config.model)
    z, logsnr, labels = inputs(config.model)
    params = nn.unbox(jit(model.init)(key(0), z, logsnr, labels))["params"]
    assert summary["params"] == sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    assert summary["flops_per_image"] > 0
    assert "transformer*" in out and "total" in out
    # The per-module roll-up of clu's counts, against the real arrays' sizes.
    rows = model_summary.module_rows(init.param_shapes(config.model))
    real = {}
    for name, sub in params.items():
        group = "transformer*" if name.startswith("transformer") else name
        real[group] = real.get(group, 0) + sum(int(np.prod(x.shape)) for x in jax.tree.leaves(sub))
    assert {r.module: r.params for r in rows} == real
    depth = config.model.transformer_depth
    assert next(r.blocks for r in rows if r.module == "transformer*") == depth > 1


def test_flops_scale_with_batch_and_depth():
    cfg1 = tiny_config("imagenet512", "uvit", transformer_depth=1).model
    cfg3 = tiny_config("imagenet512", "uvit", transformer_depth=3).model
    p1, p3 = init.param_shapes(cfg1), init.param_shapes(cfg3)
    f1, f3 = model_summary.forward_flops(cfg1, p1), model_summary.forward_flops(cfg3, p3)
    assert np.isclose(model_summary.forward_flops(cfg1, p1, batch=4), 4 * f1, rtol=1e-3)
    # Two extra blocks of width D on L tokens: matmuls 2 * L * 12 D^2, attention 4 * L^2 * D.
    width, tokens = cfg1.base_channels * cfg1.channel_multipliers[-1], 2 * 2
    per_block = 2 * tokens * 12 * width**2 + 4 * tokens**2 * width
    assert np.isclose((f3 - f1) / 2, per_block, rtol=0.15), ((f3 - f1) / 2, per_block)


def test_inspect_imagenet512_is_about_2b_without_tensorflow():
    result = run_python("""
        import sys
        from configs import imagenet512
        from sd_jax import main
        main.run_cli(imagenet512.get_config(), workdir=None, mode="inspect")
        print("tensorflow imported:", "tensorflow" in sys.modules)
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "tensorflow imported: False"
    summary = json.loads(lines[-2])
    assert 1.8e9 < summary["params"] < 2.1e9
    # Transformer matmuls alone: 2 * 256 tokens * 1.8B params ~ 0.93 TFLOP (docs/recipe.md 6).
    assert 0.93e12 < summary["flops_per_image"] < 1.4e12
