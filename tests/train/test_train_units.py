"""Unit tests of the training pieces, in-process on one CPU device (budget: ~25 s)."""

import io
import json
import shutil
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from PIL import Image
from utils import U32, float32_sum_error, tiny_config

from sd_jax import sharding
from sd_jax.checkpoints import checkpointer as checkpointing
from sd_jax.checkpoints import integrity as checkpoint_integrity
from sd_jax.errors import UserError
from sd_jax.sample import restore
from sd_jax.train import logger as metrics_io
from sd_jax.train import metrics
from sd_jax.train import state as train_state
from sd_jax.train import step as train_step

RULES = sharding.rules_from_config(tiny_config())


def fake_mesh(data: int, fsdp: int):
    """Only `.shape` is read by the spec resolution."""
    return types.SimpleNamespace(shape={"data": data, "fsdp": fsdp})


def test_logical_rules_shard_divisible_dims_and_replicate_the_rest():
    mesh = fake_mesh(2, 4)
    # Transformer weight: the model width goes to fsdp.
    assert sharding.logical_to_mesh_spec(P("embed", "mlp"), (64, 256), RULES, mesh) == P(
        "fsdp", None)
    # Conv with 3 output channels: output does not divide by 4, the input channels take fsdp.
    spec = sharding.logical_to_mesh_spec(P(None, None, "conv_in", "conv_out"), (3, 3, 32, 3),
                                         RULES, mesh)
    assert spec == P(None, None, "fsdp", None)
    # Nothing divisible: fully replicated; unknown names are replicated.
    assert sharding.logical_to_mesh_spec(P("conv_in", "conv_out"), (3, 6), RULES, mesh) == P(
        None, None)
    assert sharding.logical_to_mesh_spec(P("heads", "kv"), (4, 8), RULES, mesh) == P(None, None)
    # fsdp = 1: nothing to shard.
    assert sharding.logical_to_mesh_spec(P("embed"), (64,), RULES, fake_mesh(8, 1)) == P(None)


def test_mesh_and_batch_errors():
    cfg = tiny_config()
    mesh = sharding.make_mesh(cfg.mesh)
    assert dict(mesh.shape) == {"data": jax.device_count(), "fsdp": 1}
    cfg.mesh.fsdp = -1
    with pytest.raises(UserError, match="at most one"):
        sharding.make_mesh(cfg.mesh)
    cfg.mesh.data, cfg.mesh.fsdp = 2, 3
    with pytest.raises(UserError, match="must multiply"):
        sharding.make_mesh(cfg.mesh)
    with pytest.raises(UserError, match="divisible"):
        sharding.check_batch_divisible(7, types.SimpleNamespace(devices=np.zeros(2)))
    assert sharding.check_batch_divisible(8, mesh) == 8


def test_optimizer_is_warmed_up_clipped_adam():
    cfg = tiny_config(**{"optimizer.learning_rate": 0.1, "optimizer.warmup_steps": 4,
                         "optimizer.grad_clip": 1.0})
    lr = train_state.learning_rate_fn(cfg.optimizer)
    np.testing.assert_allclose([lr(s) for s in range(6)], [0.025, 0.05, 0.075, 0.1, 0.1, 0.1],
                               rtol=1e-6)
    tx = train_state.make_optimizer(cfg.optimizer)
    params = {"w": jnp.zeros(3)}
    grads = {"w": jnp.array([30.0, -40.0, 0.0])}  # Norm 50: clipped to 1 first.
    updates, _ = tx.update(grads, tx.init(params), params)
    # First Adam step: m_hat / sqrt(v_hat) = sign(g) (eps 1e-12); scaled by -lr(0).
    np.testing.assert_allclose(updates["w"], [-0.025, 0.025, 0.0], rtol=1e-5, atol=1e-9)


def test_label_dropout_and_ema():
    labels = jnp.zeros(20_000, jnp.int32) + 3
    dropped = train_step.drop_labels(jax.random.PRNGKey(0), labels, 0.1, 10)
    assert set(np.unique(dropped)) == {3, 10}
    assert abs(float(jnp.mean(dropped == 10)) - 0.1) < 0.01
    assert train_step.drop_labels(jax.random.PRNGKey(0), labels, 0.1, 0) is labels
    ema = train_step.ema_update({"a": jnp.array(1.0)}, {"a": jnp.array(3.0)}, 0.75)
    np.testing.assert_allclose(ema["a"], 1.5)


