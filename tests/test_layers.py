"""The import graph has no upward edge: utils -> model, dataset -> engine -> scripts, imports only downward (every
import statement counts, also those inside functions)."""
from __future__ import annotations

import ast
import os

import pytest

from helpers import ROOT

#: Layer of each package; a module may import its own package and packages of lower layers. model and dataset
#: are peers that do not import each other.
LAYERS = {"utils": 0, "model": 1, "dataset": 1, "engine": 2}
SCRIPTS = ["inference.py", "prepare_data.py", "train.py", "evaluate.py", "diffiqa_score.py", "train_diffusion.py",
           "extract_embeddings.py", "export_onnx.py"]


def project_imports(path: str):
    """``(line, top-level package)`` of every import of a project package in ``path``."""
    tree = ast.parse(open(path, encoding="utf-8").read(), filename=path)
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            if top in LAYERS or top + ".py" in SCRIPTS:
                yield node.lineno, top


def modules():
    for package in LAYERS:
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in sorted(files):
                if name.endswith(".py"):
                    yield package, os.path.join(folder, name)
    for script in SCRIPTS:
        yield "script", os.path.join(ROOT, script)


@pytest.mark.parametrize("package,path", list(modules()), ids=lambda v: os.path.relpath(v, ROOT) if "/" in str(v)
                         else v)
def test_imports_only_go_downward(package, path) -> None:
    rank = 3 if package == "script" else LAYERS[package]
    upward = [f"line {line}: {package} imports {target}" for line, target in project_imports(path)
              if target + ".py" in SCRIPTS or (target != package and LAYERS[target] >= rank)]
    assert not upward, f"{os.path.relpath(path, ROOT)}: " + "; ".join(upward)


def test_the_check_sees_an_upward_import(tmp_path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from engine.scoring.run import score\n")
    assert list(project_imports(str(bad))) == [(2, "engine")]
