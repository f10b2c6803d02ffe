"""experiments/snr_figure/snr_figure.py: pooling 512 -> 64 multiplies the SNR by 64; the shift
undoes it.

Budget: ~5 s (numpy on one 512 x 512 photo).
"""

import subprocess
import sys

import numpy as np
from PIL import Image
from utils import REPO, child_env


def test_snr_figure_measured_matches_predicted(tmp_path):
    out = tmp_path / "snr.png"
    proc = subprocess.run(
        [sys.executable, "experiments/snr_figure/snr_figure.py", f"--out={out}"],
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| t | logSNR |" in proc.stdout
    panel = np.asarray(Image.open(out))
    assert panel.ndim == 3 and panel.shape[0] > 4 * 64 and panel.shape[1] > 4 * 64

    sys.path.insert(0, str(REPO))
    from experiments.snr_figure import snr_figure

    rows = snr_figure.run(tmp_path / "again.png", seed=1, times=(0.4, 0.8))
    for r in rows:
        # Direct noising at 64 has the schedule's SNR (times the photo's variance).
        np.testing.assert_allclose(r["direct_measured"], r["direct_predicted"], rtol=0.04)
        # Pooling 512 -> 64 multiplies it by s^2 = 64 ...
        np.testing.assert_allclose(r["pooled_measured"], r["pooled_predicted"], rtol=0.04)
        np.testing.assert_allclose(r["pooled_measured"] / r["direct_measured"], 64.0, rtol=0.05)
        # ... and the shifted schedule (noise_d=64) brings it back to the base schedule's SNR.
        np.testing.assert_allclose(r["shifted_measured"], r["shifted_predicted"], rtol=0.04)
