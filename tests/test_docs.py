"""The repository's documents stand alone: the README's code map lists exactly the package's
modules, and nothing cites a file outside the repository (such as a design note a user's clone
does not have)."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _code_map() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Code map\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(tdsa_fast/[^`]+)` \|", section, re.M)


def test_the_code_map_lists_every_module_once():
    listed = _code_map()
    assert len(listed) == len(set(listed)), sorted(p for p in listed if listed.count(p) > 1)
    packages = {p.rstrip("/") for p in listed if p.endswith("/")}
    modules = {str(p.relative_to(REPO)) for p in (REPO / "tdsa_fast").rglob("*.py")}
    covered = {m for m in modules if any(m.startswith(pkg + "/") for pkg in packages)}
    assert set(listed) - {p for p in listed if p.endswith("/")} | covered == modules, (
        "missing from the code map: " + ", ".join(sorted(modules - set(listed) - covered))
        + "; listed but absent: " + ", ".join(sorted(set(listed) - modules - {p for p in listed if p.endswith("/")})))


def _tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    keep = (".py", ".md", ".cpp", ".cu", ".cuh", ".h", ".sh", ".yaml", ".toml", ".txt")
    return [REPO / f for f in out.splitlines() if f.endswith(keep) and not f.startswith("wip/")]


def test_nothing_cites_a_file_outside_the_repository():
    pattern = re.compile(r"DESIGN(\.md)? ?§|DESIGN\.md|\.\./shared/(paper|reviews)")
    offenders = []
    for path in _tracked_text_files():
        if path.name == "test_docs.py" or not path.exists():
            continue
        for k, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{k}: {line.strip()[:100]}")
    assert not offenders, "\n".join(offenders)


def test_every_docs_file_the_code_names_exists():
    named = set()
    for path in _tracked_text_files():
        if path.exists():
            named.update(re.findall(r"\bdocs/[a-z_]+\.md\b", path.read_text(errors="replace")))
    missing = sorted(n for n in named if not (REPO / n).exists())
    assert not missing, missing
