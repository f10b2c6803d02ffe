"""experiments/: sweep API, runner (dry run for every shipped sweep, and a tiny real sweep) and
the aggregator.

Budget: ~5 s for the dry runs; ~40 s for the real 2-point sweep on 2 CPU cores (one compile:
the points differ only in the seed and share a persistent compilation cache).
"""

import csv
import json
import shlex
import subprocess
import sys

import pytest
from utils import REPO, TWO_STEP_RUN, child_env, jax_cache_dir, override_args, tiny_config

sys.path.insert(0, str(REPO))

from scripts import aggregate, run_sweep, sweep_lib  # noqa: E402
from sd_jax.models import ModelSpec  # noqa: E402

SWEEPS = sorted((REPO / "scripts" / "sweeps").glob("*.py"))
TINY = override_args(tiny_config(**TWO_STEP_RUN))  # A quickstart run of two steps, tiny model.


def test_grid_zip_concat_product():
    g = sweep_lib.grid(**{"a.x": [1, 2]}, b__y=["p", "q"])
    assert g == [{"a.x": 1, "b.y": "p"}, {"a.x": 1, "b.y": "q"},
                 {"a.x": 2, "b.y": "p"}, {"a.x": 2, "b.y": "q"}]
    z = sweep_lib.zip_({"a.x": [1, 2], "b.y": [(1, 2), (3,)]})
    assert z == [{"a.x": 1, "b.y": (1, 2)}, {"a.x": 2, "b.y": (3,)}]
    assert sweep_lib.concat(z, [{}]) == [*z, {}]
    assert len(sweep_lib.product(g, sweep_lib.grid(seed=[0, 1, 2]))) == 12
    with pytest.raises(ValueError, match="equal lengths"):
        sweep_lib.zip_(a=[1], b=[1, 2])
    with pytest.raises(ValueError, match="twice"):
        sweep_lib.product(g, g)
    with pytest.raises(TypeError, match="list of values"):
        sweep_lib.grid(a="abc")


def test_point_names_and_flags():
    point = {"model.channel_multipliers": (1, 2, 4), "diffusion.multiscale": False,
             "model.dropout": 0.1}
    assert sweep_lib.point_name(point) == "channel_multipliers-1x2x4_multiscale-False_dropout-0.1"
    assert sweep_lib.point_name({"a.seed": 1, "b.seed": 2}) == "a-seed-1_b-seed-2"
    assert sweep_lib.point_name({}) == "base"
    assert sweep_lib.override_flags(point)[0] == "--config.model.channel_multipliers=(1,2,4)"


