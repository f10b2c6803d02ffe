"""Requirements and packaging: no cap that could replace an accelerator jax installed first, and
`pip install .` gives a working `sd-jax` command with launch.py's flags.

Budget: ~30 s for the console-script test (a venv, a wheel build, an inspect run) and up to
~90 s for the resolution test, which asks the package index (PyPI) for every requirement.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from utils import REPO

CAPS = ("<", "<=", "==", "===", "~=")  # Operators that keep a newer version out.
NEWER_JAX = "0.99.0"  # Stands in for an accelerator jax newer than any release today.


def requirements(path: Path) -> list[Requirement]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def test_runtime_requirements_have_floors_and_no_caps():
    reqs = requirements(REPO / "requirements.txt")
    names = {r.name for r in reqs}
    assert {"jax", "flax", "optax", "orbax-checkpoint", "clu", "grain"} <= names
    for req in reqs:
        ops = {spec.operator for spec in req.specifier}
        assert ">=" in ops, f"{req}: give the tested floor"
        assert not ops & set(CAPS), f"{req}: an upper cap can make pip replace an installed jax"
    dev = {r.name for r in requirements(REPO / "requirements-dev.txt")}
    assert {"pytest", "ruff", "nbclient"} <= dev and not dev & names  # Separate lists.


def fake_installed(venv_python: Path, name: str, version: str) -> None:
    """Makes pip in the venv see `name==version` as installed (metadata only, no code)."""
    purelib = subprocess.run([str(venv_python), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    info = Path(purelib) / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def index_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=10).close()
        return True
    except OSError:
        return False


@pytest.mark.slow
def test_requirements_keep_a_newer_accelerator_jax(tmp_path):
    # docs/getting_started.md: `pip install -U "jax[tpu]" && pip install -r requirements.txt`
    # (or jax[cuda12]).
    # A fresh venv where the first command left a jax newer than any release; pip resolves the
    # second against the index (--dry-run: nothing installed) and must not touch jax.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    for name in ("jax", "jaxlib"):
        fake_installed(python, name, NEWER_JAX)
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--dry-run", "--quiet",
         "--report", str(report), "-r", str(REPO / "requirements.txt")],
        capture_output=True, text=True, timeout=900)
    if proc.returncode and not index_reachable():
        pytest.skip("the package index is not reachable")
    assert proc.returncode == 0, proc.stderr[-3000:]
    planned = {item["metadata"]["name"].lower(): item["metadata"]["version"]
               for item in json.loads(report.read_text())["install"]}
    assert "flax" in planned and "grain" in planned  # The resolution really ran.
    assert not {"jax", "jaxlib"} & set(planned), f"pip would replace jax: {planned}"


@pytest.mark.slow
def test_pip_install_gives_the_sd_jax_command(tmp_path):
    # Install a copy of the package (pip would write build/ into the checkout) into a venv that
    # sees the already installed dependencies, and run the command from elsewhere.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "requirements.txt", "requirements-dev.txt"):
        shutil.copy(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__")
    for name in ("sd_jax", "configs"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages",
                    str(venv)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                    "install", "--quiet", "--no-deps", "--no-build-isolation", str(src)],
                   check=True, capture_output=True, timeout=600)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["JAX_PLATFORMS"] = "cpu"

    def run(command: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)

    help_installed = run([str(venv / "bin" / "sd-jax"), "--help"])
    help_launch = run([sys.executable, str(REPO / "launch.py"), "--help"])
    flag_lines = [line.split(":")[0] for line in help_launch.stdout.splitlines()
                  if line.startswith("  --")]
    assert "  --config" in flag_lines and "  --mode" in flag_lines
    assert flag_lines == [line.split(":")[0] for line in help_installed.stdout.splitlines()
                          if line.startswith("  --")]

    inspect = run([str(venv / "bin" / "sd-jax"), f"--config={src}/configs/quickstart.py",
                   "--mode=inspect", "--config.model.transformer_depth=1"])
    assert inspect.returncode == 0, inspect.stderr[-3000:]
    assert json.loads(inspect.stdout.strip().splitlines()[-1])["params"] > 0
    bad = run([str(venv / "bin" / "sd-jax"), f"--config={src}/configs/quickstart.py",
               "--config.train.bogus=1", f"--workdir={tmp_path / 'run'}"])
    assert bad.returncode == 1 and bad.stderr.startswith("error: unknown config key 'bogus'")

    # From outside the repository, a shipped config by name or by the README's path; and a
    # config file of one's own that builds on a shipped one.
    (tmp_path / "mine.py").write_text(
        "from sd_jax.configs import quickstart\n\n\ndef get_config():\n"
        "    c = quickstart.get_config()\n    c.model.transformer_depth = 1\n    return c\n")
    for config in ("quickstart", "configs/quickstart.py", str(tmp_path / "mine.py")):
        named = run([str(venv / "bin" / "sd-jax"), f"--config={config}", "--mode=inspect"])
        assert named.returncode == 0, named.stderr[-3000:]
        assert json.loads(named.stdout.strip().splitlines()[-1])["params"] > 0
    missing = run([str(venv / "bin" / "sd-jax"), "--config=quickstrat", "--mode=inspect"])
    assert missing.returncode == 1 and "quickstart" in missing.stderr, missing.stderr
    # Installed inside the package, never as a top-level `configs` package.
    where = run([str(venv / "bin" / "python"), "-c", "import importlib.util as u, sd_jax.configs;"
                 " print(sd_jax.configs.__file__, u.find_spec('configs'))"])
    package_file, top_level = where.stdout.split()
    assert Path(package_file).parent.parent.name == "sd_jax" and top_level == "None", where.stdout


def test_the_package_list_holds_every_package():
    """pyproject.toml lists the packages (it maps configs/ to sd_jax.configs): every folder of
    sd_jax with an __init__.py must be there, or `pip install .` would leave it out."""
    import tomllib

    listed = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "sd_jax").rglob(
        "__init__.py")}
    assert set(listed["packages"]) == found | {"sd_jax.configs"}
    assert listed["package-dir"] == {"sd_jax.configs": "configs"}


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    command = next(line for line in readme.splitlines() if line.endswith("python -m pytest tests"))
    assert command.startswith("pip install -r requirements.txt -r requirements-dev.txt")
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert command in ci