def test_progress_reports_clus_figures_and_note(monkeypatch):
    """Steps/s over the steps since the last report, and clu's ReportProgress note and ETA
    format, on a fake clock (clu's own `_format_secs` is the reference for the ETA)."""
    from clu.periodic_actions import _format_secs

    now = [100.0]
    monkeypatch.setattr(metrics_io.time, "monotonic", lambda: now[0])
    progress = metrics_io.Progress(num_steps=10, every_steps=4, start_step=0)
    reports = []
    for step, t in zip(range(1, 11), (101, 102, 103, 104, 104.5, 105, 105.5, 106, 107, 110),
                       strict=True):
        now[0] = t
        if progress(step):
            reports.append((step, progress.note, dict(progress.scalars)))
    assert [r[0] for r in reports] == [4, 8, 10]  # Every 4 steps and the last.
    assert reports[0][1] == "1.0 steps/s, 40.0% (4/10), ETA: 0m"  # 4 steps in 4 s; 6 s left.
    assert reports[1][2] == {"steps_per_sec": 2.0, "uptime": 6.0}  # 4 steps in 2 s.
    assert reports[2][1].startswith("0.5 steps/s, 100.0% (10/10)")
    assert not progress(10)  # The same step twice: no interval.
    for secs in (0.0, 59.9, 61.0, 3_599.0, 3_600.0, 86_399.0, 86_400.0, 123_456.7, 9e6):
        assert metrics_io._format_secs(secs) == _format_secs(secs), secs


def test_metrics_logger_records_and_resume_truncation(tmp_path, capsys):
    log = metrics_io.MetricsLogger(tmp_path, num_steps=7, batch_size=8, log_every=2,
                                   tensorboard=False)
    bucket = {"loss_logsnr/0:[-1.0,0.0)": 0.7, "count_logsnr/0:[-1.0,0.0)": 3.0,
              "loss_logsnr/1:[0.0,1.0)": 0.0, "count_logsnr/1:[0.0,1.0)": 0.0}
    logged = [log.record(step, {"loss": 0.5, "grad_norm": 1.0, "learning_rate": 1e-3, **bucket})
              for step in range(1, 8)]
    log.close()
    assert [r is not None for r in logged] == [False, True, False, True, False, True, True]
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6, 7]  # Every 2 steps, and the last one.
    for r in records:  # Progress: steps/s over the steps since the last report.
        assert r["images_per_sec"] == pytest.approx(8 * r["steps_per_sec"]) and r["uptime"] > 0
        # The empty bucket is missing rather than 0; counts are not metrics.
        assert r["loss_logsnr/0:[-1.0,0.0)"] == 0.7 and "loss_logsnr/1:[0.0,1.0)" not in r
        assert not any(k.startswith("count_logsnr") for k in r)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[0].startswith("step 2: loss 0.5000")
    assert "57.1% (4/7), ETA:" in lines[1] and "100.0% (7/7)" in lines[3]  # clu's note.
    metrics_io.MetricsLogger(tmp_path, num_steps=10, batch_size=8, start_step=4,
                             tensorboard=False).close()
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]  # Step 6 was logged after the checkpoint.
    with pytest.raises(UserError, match="at step 7"):
        metrics.check_finite(7, float("nan"))
    metrics.check_finite(7, 0.3)


def test_tensorboard_gets_scalars_bucket_names_and_sample_grids(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing import event_file_loader
    from tensorboard.util import tensor_util

    log = metrics_io.MetricsLogger(tmp_path, num_steps=4, batch_size=8, tensorboard=True)
    log.record(1, {"loss": 0.5, "loss_logsnr/3:[-3.8,0.0)": 0.25})
    grid = np.random.default_rng(0).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    log.write_images(1, {"samples": grid})
    log.close()
    (events,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    values = {v.tag: tensor_util.make_ndarray(v.tensor)
              for e in event_file_loader.EventFileLoader(str(events)).Load()
              for v in e.summary.value}
    assert values["loss"] == 0.5 and values["loss_logsnr/3:[-3.8,0.0)"] == 0.25
    width, height, png = values["samples"]  # TensorBoard's image summary: size and PNG bytes.
    assert (int(width), int(height)) == (10, 6)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), grid)