@pytest.mark.parametrize("sweep_file", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_dry_run_prints_one_valid_command_per_point(sweep_file, tmp_path):
    proc = subprocess.run(
        [sys.executable, "scripts/run_sweep.py", f"--sweep={sweep_file}",
         f"--root={tmp_path}", "--dry_run", "--extra=--config.train.num_steps=10"],
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    sweep = sweep_lib.load_sweep(sweep_file)
    commands = proc.stdout.strip().splitlines()
    assert len(commands) == len(sweep["points"]) >= 2
    assert not list(tmp_path.iterdir())  # A dry run writes nothing.
    for line, point in zip(commands, sweep["points"], strict=True):
        argv = shlex.split(line)
        assert argv[:2] == ["python", "launch.py"]
        assert f"--workdir={tmp_path / sweep_lib.point_name(point)}" in argv
        assert argv[-1] == "--config.train.num_steps=10"
        config_path = argv[2].removeprefix("--config=")
        config = sweep_lib.load_config(config_path, [a for a in argv if a.startswith("--config.")])
        for key, value in point.items():
            assert sweep_lib.get_path(config, key) == value, key
        ModelSpec.from_config(config.model)  # The point describes a buildable network.


def test_bad_override_fails_before_launching(tmp_path):
    sweep_file = tmp_path / "bad.py"
    sweep_file.write_text(
        "from scripts.sweep_lib import grid\n"
        "def get_sweep():\n"
        "    return {'base_config': 'configs/quickstart.py',"
        " 'points': grid(**{'model.droput': [0.1]})}\n"
    )
    proc = subprocess.run(
        [sys.executable, "scripts/run_sweep.py", f"--sweep={sweep_file}",
         f"--root={tmp_path / 'root'}"],
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert "droput" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "root").exists()


def test_aggregate_reads_metrics_and_eval(tmp_path):
    workdir = tmp_path / "noise_d-32"
    workdir.mkdir()
    (workdir / "sweep_point.json").write_text(json.dumps({"overrides": {"diffusion.noise_d": 32}}))
    records = [{"step": 10, "loss": 0.5, "images_per_sec": 100.0},
               {"step": 20, "loss": 0.3, "images_per_sec": 120.0},
               {"step": 30, "loss": 0.4, "images_per_sec": 110.0}]
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + "{")
    (workdir / "eval_20.json").write_text(json.dumps({"fid": 12.5, "inception_score": 33.0}))
    (tmp_path / "unrelated").mkdir()
    periodic = tmp_path / "no_point_file"  # A plain training workdir with a periodic FID.
    periodic.mkdir()
    (periodic / "metrics.jsonl").write_text(json.dumps({"step": 5, "loss": 1.0}) + "\n"
                                            + json.dumps({"step": 5, "fid": 40.0}) + "\n")
    rows = aggregate.collect(tmp_path)
    assert [r["name"] for r in rows] == ["no_point_file", "noise_d-32"]
    assert (rows[0]["fid"], rows[0]["inception_score"], rows[0]["overrides"]) == (40.0, None, {})
    row = rows[1]
    assert (row["steps"], row["last_loss"], row["min_loss"]) == (30, 0.4, 0.3)
    assert (row["images_per_s"], row["fid"], row["inception_score"]) == (110.0, 12.5, 33.0)
    header, cells = aggregate.to_table(rows)
    assert header[:2] == ["name", "diffusion.noise_d"] and cells[1][:2] == ["noise_d-32", "32"]


@pytest.mark.slow
def test_tiny_sweep_runs_and_aggregates(tmp_path, tmp_path_factory):
    sweep_file = tmp_path / "seeds.py"
    sweep_file.write_text(
        "from scripts.sweep_lib import grid\n"
        "def get_sweep():\n"
        "    return {'base_config': 'configs/quickstart.py', 'points': grid(seed=[0, 1])}\n"
    )
    root = tmp_path / "root"
    env = child_env()
    env["JAX_COMPILATION_CACHE_DIR"] = jax_cache_dir(tmp_path_factory)  # Point 2 reuses 1's.
    proc = subprocess.run(
        [sys.executable, "scripts/run_sweep.py", f"--sweep={sweep_file}", f"--root={root}",
         *(f"--extra={flag}" for flag in TINY)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("seed-0", "seed-1"):
        point = json.loads((root / name / "sweep_point.json").read_text())
        assert point["overrides"] == {"seed": int(name[-1])} and point["extra"] == TINY
        assert (root / name / "metrics.jsonl").exists() and (root / name / "launch.log").exists()

    out_csv = tmp_path / "results.csv"
    proc = subprocess.run(
        [sys.executable, "scripts/aggregate.py", f"--root={root}", f"--csv={out_csv}"],
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout.strip().splitlines()
    assert table[0].startswith("| name | seed | steps | last_loss")
    assert len(table) == 4 and table[2].startswith("| seed-0 | 0 | 2 |")
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["name"] for r in rows] == ["seed-0", "seed-1"]
    assert all(float(r["last_loss"]) > 0 and float(r["images_per_s"]) > 0 for r in rows)


def test_runner_module_builds_launch_args(tmp_path):
    sweep = {"base_config": "configs/quickstart.py", "fixed": {"train.num_steps": 5}}
    args = run_sweep.launch_args(sweep, {"seed": 3}, tmp_path / "seed-3", ["--mode=train"])
    assert args == ["launch.py", "--config=configs/quickstart.py",
                    f"--workdir={tmp_path / 'seed-3'}", "--config.train.num_steps=5",
                    "--config.seed=3", "--mode=train"]


def test_dry_run_with_url_root_prints_urls(capsys):
    sweep_file = REPO / "scripts" / "sweeps" / "multiscale_512.py"
    run_sweep.run_sweep(str(sweep_file), "gs://bucket/runs/", dry_run=True)
    lines = capsys.readouterr().out.splitlines()
    assert "--workdir=gs://bucket/runs/multiscale-False" in lines[0]
    with pytest.raises(ValueError, match="URL"):
        run_sweep.run_sweep(str(sweep_file), "gs://bucket/runs", dry_run=False)


def test_only_that_names_no_point_fails_in_one_line(capsys, tmp_path):
    sweep_file = REPO / "scripts" / "sweeps" / "multiscale_512.py"
    argv = [f"--sweep={sweep_file}", f"--root={tmp_path}", "--only=multiscale-True",
            "--only=multiscale-Flase"]
    with pytest.raises(SystemExit) as e:
        run_sweep.main(argv)
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--only=multiscale-Flase names no point" in err[0], err
    assert "multiscale-False, multiscale-True" in err[0] and not list(tmp_path.iterdir())
    run_sweep.main([*argv[:3], "--dry_run"])  # A name that exists: only that point.
    assert capsys.readouterr().out.count("launch.py") == 1
