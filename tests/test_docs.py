"""The documentation stays true to the tree: every script, module and config a command in
README.md, docs/ or a folder's README names exists, and every relative link resolves. (The
quickstart commands themselves run in tests/eval/test_digits_eval.py.)"""

import importlib.util
import re

from utils import REPO

PAGES = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md"),
                *(REPO / d / "README.md" for d in ("scripts", "benchmarks", "experiments")),
                *(REPO / "experiments").glob("*/README.md")])


def _commands():
    """(page, command) for every `python ...` command in code blocks and inline code."""
    for page in PAGES:
        text = page.read_text()
        for match in re.finditer(r"(?:^|`|\s)(python3? (?:-m [\w.]+|[\w/.-]+\.py)[^`\n]*)",
                                 text, re.M):
            yield page, match.group(1)


def test_the_pages_exist_and_readme_is_short():
    assert len(PAGES) >= 15, PAGES
    assert len((REPO / "README.md").read_text().splitlines()) <= 200


def test_every_documented_script_module_and_config_exists():
    commands = list(_commands())
    assert len(commands) > 40, len(commands)
    missing = []
    for page, command in commands:
        words = command.split()
        if words[1] == "-m":
            if importlib.util.find_spec(words[2]) is None:
                missing.append((page.name, words[2]))
        elif not (REPO / words[1]).is_file() and "/" in words[1]:
            missing.append((page.name, words[1]))
        for config in re.findall(r"--config=([\w/.]+\.py)", command):
            if not (REPO / config).is_file():
                missing.append((page.name, config))
    assert missing == []


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append((page.relative_to(REPO).as_posix(), target))
    assert broken == []


def test_every_named_test_file_exists():
    """A page that cites a test by path (`tests/eval/test_fid.py::...`) names a real file."""
    named = [(page.name, path) for page in PAGES
             for path in re.findall(r"tests/[\w/]*test_\w+\.py", page.read_text())]
    assert len(named) > 10, named
    assert [(page, path) for page, path in named if not (REPO / path).is_file()] == []
