"""notebooks/colab_tpu.ipynb runs end to end on CPU (the Colab set-up is skipped outside Colab).

The run is shrunk through SD_JAX_NOTEBOOK_OVERRIDES: a ~30k-parameter quickstart model, two
train steps with a sample grid at the end, four samples with two sampler steps. Budget: ~60 s
on 2 CPU cores (the sampler's compile; the train step's compile is cached when
test_experiments ran first).
"""

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
