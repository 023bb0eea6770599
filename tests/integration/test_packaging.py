"""`pip install .` (a wheel, not the editable install of `make setup`) carries the Hydra configs: the package's
`conf` link to the top-level conf/ becomes real files in the wheel, and `python -m d3llm_pipeline` composes from
them in any working directory. Built from a copy of the source tree (a build writes build/ beside the sources).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

from conftest import ROOT


def test_the_wheel_carries_the_configs_and_runs_from_anywhere(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "outputs", ".gpu", ".whl", "build", "*.egg-info", "__pycache__", ".pytest_cache", "docs"))
    assert (src / "d3llm_pipeline" / "conf").is_symlink()
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                            str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("d3llm_pipeline-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    want = {f"d3llm_pipeline/conf/{p.relative_to(ROOT / 'conf').as_posix()}" for p in (ROOT / "conf").rglob("*.yaml")}
    assert want and want <= names, sorted(want - names)[:5]
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    assert not (target / "d3llm_pipeline" / "conf").is_symlink()  # real files, not a link into a source tree
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    where = tmp_path / "elsewhere"
    where.mkdir()
    run = subprocess.run([sys.executable, "-c", "import d3llm_pipeline, runpy, sys; print(d3llm_pipeline.__file__); "
                          "sys.argv = ['d3llm_pipeline', 'stage=eval', 'decode=d3llm', '--cfg', 'job', '--resolve']; "
                          "runpy.run_module('d3llm_pipeline', run_name='__main__')"],
                         capture_output=True, text=True, timeout=300, cwd=where, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines()[0].startswith(str(target))  # the installed copy, not the source tree
    assert "rule: d3llm" in run.stdout and f"root_dir: {where}" in run.stdout
