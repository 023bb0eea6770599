"""Registries by convention: the modules of a package that define a given top-level name are its entries.

    modules_defining(Path(tasks.__file__).parent, "TASK")        # ("arith", "arith_long", "benchmarks", ...)
    modules_defining(Path(families.__file__).parent, "FAMILY")   # ("dream", "llada", "tiny")

So adding a task kind or a model family is one module (plus its YAMLs): no list to extend. The modules are read,
not imported (an entry's module may pull in heavy libraries; it is imported when it is used). At the bottom of the
package: nothing here imports anything of ours.
"""

from __future__ import annotations

import ast
from pathlib import Path


def modules_defining(package_dir: Path, name: str) -> tuple[str, ...]:
    """The names of the modules in `package_dir` (sorted) whose source assigns `name` at the top level."""
    found = []
    for path in sorted(Path(package_dir).glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        if any(isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets)
               for node in tree.body):
            found.append(path.stem)
    return tuple(found)