def test_train_step_metrics_cover_the_global_batch():
    """Bucket counts add up to the batch; the unweighted loss is their weighted mean, and with
    the sigmoid weighting differs from the loss."""
    from sd_jax import models

    cfg = tiny_config(**{"diffusion.loss_weighting": "sigmoid"})
    model, tx = models.build_model(cfg.model), train_state.make_optimizer(cfg.optimizer)
    mesh = sharding.make_mesh(cfg.mesh)
    state, _ = train_state.create_train_state(model, tx, cfg, mesh)
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.integers(0, 256, (8, 8, 8, 3)), jnp.uint8),
             "flip": jnp.asarray(rng.random(8) < 0.5),
             "label": jnp.asarray(rng.integers(0, 10, 8), jnp.int32)}
    _, metrics = train_step.train_step(state, batch, jax.random.key(0), model=model, tx=tx,
                                       config=cfg)
    m = {k: float(v) for k, v in metrics.items()}
    counts = {k.split("/", 1)[1]: v for k, v in m.items() if k.startswith("count_logsnr/")}
    assert len(counts) == 8 and sum(counts.values()) == 8
    weighted = sum(m[f"loss_logsnr/{name}"] * n for name, n in counts.items()) / 8
    # float32 on the device: 8 bucket sums added, one division; each mean one rounding more.
    assert weighted == pytest.approx(m["unweighted_loss"], rel=float32_sum_error(8) + 2 * U32)
    assert m["unweighted_loss"] != pytest.approx(m["loss"], rel=1e-3)


def _tree(value: float):
    return {"w": jnp.full((4, 2), value), "step": jnp.array(int(value), jnp.int32)}


def test_checkpoints_keep_last_k_and_ignore_interrupted_saves(tmp_path):
    ckpt = checkpointing.Checkpointer(tmp_path, keep=2)
    for step in (1, 2, 3):
        ckpt.save(step, _tree(step), {"step": step, "seed": 0})
    ckpt.close()
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [2, 3]
    # A save killed half-way leaves only orbax's temporary directory, never a step directory.
    partial = tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp-1234567"
    shutil.copytree(tmp_path / "checkpoints" / "3", partial)
    shutil.rmtree(partial / "state")
    ckpt = checkpointing.Checkpointer(tmp_path, keep=2)
    assert ckpt.latest_step() == 3
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                           sharding=x.sharding), _tree(0))
    state, meta = ckpt.restore(abstract)
    ckpt.close()
    np.testing.assert_array_equal(state["w"], np.full((4, 2), 3.0))
    assert {k: meta[k] for k in ("step", "seed")} == {"step": 3, "seed": 0}
    assert meta["checksums"] == checkpoint_integrity.fingerprints(_tree(3))
    assert not partial.exists()  # Cleaned up on start.


def test_restore_inference_params_without_checkpoint(tmp_path):
    mesh = sharding.make_mesh(tiny_config().mesh)
    with pytest.raises(UserError, match="checkpoint"):
        restore.restore_inference_params(tmp_path, tiny_config(), mesh)


def test_train_step_trains_each_architecture_on_its_default_loss(monkeypatch):
    """diffusion.loss='auto' reaches diffusion_loss resolved by the architecture's table entry."""
    seen = []

    def spy(*args):
        seen.append(args[-1].loss)  # The DiffusionSpec the loss gets.
        return real(*args)

    real = train_step.losses.diffusion_loss_given_noise
    monkeypatch.setattr(train_step.losses, "diffusion_loss_given_noise", spy)
    model = types.SimpleNamespace(apply=lambda v, z, *args, **kwargs: v["params"]["s"] * z)
    batch = {"image": jnp.zeros((2, 8, 8, 3), jnp.uint8), "flip": jnp.zeros(2, bool),
             "label": jnp.zeros(2, jnp.int32)}
    for arch in ("unet", "uvit"):
        cfg = tiny_config(**{"model.arch": arch})
        assert cfg.diffusion.loss == "auto"
        tx = train_state.make_optimizer(cfg.optimizer)
        params = {"s": jnp.float32(0.5)}
        state = train_state.TrainState(step=jnp.int32(0), params=params, ema_params=params,
                                       opt_state=tx.init(params))
        train_step.train_step(state, batch, jax.random.key(0), model=model, tx=tx, config=cfg)
    assert seen == ["eps_mse", "v_mse"]
