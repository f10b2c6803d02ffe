"""`--mode=eval` on photo and folder samples: photo metrics against the held-out photos or the
folder, printed, written to the eval .json and metrics.jsonl, with no Inception weights.

Budget: ~5 s on 2 cores.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from utils import tiny_config

from sd_jax import main
from sd_jax.data.photos import PhotoSource
from sd_jax.eval import photo_eval, photo_metrics


def write_samples(workdir, config, images: np.ndarray) -> None:
    samples = workdir / "samples"
    samples.mkdir(parents=True)
    np.savez(samples / "s.npz", images)
    model = json.loads(json.dumps(config.model.to_dict()))
    (samples / "s.json").write_text(json.dumps({"step": 6, "model": model}))


def photo_config(**overrides):
    return tiny_config(**{"model.num_classes": 0, "sample.labels": None,
                          "sample.guidance_scale": 1.0, **overrides})


def test_eval_on_photo_samples_scores_against_the_held_out_photos(tmp_path, capsys):
    config = photo_config(**{"data.source": "photos"})
    samples = PhotoSource(32, "train").images(12)  # Training crops as stand-in samples.
    write_samples(tmp_path, config, samples)
    main.run(config, str(tmp_path), "eval")
    out = capsys.readouterr().out
    line = next(s for s in out.splitlines() if "SWDx1e3" in s)
    assert "32px" in line and "16px" in line and "2-4px" in line and "saturation ratio" in line
    assert "held-out photos (coffee, ihc)" in line or "held-out photos (flower)" in line
    results = json.loads((tmp_path / "eval_s.json").read_text())
    reference = PhotoSource(32, "test", seed=photo_eval.REFERENCE_SEED).images(12)
    want = photo_metrics.photo_metrics(samples, reference)
    for key, value in want.items():
        assert results[key] == pytest.approx(value, rel=1e-12), key
    logged = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert logged["step"] == 6 and logged["eval/swd_avg"] == pytest.approx(want["swd_avg"])
    assert logged["eval/saturation_ratio"] == pytest.approx(want["saturation_ratio"])
    assert "eval/power_ratio_2-4px" in logged and "fid" not in results


def test_eval_on_folder_samples_scores_against_the_folder(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    crops = PhotoSource(48, "test").images(6)
    for i, crop in enumerate(crops):
        Image.fromarray(crop).save(folder / f"{i}.png")
    config = photo_config(**{"data.source": "folder", "data.folder": str(folder)})
    workdir = tmp_path / "wd"
    samples = crops[:, 8:40, 8:40]  # 32 px: the reference is the folder resized to 32.
    write_samples(workdir, config, samples)
    main.run(config, str(workdir), "eval")
    assert "training data" in capsys.readouterr().out
    results = json.loads((workdir / "eval_s.json").read_text())
    reference, _ = photo_eval.reference_images(config.data, 32, 6)
    assert reference.shape == (6, 32, 32, 3)
    want = photo_metrics.photo_metrics(samples, reference)
    assert results["swd_avg"] == pytest.approx(want["swd_avg"], rel=1e-12)
