"""The import graph has no upward edge: utils -> model, dataset -> engine -> scripts, imports only downward (every
import statement counts, also those inside functions)."""
from __future__ import annotations

import ast
import os
import re

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


def attribute_reads(path: str, name: str):
    """Lines of ``path`` where code reads an attribute called ``name`` (``x.name``, ``getattr(x, "name")``), comments,
    strings and docstrings aside."""
    tree = ast.parse(open(path, encoding="utf-8").read(), filename=path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == name:
            yield node.lineno
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
              and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and node.args[1].value == name):
            yield node.lineno


def test_the_labels_run_reads_the_policy_not_the_official_flag() -> None:
    """engine/labels/policy.py is the one place that turns base.official into how labels are computed: the folder
    run never reads an attribute named ``official``."""
    path = os.path.join(ROOT, "engine", "labels", "run.py")
    assert list(attribute_reads(path, "official")) == []
    assert list(attribute_reads(os.path.join(ROOT, "engine", "labels", "policy.py"), "official"))


def test_the_attribute_check_sees_a_read(tmp_path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text('"""base.official in a docstring."""\n# cfg.base.official in a comment\nx = "base.official"\n'
                   'if cfg.base.official:\n    pass\ny = getattr(cfg.base, "official")\n')
    assert list(attribute_reads(str(bad), "official")) == [4, 6]


def _code_strings_and_names(path: str):
    """String constants (docstrings left out) and identifiers of ``path``'s code."""
    tree = ast.parse(open(path, encoding="utf-8").read(), filename=path)
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value
        elif isinstance(node, ast.Name):
            yield node.lineno, node.id
        elif isinstance(node, ast.Attribute):
            yield node.lineno, node.attr


def test_no_script_or_engine_module_names_a_variant_or_backbone() -> None:
    """The registry (model/registry.py) is the one home of variant facts: no code outside model/ spells a variant,
    a backbone or an official module string that names one."""
    from model.registry import BACKBONES, VARIANTS

    names = set(VARIANTS) | set(BACKBONES) | {m for b in BACKBONES.values() for m in b.modules}
    pattern = re.compile(r"(?<![\w.])(" + "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) +
                         r")(?![\w])")
    found = []
    for package, path in modules():
        if package in ("engine", "script"):
            found += [f"{os.path.relpath(path, ROOT)}:{line}: {text!r}" for line, text in _code_strings_and_names(path)
                      if pattern.search(text)]
    assert not found, "\n".join(found)


def test_the_check_sees_a_variant_name(tmp_path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text('"""Docs may say ediffiqaL."""\nDEFAULT = "ediffiqaL"\n')
    assert [(line, text) for line, text in _code_strings_and_names(str(bad)) if "ediffiqa" in text] == [
        (2, "ediffiqaL")]


@pytest.mark.parametrize("script,flag,source", [("inference", "--model", "variant_names"),
                                                ("export_onnx", "--model", "variant_names"),
                                                ("extract_embeddings", "--backbone", "backbone_names"),
                                                ("extract_embeddings", "--model", "variant_names")])
def test_the_registry_drives_the_cli_choices(script, flag, source) -> None:
    import importlib

    import model.registry as registry

    parser = importlib.import_module(script).build_parser()
    action = next(a for a in parser._actions if flag in a.option_strings)
    assert action.choices == getattr(registry, source)()


def _attributes_named(path: str, name: str):
    """Lines of ``path`` that read or set an attribute called ``name`` (``cfg.base.<name>``,
    ``getattr(x, "<name>")``)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), filename=path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == name:
            yield node.lineno
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "setattr")
              and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and node.args[1].value == name):
            yield node.lineno


def test_the_trainer_reads_the_policy_not_the_official_flag() -> None:
    """engine/training/policy.py is the one place that turns base.official into how training computes: the trainer
    never reads an attribute named ``official``."""
    path = os.path.join(ROOT, "engine", "training", "trainer.py")
    assert list(_attributes_named(path, "official")) == []


def test_the_check_sees_the_official_flag(tmp_path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text('"""The official loop."""\n# official\nif cfg.base.official:\n    x = getattr(base, "official")\n')
    assert sorted(_attributes_named(str(bad), "official")) == [3, 4]


#: Run in a fresh interpreter by :func:`startup_imports`: each script's ``--help`` (and the argument error of
#: inference.py) as ``python SCRIPT ...`` runs it, then inference.py on a few faces on the CPU; after each step, the
#: heavy packages imported so far.
_PROBE = """
import contextlib, io, json, runpy, sys
HEAVY = ("torch", "torchvision", "matplotlib", "numpy")
def run(script, *argv):
    sys.argv = [script, *argv]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as exc:
            return exc.code
    return 0
steps = json.loads(sys.argv[1])
print(json.dumps([[name, run(*argv), sorted(m for m in HEAVY if m in sys.modules)] for name, argv in steps]))
"""


@pytest.fixture(scope="module")
def startup_imports(tmp_path_factory, checkpoint_dir, make_faces):
    """``{step: (exit code, heavy packages imported so far)}`` of :data:`_PROBE`'s steps, in one process (a few
    seconds); the steps run in order, so a package a step imports is seen at it and at every later step."""
    import json
    import subprocess
    import sys

    tmp = tmp_path_factory.mktemp("startup")
    make_faces(tmp / "faces", ["a.jpg", "b.png", "c.png"], sizes={"b.png": 150, "c.png": 90})
    steps = [("inference.py --help", ["inference.py", "--help"]),
             ("inference.py argument error", ["inference.py", "--batch-size", "x"]),
             *((f"{s} --help", [s, "--help"]) for s in SCRIPTS if s != "inference.py"),
             ("inference.py on faces", ["inference.py", "--images", str(tmp / "faces"), "--model", "ediffiqaT",
                                        "--weights", os.path.join(checkpoint_dir, "ediffiqaT.pth"),
                                        "--output", str(tmp / "out"), "--device", "cpu", "-q",
                                        "--figure-tiles", "2"])]
    env = {**os.environ, "EDIFFIQA_MIRROR": "http://127.0.0.1:9", "TORCH_HOME": str(tmp / "torch_home")}
    proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(steps)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {name: (code, heavy) for name, code, heavy in json.loads(proc.stdout)}


def test_help_and_the_scoring_path_leave_out_what_they_do_not_use(startup_imports) -> None:
    """Every script answers --help (and inference.py an argument error) without matplotlib or torchvision, and
    inference.py scores a folder on the CPU, figure included, without torchvision: each costs about a second to
    import (torchvision loads torch._dynamo through torchvision.ops)."""
    expected_codes = {"inference.py argument error": 2}
    for step, (code, heavy) in startup_imports.items():
        assert code == expected_codes.get(step, 0), step
        if step != "inference.py on faces":
            assert "matplotlib" not in heavy, step
        assert "torchvision" not in heavy, step
    assert "matplotlib" in startup_imports["inference.py on faces"][1]  # the probe sees an import: the figure's


def test_inference_answers_help_and_argument_errors_without_torch(startup_imports) -> None:
    """``inference.py --help`` and an argument error need the variant names, not the models: no torch, no NumPy."""
    for step in ("inference.py --help", "inference.py argument error"):
        assert not {"torch", "numpy"} & set(startup_imports[step][1]), step


@pytest.mark.slow
def test_benchmarks_start_without_pytest() -> None:
    """Each benchmark answers --help (cuda_check: imports) in a Python where pytest cannot be imported, as with
    requirements.txt alone."""
    import subprocess
    import sys

    names = sorted(n[:-3] for n in os.listdir(os.path.join(ROOT, "benchmarks")) if n.endswith(".py")
                   and n != "__init__.py")
    code = ("import importlib, runpy, sys\n"
            "sys.modules['pytest'] = None\n"
            f"for name in {names!r}:\n"
            "    if name == 'cuda_check':\n"
            "        importlib.import_module('benchmarks.' + name)\n"
            "        continue\n"
            "    sys.argv = [name, '--help']\n"
            "    try:\n"
            "        runpy.run_module('benchmarks.' + name, run_name='__main__')\n"
            "    except SystemExit as exc:\n"
            "        assert exc.code in (0, None), (name, exc.code)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_package_installs_every_script_and_package() -> None:
    """``pip install -e .`` (and a wheel) carries each top-level script and every package: the setuptools keys sit in
    the sections setuptools reads (a key under the wrong table is ignored without a word)."""
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        tool = tomllib.load(f)["tool"]["setuptools"]
    assert sorted(tool["py-modules"]) == sorted(name[:-3] for name in os.listdir(ROOT) if name.endswith(".py"))
    packages = []
    for top in sorted(os.listdir(ROOT)):
        if top in ("tests", "benchmarks") or top.startswith("."):
            continue
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            if "__init__.py" in files:
                packages.append(os.path.relpath(folder, ROOT).replace(os.sep, "."))
    assert sorted(tool["packages"]) == sorted(packages)
