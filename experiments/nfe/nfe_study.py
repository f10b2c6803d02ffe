"""Sample quality against network evaluations (NFE) for every sampler, on a trained digits run.

    python experiments/nfe/nfe_study.py --config=configs/quickstart.py --workdir=/tmp/qs \
        --out=/tmp/nfe_qs [--nfe=8,16,32,64,128,256] [--guidance=1.0,3.0] [--num_samples=200]

Restores the newest checkpoint once, then for each guidance scale, sampler and NFE draws
`--num_samples` images (labels cycled over the classes, the same noise for every point) with
`num_steps` chosen so the sampler spends at most that NFE (Heun: 2 per step), and scores them as
`--mode=eval` does on the digits: FD-digits, class accuracy, HF ratio (sd_jax/eval/digits_eval.py).
Writes <out>/nfe_study.{md,json} and <out>/fd_vs_nfe.png (one panel per guidance scale); any
`config.sample` field is an override (e.g. `--config.sample.grid=edm`).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # Run as a script from anywhere.
from experiments import pil_plot  # noqa: E402
from sd_jax import specs  # noqa: E402
from sd_jax.diffusion import samplers  # noqa: E402
from sd_jax.errors import UserError  # noqa: E402
from sd_jax.eval import digits_eval, digits_net  # noqa: E402
from sd_jax.sample import mode as sample_mode  # noqa: E402
from sd_jax.validate import validate  # noqa: E402

COLUMNS = ("guidance_scale", "sampler", "nfe", "num_steps", "fd_digits", "class_accuracy",
           "hf_ratio", "seconds")


def study(config, workdir: str, nfes: list[int], sampler_names: list[str],
          guidance_scales: list[float], num_samples: int) -> list[dict]:
    """One row per (guidance scale, sampler, NFE), scored against the digits data."""
    params, mesh, step = sample_mode.load_for_sampling(config, workdir)
    variables, _ = digits_net.load_or_build()
    reference, _ = digits_net.digits_data(config.model.image_size)
    num_classes = max(config.model.num_classes, 1)
    labels = np.arange(num_samples) % num_classes
    rows = []
    for scale in guidance_scales:
        for name in sampler_names:
            for nfe in nfes:
                point = sample_mode.with_overrides(
                    config, sampler=name, num_steps=samplers.steps_for_nfe(name, nfe),
                    guidance_scale=scale, num_samples=num_samples,
                    labels=",".join(map(str, range(num_classes))))
                start = time.perf_counter()
                images = np.concatenate(list(sample_mode.iter_samples(params, point, mesh,
                                                                      labels)))
                scores = digits_eval.digits_metrics(
                    images, labels if config.model.num_classes else None, variables, reference)
                spec = specs.sampling_spec(point)
                rows.append({"guidance_scale": scale, "sampler": name, "nfe": samplers.nfe(spec),
                             "num_steps": spec.num_steps, "step": step,
                             "seconds": round(time.perf_counter() - start, 1),
                             **{k: scores[k] for k in ("fd_digits", "class_accuracy", "hf_ratio")
                                if k in scores}})
                print(" ".join(f"{k}={rows[-1].get(k)}" for k in COLUMNS), flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    """The rows as one markdown table."""
    columns = [c for c in COLUMNS if any(c in r for r in rows)]

    def cell(value) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |"
                              for r in rows]) + "\n"


def figure(rows: list[dict], path: Path) -> None:
    """FD-digits against NFE (log2), one line per sampler, one panel per guidance scale."""
    panels = []
    for scale in sorted({r["guidance_scale"] for r in rows}):
        points: dict[str, list[tuple[float, float]]] = {}
        for r in rows:
            if r["guidance_scale"] == scale:
                points.setdefault(r["sampler"], []).append((np.log2(r["nfe"]), r["fd_digits"]))
        series = [(name, [x for x, _ in xy], [y for _, y in xy]) for name, xy in points.items()]
        panels.append((f"guidance {scale:g}", series))
    pil_plot.line_panels(panels, path, "log2 NFE", "FD-digits")


def main(argv: list[str]) -> None:
    del argv
    try:
        config = FLAGS.config
        validate(config, "sample")
        out = Path(FLAGS.out)
        out.mkdir(parents=True, exist_ok=True)
        names = FLAGS.samplers.split(",") if FLAGS.samplers else list(samplers.SAMPLERS)
        unknown = sorted(set(names) - set(samplers.SAMPLERS))
        if unknown:
            raise UserError(f"--samplers: unknown {unknown}; use {', '.join(samplers.SAMPLERS)}")
        rows = study(config, FLAGS.workdir, [int(v) for v in FLAGS.nfe.split(",")], names,
                     [float(v) for v in FLAGS.guidance.split(",")], FLAGS.num_samples)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    (out / "nfe_study.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / "nfe_study.md").write_text(markdown(rows))
    figure(rows, out / "fd_vs_nfe.png")
    print(markdown(rows), end="")


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", None, "Config file (ml_collections).",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "Trained run (its newest checkpoint is sampled).")
    flags.DEFINE_string("out", None, "Folder for the table and the figure.")
    flags.DEFINE_string("nfe", "8,16,32,64,128,256", "Comma-separated NFE budgets.")
    flags.DEFINE_string("samplers", "", "Comma-separated samplers (default: every one).")
    flags.DEFINE_string("guidance", "1.0", "Comma-separated guidance scales (1 + w).")
    flags.DEFINE_integer("num_samples", 200, "Samples per point (the same noise at every point).")
    flags.mark_flags_as_required(["config", "workdir", "out"])
    FLAGS = flags.FLAGS
    app.run(main)
