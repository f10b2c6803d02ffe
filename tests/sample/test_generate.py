"""`generate.Sampler` with the tiny real network: batched guidance equals two passes, one program
per sampling setting, FSDP-sharded params cast and gathered once, outside the sampler loop.

One child process with 8 fake CPU devices and fast XLA compilation runs every check
(`child_checks`) and reports numbers; the tests judge them (budget: ~30 s on 2 cores).
"""

import json
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from utils import FAST_COMPILE, check, run_python, tiny_config

from sd_jax import models, sharding, specs
from sd_jax.diffusion import samplers as sampling
from sd_jax.models.init import init_params
from sd_jax.sample import generate, restore

GUIDANCE = {"sample.guidance_scale": 3.0, "sample.guidance_logsnr_min": -4.0,
            "sample.guidance_logsnr_max": 3.0}


def _params(config, mesh=None):
    """The model and random params, placed with their shardings on `mesh` if given (at init the
    output layers are zero, so every label would give the same output and guidance would change
    nothing)."""
    model = models.build_model(config.model)
    params = nn.meta.unbox(init_params(model, config.model, jax.random.key(0)))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [x + 0.2 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    params = jax.tree.unflatten(tree, leaves)
    if mesh is not None:
        abstract = restore.abstract_params(config, mesh)
        params = jax.tree.map(lambda x, a: jax.device_put(x, a.sharding), params, abstract)
    return model, params


def sequential_guided_output(denoise_fn, z_bhwc, logsnr_b, labels_b, *, guidance_scale,
                             guidance_logsnr_min, guidance_logsnr_max, null_label):
    """The reference: the conditional and the unconditional pass one after the other, on B rows
    each (how guidance ran before it was batched)."""
    out_cond = denoise_fn(z_bhwc, logsnr_b, labels_b).astype(jnp.float32)
    out_uncond = denoise_fn(z_bhwc, logsnr_b, jnp.full_like(labels_b, null_label))
    w = guidance_scale - 1.0
    inside = (logsnr_b[0] >= guidance_logsnr_min) & (logsnr_b[0] <= guidance_logsnr_max)
    return jnp.where(inside, (1.0 + w) * out_cond - w * out_uncond.astype(jnp.float32), out_cond)


def _max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def batched_vs_sequential() -> dict:
    """One guided step at logSNRs inside and outside the interval, then 8 DDPM steps (4 inside),
    batched vs `sequential_guided_output`, float32, one device."""
    config = tiny_config(**{"sample.num_steps": 8, **GUIDANCE})
    model, params = _params(config)
    spec = specs.sampling_spec(config)
    labels = jnp.asarray([0, 3, 7, 9, 1, 2, 5, 8])
    guidance = dict(guidance_scale=3.0, guidance_logsnr_min=-4.0, guidance_logsnr_max=3.0,
                    null_label=config.model.num_classes)
    denoise = lambda z, snr, y: model.apply({"params": params}, z, snr, y, train=False)

    @jax.jit
    def one_step(z, logsnr):
        logsnr_b = jnp.full((len(labels),), logsnr)
        return (sampling.guided_output(denoise, z, logsnr_b, labels, **guidance),
                sequential_guided_output(denoise, z, logsnr_b, labels, **guidance),
                denoise(z, logsnr_b, labels))

    z = jax.random.normal(jax.random.key(2), (8, 8, 8, 3))
    steps = {}
    for logsnr in (0.0, -6.0, 8.0):
        batched, sequential, conditional = one_step(z, logsnr)
        steps[logsnr] = (_max_diff(batched, sequential), _max_diff(batched, conditional),
                         float(jnp.abs(sequential).max()))
    def draw():  # A new function each time: traced afresh with the guidance in place.
        return jax.jit(lambda rng: sampling.sample(denoise, rng, labels, spec))(jax.random.key(1))

    batched = draw()
    sampling.guided_output, original = sequential_guided_output, sampling.guided_output
    try:
        sequential = draw()
    finally:
        sampling.guided_output = original
    grid = np.asarray(spec.diffusion.logsnr_fn()(jnp.arange(1, 9) / 8))
    return {"one_step": steps, "sampler": _max_diff(batched, sequential),
            "guided_steps": int(((grid >= -4.0) & (grid <= 3.0)).sum())}


def compile_cache() -> dict:
    """Programs compiled for two equal configs, then for another guidance scale (1 device)."""
    mesh = sharding.make_mesh(tiny_config().mesh, jax.devices()[:1])
    config = tiny_config(**{"sample.num_steps": 2, "sample.guidance_scale": 1.5})
    _, params = _params(config)
    labels, rng = np.arange(4), jax.random.key(0)
    before = generate._program._cache_size()
    first = generate.Sampler.from_config(config, mesh)
    same = generate.Sampler.from_config(tiny_config(**{"sample.num_steps": 2,
                                                      "sample.guidance_scale": 1.5}), mesh)
    a, b = first.generate(params, rng, labels), same.generate(params, rng, labels)
    after_equal = generate._program._cache_size() - before
    c = first.replace(guidance_scale=2.5).generate(params, rng, labels)
    return {"equal": first == same and hash(first) == hash(same), "after_equal": after_equal,
            "after_other": generate._program._cache_size() - before,
            "equal_diff": _max_diff(a, b), "other_diff": _max_diff(a, c)}


def fsdp_layout() -> dict:
    """bfloat16 params on fsdp=8: their dtype and sharding after `prepare`, the collectives of
    the compiled program, and its images against data parallelism on the same 8 devices."""
    images = {}
    for data, fsdp in ((8, 1), (1, 8)):
        config = tiny_config(**{"mesh.data": data, "mesh.fsdp": fsdp, "model.dtype": "bfloat16",
                                **GUIDANCE})
        mesh = sharding.make_mesh(config.mesh)
        _, params = _params(config, mesh)
        sampler = generate.Sampler.from_config(config, mesh)
        images[fsdp] = sampler.generate(params, jax.random.key(1), np.arange(8))
    leaves = jax.tree.leaves(params)
    prepared = jax.tree.leaves(sampler.prepare(params))
    labels = jax.device_put(np.arange(8, dtype=np.int32), sharding.batch_sharding(mesh))
    rng = jax.device_put(jax.random.key(1), sharding.replicated(mesh))
    hlo = generate._program.lower(sampler.prepare(params), rng, labels, spec=sampler.spec,
                                  model_spec=sampler.model_spec, mesh=mesh).compile().as_text()
    result = collectives_in_loop(hlo, sum(x.size for x in leaves))
    result.update(
        sharded=sum("fsdp" in str(x.sharding.spec) for x in leaves) / len(leaves),
        prepared_dtypes=sorted({str(x.dtype) for x in prepared}),
        same_shardings=all(p.sharding.is_equivalent_to(x.sharding, x.ndim)
                           for p, x in zip(prepared, leaves, strict=True)),
        fsdp_vs_data_parallel=_max_diff(images[1], images[8]))
    return result


def child_checks() -> dict:
    return {"batched": batched_vs_sequential(), "cache": compile_cache(), "fsdp": fsdp_layout()}


def collectives_in_loop(hlo: str, num_params: int) -> dict[str, object]:
    """From optimised HLO text: the collectives in the whole program and in the sampler loop
    (the `while` whose loop values hold >= `num_params` bfloat16 elements: the weights), and the
    number of such loops."""
    computations, name = {}, None
    for line in hlo.splitlines():
        start = re.match(r"(?:ENTRY )?%([\w.\-]+) \(.*\{$", line)
        if start:
            name, computations[start.group(1)] = start.group(1), []
        elif line.startswith("}"):
            name = None
        elif name:
            computations[name].append(line)
    ops = r"\b(all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)(?:-start)?\("

    def bf16_elements(shape: str) -> int:
        return sum(int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
                   for dims in re.findall(r"bf16\[([\d,]*)\]", shape))

    loops = [line for lines in computations.values() for line in lines
             if " while(" in line and bf16_elements(line.split(" while(")[0]) >= num_params]
    seen, todo = set(), [re.search(r"body=%([\w.\-]+)", line).group(1) for line in loops]
    while todo:  # Everything the loop body calls: fusions, cond branches, nested loops.
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += [c for c in re.findall(r"%([\w.\-]+)", "\n".join(computations[name]))
                     if c in computations]
    in_loop = {op for c in seen for op in re.findall(ops, "\n".join(computations[c]))}
    return {"loops": len(loops), "in_loop": sorted(in_loop),
            "in_program": sorted(set(re.findall(ops, hlo)))}


@pytest.fixture(scope="module")
def results() -> dict:
    code = ("import json, sys; sys.path[:0] = ['tests', 'tests/sample']; import test_generate; "
            "print('RESULTS', json.dumps(test_generate.child_checks()))")
    fast = {"XLA_FLAGS": f"--xla_force_host_platform_device_count=8 {FAST_COMPILE}"}
    out = check(run_python(code, 8, env_extra=fast))
    return json.loads(next(x for x in out.splitlines() if x.startswith("RESULTS "))[8:])


def test_batched_guidance_equals_sequential(results):
    """Float32, eval mode: the network has no batch statistics and no dropout, so row i of the
    doubled batch is the same computation as row i of a single pass; only the order of float32
    accumulations may differ where XLA tiles a matmul or conv differently for 2B rows. That is
    a few u (6e-8) of relative error per layer over ~10 layers, times at most 1 + 2w = 5 at
    guidance scale 3: ~3e-6 of the output's scale (7e-7 measured), under the 1e-5 of the scale
    allowed; the 8 DDPM steps do not amplify it (each step shrinks the share of z in the
    image). A wrong pairing of rows or a dropped interval moves outputs by ~0.1 or more
    (checked: guidance changes the output in the interval and only there)."""
    r = results["batched"]
    assert r["guided_steps"] == 4, r  # The interval covers half of the 8 steps.
    for logsnr, (to_sequential, to_conditional, scale) in r["one_step"].items():
        assert to_sequential <= 1e-5 * max(scale, 1.0), (logsnr, to_sequential, scale)
        inside = -4.0 <= float(logsnr) <= 3.0
        assert (to_conditional > 0.05) == inside, (logsnr, to_conditional)
    assert r["sampler"] <= 1e-5, r


def test_one_program_per_sampling_setting(results):
    """The compile cache is keyed by the settings' values, not by which config object holds
    them: equal configs share one program (and draw the same images), another guidance scale
    compiles another."""
    r = results["cache"]
    assert r["equal"] and r["after_equal"] == 1 and r["after_other"] == 2, r
    assert r["equal_diff"] == 0.0 and r["other_diff"] > 1e-3, r


def test_fsdp_params_cast_and_gathered_once_before_the_loop(results):
    """8 CPU devices, fsdp=8, bfloat16: `prepare` casts the params on their FSDP shards; the
    sampler loop carries all the weights in bfloat16 and has no collective in its body (the
    program gathers them once, before it; the XLA CPU backend widens bfloat16 collectives to
    float32, accelerators gather bfloat16). FSDP sampling then draws exactly the images of
    data parallelism on the same devices (each device samples one row with the whole weights
    in both)."""
    r = results["fsdp"]
    assert r["sharded"] > 0.5 and r["same_shardings"], r
    assert r["prepared_dtypes"] == ["bfloat16"], r
    assert r["loops"] == 1 and r["in_loop"] == [], r
    assert "all-gather" in r["in_program"], r  # The gather exists: once, before the loop.
    assert r["fsdp_vs_data_parallel"] == 0.0, r


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_prepare_casts_float_leaves_only(dtype):
    config = tiny_config(**{"model.dtype": dtype})
    sampler = generate.Sampler.from_config(config, sharding.make_mesh(config.mesh))
    params = {"w": jnp.ones((2, 3)), "step": jnp.zeros((), jnp.int32)}
    prepared = sampler.prepare(params)
    assert prepared["w"].dtype == jnp.dtype(dtype) and prepared["step"].dtype == jnp.int32
    assert (prepared is params) == (dtype == "float32")  # Nothing to cast: the same tree.
