"""notebooks/colab_tpu.ipynb runs end to end on CPU from the checkout, and its set-up installs
sd-jax from SD_JAX_SOURCE on a fresh Python (no sd_jax, the notebook alone in a folder).

The run is shrunk through SD_JAX_NOTEBOOK_OVERRIDES: a ~30k-parameter quickstart model, two
train steps with a sample grid at the end, four samples with two sampler steps. Budget: ~60 s
on 2 CPU cores (the sampler's compile; the train step's compile is cached when
test_experiments ran first), and ~30 s for the fresh set-up (a venv seeing the installed
requirements, a wheel of a copy of the repository built without the index).
"""

import json
import shutil
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient
from utils import REPO, TWO_STEP_RUN, jax_cache_dir, override_args, tiny_config

NOTEBOOK = REPO / "notebooks" / "colab_tpu.ipynb"
OVERRIDES = " ".join(override_args(tiny_config(**TWO_STEP_RUN, **{
    "train.sample_every": 2, "sample.num_samples": 4, "sample.batch_size": 4,
    "sample.num_steps": 2})))


def test_notebook_has_no_outputs_and_one_source_setting():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.get("outputs") for c in code)
    assert [c.source.count("SD_JAX_SOURCE =") for c in code] == [1] + [0] * (len(code) - 1)
    assert "YOUR_ORG" not in "".join(c.source for c in nb.cells)
    needs = [line for line in code[0].source.splitlines() if line.startswith("# Needs: ")]
    assert len(needs) == 1 and "git URL" in needs[0] and "Google Drive" in needs[0]


@pytest.mark.slow
def test_notebook_runs_end_to_end(tmp_path, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SD_JAX_NOTEBOOK_OVERRIDES", OVERRIDES)
    monkeypatch.setenv("SD_JAX_NOTEBOOK_WORKDIR", str(tmp_path / "run"))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", jax_cache_dir(tmp_path_factory))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # Training needs the accelerator in its subprocesses: the kernel must never import JAX.
    nb.cells.append(nbformat.v4.new_code_cell(
        'import sys\nprint("jax imported in the kernel:", "jax" in sys.modules)'))
    client = NotebookClient(nb, timeout=400, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()

    text = "\n".join(
        out.get("text", "") for c in nb.cells for out in c.get("outputs", [])
        if out.get("output_type") == "stream"
    )
    assert "devices: [CpuDevice(id=0)]" in text
    assert "step 2: loss" in text and "100.0% (2/2)" in text and ".npz (4, 16, 16, 3) uint8" in text
    assert "evaluation: " in text
    assert "jax imported in the kernel: False" in text
    shown = [c for c in nb.cells for out in c.get("outputs", [])
             if "image/png" in out.get("data", {})]
    assert len(shown) == 2  # The trainer's grid after training and the sampled grid.
    assert (tmp_path / "run" / "samples" / "step_00000002.png").exists()


FRESH_CHECK = """
import importlib.util, subprocess, sys, tempfile
print("origin:", importlib.util.find_spec("sd_jax").origin)
inspect = subprocess.run([sys.executable, "-m", "sd_jax", f"--config={CONFIG}", "--mode=inspect",
                          "--config.model.transformer_depth=1"], cwd=tempfile.gettempdir(),
                         capture_output=True, text=True)
print("inspect:", inspect.returncode, inspect.stdout.strip().splitlines()[-1:],
      inspect.stderr[-500:])
"""


@pytest.mark.slow
def test_notebook_set_up_installs_sd_jax_on_a_fresh_python(tmp_path, monkeypatch):
    """The source, settings and set-up cells in a kernel whose Python has no sd_jax (a venv that
    sees the installed requirements), the notebook alone in a folder, SD_JAX_SOURCE a copy of
    the repository: the set-up pip-installs it (no package index: everything else is
    installed), and `python -m sd_jax --config=quickstart` then works from any directory."""
    source = tmp_path / "my copy of sd-jax"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "requirements.txt", "requirements-dev.txt",
                 "launch.py"):
        shutil.copy(REPO / name, source / name)
    for name in ("sd_jax", "configs"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages",
                    str(venv)], check=True)
    kernels = tmp_path / "jupyter" / "kernels" / "fresh"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [str(venv / "bin" / "python"), "-m", "ipykernel_launcher", "-f",
                 "{connection_file}"], "display_name": "fresh", "language": "python"}))
    here = tmp_path / "notebook"
    here.mkdir()
    for name, value in {"JUPYTER_PATH": str(tmp_path / "jupyter"), "SD_JAX_SOURCE": str(source),
                        "PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "0",
                        "JAX_PLATFORMS": "cpu"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells = nb.cells[:4] + [nbformat.v4.new_code_cell(FRESH_CHECK)]
    NotebookClient(nb, timeout=600, kernel_name="fresh",
                   resources={"metadata": {"path": str(here)}}).execute()
    text = "\n".join(out.get("text", "") for c in nb.cells for out in c.get("outputs", [])
                     if out.get("output_type") == "stream")
    assert "pip install -q --no-deps" in text, text[-3000:]
    origin = text.split("origin: ")[1].splitlines()[0]
    assert origin.startswith(str(venv)) and origin.endswith("sd_jax/__init__.py"), origin
    assert "inspect: 0 ['{" in text and '"params": ' in text, text[-3000:]
