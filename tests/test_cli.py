"""Every script's command line: named flags from one table per script, and ``--set KEY=VALUE`` for any key of its
schema (typed by the schema; a wrong key or type is the usual one-line error)."""
from __future__ import annotations

import importlib

import pytest
from helpers import assert_user_error, run_script

#: script -> (the workflow its main calls, what that returns, extra arguments it needs, a --set item and its check)
SCRIPTS = {
    "inference": ("engine.scoring.run.score", {}, [], "base.seed=7", lambda c: c.base.seed == 7),
    "diffiqa_score": ("engine.labels.run.run_scoring", None, [], "inference.repeats=3",
                      lambda c: c.inference.repeats == 3),
    "train": ("engine.training.trainer.train", {"best_val": 0.0, "main": True, "written": []}, [], "loss.theta=0.25",
              lambda c: c.loss.theta == 0.25),
    "train_diffusion": ("engine.denoiser.trainer.train_diffusion", {"step": 0}, [], "trainer_params.train_lr=1e-3",
                        lambda c: c.trainer_params.train_lr == 1e-3),
    "prepare_data": ("engine.training.prepare.prepare", None, [], "beta=0.3", lambda c: c.beta == 0.3),
    "evaluate": ("engine.evaluation.run.evaluate", [], ["--scores", "q=q.pkl"], "discard_limits=[0.1, 0.4]",
                 lambda c: c.discard_limits == [0.1, 0.4]),
    "extract_embeddings": ("engine.scoring.embeddings.extract_embeddings", {}, [
        "--images", "faces", "--backbone", "iresnet18", "--weights", "w.pth", "--output", "e.pkl"], "flip=true",
        lambda c: c.flip is True),
    "export_onnx": ("engine.scoring.export.export_checked", (0.0, 1.0), [
        "--model", "ediffiqaT", "--weights", "w.pth", "--output", "m.onnx"], "opset=13", lambda c: c.opset == 13),
}


def _capture(monkeypatch, script):
    """Replace the workflow with one that records the config it gets."""
    target, result, _, _, _ = SCRIPTS[script]
    module, name = target.rsplit(".", 1)
    seen = []

    def workflow(cfg, *args, **kwargs):
        seen.append(cfg)
        if script == "diffiqa_score":
            from engine.resumable import FolderSummary

            return FolderSummary()
        return result

    if script == "export_onnx":
        def workflow(model, weights, output, with_embedding, opset):  # noqa: F811 - export_checked's signature
            from engine.scoring.export import ExportConfig

            seen.append(ExportConfig(model, weights, output, with_embedding, opset))
            return result
    monkeypatch.setattr(importlib.import_module(module), name, workflow)
    return seen


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_set_reaches_the_config(script, monkeypatch, capsys) -> None:
    seen = _capture(monkeypatch, script)
    _, _, extra, item, holds = SCRIPTS[script]
    code, err = run_script(importlib.import_module(script).main, f"{script}.py", [*extra, "--set", item], capsys)
    assert code == 0, err
    assert len(seen) == 1 and holds(seen[0])


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_the_set_example_of_each_help_runs(script, monkeypatch, capsys) -> None:
    """Each script's help shows a --set example of its own schema, and that example runs."""
    import re

    module = importlib.import_module(script)
    text = " ".join(module.build_parser().format_help().split())
    found = re.findall(r"e\.g\. --set (\S+?);", text)
    assert len(found) == 1, text
    seen = _capture(monkeypatch, script)
    code, err = run_script(module.main, f"{script}.py", [*SCRIPTS[script][2], "--set", found[0]], capsys)
    assert code == 0, err
    assert len(seen) == 1


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_set_with_a_wrong_key_or_type_is_one_line(script, monkeypatch, capsys) -> None:
    seen = _capture(monkeypatch, script)
    _, _, extra, item, _ = SCRIPTS[script]
    main = importlib.import_module(script).main
    code, err = run_script(main, f"{script}.py", [*extra, "--set", "no_such.key=1"], capsys)
    assert_user_error(code, err, f"{script}.py", r"--set no_such.key=1: unknown key 'no_such.key'")
    key = item.split("=")[0]
    code, err = run_script(main, f"{script}.py", [*extra, "--set", f"{key}=[oops"], capsys)
    assert_user_error(code, err, f"{script}.py", rf"(not valid YAML|'{key}' must be)")
    code, err = run_script(main, f"{script}.py", [*extra, "--set", "no equals sign"], capsys)
    assert_user_error(code, err, f"{script}.py", r"--set takes KEY=VALUE")
    assert not seen


def test_set_is_typed_by_the_schema(monkeypatch, capsys) -> None:
    """A text key keeps the text as given (a number-like folder name stays text); null clears an optional key; a
    nested key inside a free mapping takes YAML; --set comes after the named flags."""
    seen = _capture(monkeypatch, "inference")
    import inference

    code, err = run_script(inference.main, "inference.py", [
        "--images", "a", "--set", "dataset.loc=2024", "--set", "weights=null", "--set", "base.limit=8",
        "--batch-size", "4", "--set", "dataloader.params.batch_size=5"], capsys)
    assert code == 0, err
    cfg = seen[0]
    assert cfg.dataset.loc == "2024" and cfg.weights is None and cfg.base.limit == 8
    assert cfg.dataloader.params.batch_size == 5
    seen = _capture(monkeypatch, "train")
    import train

    code, err = run_script(train.main, "train.py", ["--set", "optimizer.params.weight_decay=0.01"], capsys)
    assert code == 0, err
    assert seen[-1].optimizer.params == {"weight_decay": 0.01}
    code, err = run_script(train.main, "train.py", ["--set", "base.epochs=many"], capsys)
    assert_user_error(code, err, "train.py", r"'base.epochs' must be int, got 'many'")


