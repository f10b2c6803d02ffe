"""The layers contract (pyproject.toml, `lint-imports` in .ci/run): imports point down only.

The contract holds on this tree, and it can fail: in a copy of the package where one module of a
lower layer imports a higher one, `lint-imports` reports the contract broken and names the import.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from utils import REPO

LINT_IMPORTS = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LINT_IMPORTS, "--config", str(root / "pyproject.toml"), "--no-cache"],
                          cwd=root, capture_output=True, text=True, timeout=300)


def test_the_package_keeps_its_layers():
    proc = lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "1 kept, 0 broken" in proc.stdout


@pytest.mark.parametrize("lower, higher", [
    ("sd_jax/diffusion/losses.py", "sd_jax.train.step"),  # The maths importing the trainer.
    ("sd_jax/io/npz.py", "sd_jax.sample.mode"),  # A format importing a mode.
    ("sd_jax/eval/fid.py", "sd_jax.sample.generate"),  # Siblings of one layer.
])
def test_an_import_that_points_up_breaks_the_contract(tmp_path, lower, higher):
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(REPO / "sd_jax", tmp_path / "sd_jax",
                    ignore=shutil.ignore_patterns("__pycache__"))
    module = tmp_path / lower
    module.write_text(module.read_text() + f"\nimport {higher}  # noqa\n")
    proc = lint_imports(tmp_path)
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert "BROKEN" in proc.stdout and higher in proc.stdout, proc.stdout[-3000:]
