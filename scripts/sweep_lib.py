"""A tiny sweep API: a sweep is a list of points, a point is a dict of config overrides.

A sweep file (`scripts/sweeps/*.py`) defines

    def get_sweep() -> dict:
        return {
            "base_config": "configs/imagenet128.py",    # passed to launch.py --config
            "points": concat(grid(**{"model.dropout": [0.0, 0.1]}), ...),
            "fixed": {"train.num_steps": 100_000},     # optional: every point, not in the name
        }

Keys are config paths without the `config.` prefix. `grid` is the cartesian product of its
axes, `zip_` walks its axes in lockstep, `product` crosses whole sweeps, `concat` appends.
"""

from __future__ import annotations

import importlib.util
import itertools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

Point = dict[str, Any]
REPO = Path(__file__).resolve().parents[1]


def _axes(axes: Mapping[str, Sequence[Any]] | None, kw_axes: dict[str, Sequence[Any]]) -> dict:
    """Merges positional and keyword axes; `a__b=` in keywords means `a.b`."""
    merged = dict(axes or {})
    merged.update({k.replace("__", "."): v for k, v in kw_axes.items()})
    for key, values in merged.items():
        if isinstance(values, str) or not isinstance(values, Sequence):
            raise TypeError(f"sweep axis {key!r} needs a list of values, got {values!r}")
    return merged


def grid(axes: Mapping[str, Sequence[Any]] | None = None, **kw_axes: Sequence[Any]) -> list[Point]:
    """Cartesian product: `grid(**{"model.dropout": [0, .1], "seed": [0, 1]})` has 4 points."""
    merged = _axes(axes, kw_axes)
    keys = list(merged)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*merged.values())]


def zip_(axes: Mapping[str, Sequence[Any]] | None = None, **kw_axes: Sequence[Any]) -> list[Point]:
    """Lockstep: `zip_(**{"a": [1, 2], "b": [3, 4]})` is [{a: 1, b: 3}, {a: 2, b: 4}]."""
    merged = _axes(axes, kw_axes)
    lengths = {k: len(v) for k, v in merged.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"zip_ axes need equal lengths, got {lengths}")
    keys = list(merged)
    return [dict(zip(keys, values, strict=True)) for values in zip(*merged.values(), strict=True)]


def concat(*sweeps: Sequence[Point]) -> list[Point]:
    """Appends sweeps: the points of the first, then of the second, ..."""
    return [dict(p) for sweep in sweeps for p in sweep]


def product(*sweeps: Sequence[Point]) -> list[Point]:
    """Crosses sweeps: every combination of one point from each, merged (keys must not clash)."""
    points = []
    for combo in itertools.product(*sweeps):
        merged: Point = {}
        for p in combo:
            clash = set(merged) & set(p)
            if clash:
                raise ValueError(f"product of sweeps sets {sorted(clash)} twice")
            merged.update(p)
        points.append(merged)
    return points


def format_value(value: Any) -> str:
    """A value as config_flags parses it on the command line (tuples without spaces)."""
    if isinstance(value, (tuple, list)):
        trailing = "," if len(value) == 1 else ""
        return "(" + ",".join(format_value(v) for v in value) + trailing + ")"
    return str(value)


def point_name(point: Point) -> str:
    """Workdir name from the overrides: `schedule-cosine_noise_d-32` for those two keys.

    Keys are shortened to their last component unless two keys of the point share it.
    """
    if not point:
        return "base"
    last = [k.split(".")[-1] for k in point]
    parts = []
    for key, short in zip(point, last, strict=True):
        label = short if last.count(short) == 1 else key.replace(".", "-")
        parts.append(f"{label}-{format_value(point[key])}")
    name = "_".join(parts)
    return re.sub(r"[^A-Za-z0-9._+-]+", "", name.replace(",", "x"))


def load_sweep(path: str | Path) -> dict[str, Any]:
    """Imports a sweep file and returns its checked `get_sweep()` dict (with `name` added)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no sweep file {path}")
    spec = importlib.util.spec_from_file_location(f"sweep_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sweep = dict(module.get_sweep())
    missing = {"base_config", "points"} - set(sweep)
    if missing:
        raise ValueError(f"{path}: get_sweep() lacks {sorted(missing)}")
    sweep.setdefault("fixed", {})
    sweep.setdefault("name", path.stem)
    names = [point_name(p) for p in sweep["points"]]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{path}: points share workdir names {dupes}")
    return sweep


def override_flags(overrides: Mapping[str, Any]) -> list[str]:
    """`{"model.dropout": 0.1}` -> `["--config.model.dropout=0.1"]`."""
    return [f"--config.{k}={format_value(v)}" for k, v in overrides.items()]


def load_config(
    base_config: str | Path, flag_args: Sequence[str] = ()
) -> ml_collections.ConfigDict:
    """Parses a config file plus `--config.*` flags exactly as launch.py does (locked config).

    Raises if a key does not exist or a value has the wrong type.
    """
    from absl import flags
    from ml_collections import config_flags

    path = Path(base_config)
    path = path if path.is_absolute() else REPO / path
    argv = ["sweep", f"--config={path}", *flag_args]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "", flag_values=flag_values, lock_config=True, sys_argv=argv
    )
    flag_values(argv)
    return flag_values.config


def get_path(config: ml_collections.ConfigDict, key: str) -> Any:
    """`get_path(cfg, "model.dropout")` -> cfg.model.dropout."""
    value = config
    for part in key.split("."):
        value = value[part]
    return value