def test_the_garbage_collector_is_paused_for_a_scripts_start_up_only() -> None:
    """A script run as ``python SCRIPT`` (``run_cli(main, None, ...)``) starts with the cyclic garbage collector
    paused; setup_logging, where the work begins, freezes what start-up made and resumes it; a run that ends before
    (--help, an error) resumes it too; ``main`` run in-process with its own argv leaves the collector alone."""
    import gc

    from utils import cli
    from utils.errors import ConfigError

    seen = []

    def main(argv):
        seen.append(gc.isenabled())
        cli.setup_logging(False)
        seen.append(gc.isenabled())
        return 0

    def fails(argv):
        seen.append(gc.isenabled())
        raise ConfigError("bad")

    try:
        assert cli.run_cli(main, None, "x.py") == 0
        frozen = gc.get_freeze_count()
        assert seen == [False, True] and frozen > 0
        seen.clear()
        assert cli.run_cli(fails, None, "x.py") == 2 and seen == [False] and gc.isenabled()
    finally:
        gc.unfreeze()  # the test's process keeps collecting everything
        gc.enable()
    seen.clear()
    assert cli.run_cli(main, ["--x"], "x.py") == 0 and seen == [True, True] and gc.get_freeze_count() == 0


def test_backend_help_and_config_comment_list_every_backend() -> None:
    """``--backend``'s help and the shipped config's comment name every backend, ``auto`` included, in the order of
    the one list the config checks against (the first is the default)."""
    import re

    import inference
    from engine.scoring import BACKENDS
    from engine.scoring.config import InferenceConfig

    (action,) = [a for a in inference.build_parser()._actions if "--backend" in a.option_strings]
    listed = re.findall(r"\w+", action.help.split(" (default")[0])
    assert listed == list(BACKENDS) and f"default {InferenceConfig().backend};" in action.help
    import os

    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                           "inference_config.yaml")) as handle:
        (line,) = [line for line in handle if line.startswith("backend:")]
    comment = line.split("#", 1)[1]
    assert all(re.search(rf"\b{name}\b", comment) for name in BACKENDS), comment


@pytest.mark.parametrize("script,file,flags,pattern", [
    ("train", "base: {epochs: 2}", ["--workers", "-1"],
     r"error: command line \(--workers\): 'dataloader.train.params.num_workers' must be between 0 and 256, got -1$"),
    ("train", "base: {epochs: 2}", ["--set", "loss.theta=2"],
     r"error: command line \(--set\): 'loss.theta' must be in"),
    ("inference", "base: {seed: 1}", ["--images", "a", "--batch-size", "0"],
     r"error: command line \(--batch-size\): 'dataloader.params.batch_size' must be between 1 and"),
    ("prepare_data", "beta: 0.5", ["--min-images", "x"], None),  # argparse's own error: the flag, no config
    ("prepare_data", "beta: 0.5", ["--beta", "1.5"], r"error: command line \(--beta\): 'beta'"),
    ("train", "base: {epochs: 0}", ["--workers", "1"], r"error: .*cfg.yaml: 'base.epochs' must be at least 1"),
])
def test_a_bad_value_is_blamed_on_the_flag_or_the_file_that_gave_it(script, file, flags, pattern, tmp_path, monkeypatch,
                                                                     capsys) -> None:
    """With -c, a value from a named flag or --set is the command line's error (naming the flag), one from the file
    the file's."""
    seen = _capture(monkeypatch, script)
    (tmp_path / "cfg.yaml").write_text(file)
    code, err = run_script(importlib.import_module(script).main, f"{script}.py",
                           ["-c", str(tmp_path / "cfg.yaml"), *flags], capsys)
    if pattern is None:
        assert code == 2 and "--min-images" in err and "cfg.yaml" not in err, err
    else:
        assert_user_error(code, err, f"{script}.py", pattern)
    assert not seen


@pytest.mark.parametrize("script", [*sorted(SCRIPTS), "scripts.make_face_set", "scripts.unpack_bin"])
def test_argument_errors_are_one_line(script, capsys) -> None:
    """argparse's own errors (an unknown flag, a value of the wrong type, a missing value) are one line with the
    script's name, as every other user error, with no usage block before it."""
    module = importlib.import_module(script)
    prog = getattr(module, "PROG", f"{script}.py")
    for argv in (["--no-such-flag"], ["--output"], ["--set"], ["stray\nvalue"]):
        code, err = run_script(module.main, prog, argv, capsys)
        assert code == 2 and err.count("\n") == 1 and err.startswith(f"{prog}: error: "), err
        assert err.rstrip().endswith(f"see {prog} --help") and "usage:" not in err
