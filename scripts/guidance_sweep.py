"""Guidance-scale sweep of a trained checkpoint: sample + FID/IS per scale, one table.

    python scripts/guidance_sweep.py --config=configs/imagenet512.py --workdir=DIR \
        --scales=1.0,1.1,1.25,1.5 \
        --config.eval.inception_weights=inception_fid.npz \
        --config.eval.reference_npz=VIRTUAL_imagenet512.npz

Restores the newest checkpoint once, then for each scale writes <workdir>/samples/<name>.npz
(as `--mode=sample` with `config.sample.guidance_scale` set) and evaluates it (as `--mode=eval`).
The table goes to stdout and to <workdir>/guidance_sweep_step<step>.{md,csv}. Any other
`config.sample` / `config.eval` field (steps, interval, num_samples, ...) is a config override.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import jax
from absl import app, flags
from etils import epath
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Run as a script from anywhere.
from sd_jax import main as sd_main  # noqa: E402
from sd_jax.errors import UserError  # noqa: E402
from sd_jax.eval import mode as evaluate  # noqa: E402
from sd_jax.io import paths  # noqa: E402
from sd_jax.sample import mode as sample_mode  # noqa: E402
from sd_jax.validate import validate  # noqa: E402

COLUMNS = ("guidance_scale", "fid", "sfid", "inception_score", "num_samples", "samples")


def parse_scales(text: str) -> list[float]:
    """'1.0,1.25' -> [1.0, 1.25]; UserError on anything else."""
    try:
        scales = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise UserError(f"--scales={text!r}: use comma-separated numbers, e.g. 1.0,1.25") from e
    if not scales:
        raise UserError("--scales is empty")
    return scales


def sweep(config, workdir: str, scales: list[float]) -> list[dict]:
    """Samples and evaluates each guidance scale; returns one row per scale."""
    for scale in scales:  # Every setting checked before sampling for hours.
        validate(sample_mode.with_overrides(config, guidance_scale=scale), "sample")
    evaluate.check_reference(config.eval.reference_npz)
    extract_fn, batch_size = evaluate.build_extractor(config.eval)
    params, mesh, step = sample_mode.load_for_sampling(config, workdir)
    reference = evaluate.reference_stats(config.eval.reference_npz, extract_fn, batch_size,
                                         config.eval.sfid)
    rows = []
    for scale in scales:
        scale_config = sample_mode.with_overrides(config, guidance_scale=scale)
        path = sample_mode.write_samples(params, scale_config, mesh, step, workdir)
        results = evaluate.evaluate(path, reference, extract_fn, config.eval, batch_size)
        results.update(guidance_scale=scale, samples=path.name, step=step)
        evaluate.write_results(workdir, path.stem, results, step)
        rows.append(results)
        if jax.process_index() == 0:
            print(f"guidance {scale:g}: FID {results['fid']:.3f}, "
                  f"IS {results['inception_score']:.2f}", flush=True)
    if jax.process_index() == 0:
        write_table(rows, paths.as_path(workdir) / f"guidance_sweep_step{step}")
    return rows


def write_table(rows: list[dict], stem: epath.Path) -> str:
    """Writes <stem>.md and <stem>.csv (local or gs://); returns the markdown."""
    columns = [c for c in COLUMNS if any(c in r for r in rows)]

    def cell(value) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    markdown = "\n".join(lines) + "\n"
    stem.with_suffix(".md").write_text(markdown)
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    stem.with_suffix(".csv").write_text(table.getvalue())
    print(markdown, end="", flush=True)
    return markdown


def main(argv: list[str]) -> None:
    del argv
    try:
        sd_main.init_distributed(None, None, None)
        if not FLAGS.workdir:
            raise UserError("--workdir is required (the trained run to sweep)")
        sweep(FLAGS.config, FLAGS.workdir, parse_scales(FLAGS.scales))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", None, "Config file (ml_collections).",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "Trained run (checkpoints); results are written here.")
    flags.DEFINE_string("scales", "1.0,1.25,1.5", "Comma-separated guidance scales (1 + w).")
    flags.mark_flags_as_required(["config"])
    FLAGS = flags.FLAGS
    app.run(main)
