"""The README is a front page and the docs hang together: every relative link in README.md and docs/ points at a
file that exists, and no tracked file names a path of this machine.

Run: .venv/bin/python -m pytest tests/integration/test_docs.py -q
"""

from __future__ import annotations

import re
import subprocess

import pytest
from conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target): Markdown links and images


@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_every_relative_link_points_at_a_file(doc):
    missing = []
    for target in LINK.findall(doc.read_text()):
        path = target.split("#", 1)[0]
        if not path or re.match(r"[a-z]+:", path):  # an anchor in the page, or http(s): / mailto:
            continue
        if not (doc.parent / path).exists():
            missing.append(target)
    assert not missing, f"{doc.name} links to files that do not exist: {missing}"


def test_the_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move details to docs/"
    assert "make setup" in "\n".join(lines) and "make test" in "\n".join(lines)


def test_no_path_of_this_machine_in_tracked_files():
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout (an installed package)")
    machine = re.compile(r"(?<![\w.])/(work|root|home)/\w")
    hits = []
    for name in listed.stdout.split():
        path = ROOT / name
        if name.startswith("tests/fixtures/") or path.suffix in (".png", ".safetensors") or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if machine.search(line):
                hits.append(f"{name}:{number}: {line.strip()[:100]}")
    assert not hits, "paths of this machine (name ../shared/... relative to the checkout, or a placeholder):\n" + \
        "\n".join(hits)
