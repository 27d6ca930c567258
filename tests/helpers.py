"""Test helpers: running a script's main as its command line does and checking its one-line errors; the synthetic
checkpoints, images and training layouts the tests share with the benchmarks are re-exported from where they live
(``model.synthetic``, ``dataset.synthetic``, ``tests.layouts``). Imported by the tests as ``helpers`` (pytest puts
``tests/`` on the path)."""
from __future__ import annotations

import os
import re
from typing import Callable, List, Optional, Tuple

import pytest

from dataset.synthetic import face_array, save_image  # noqa: F401 - re-exported for the tests
from model.synthetic import load_manifest, manifest_state_dict  # noqa: F401 - re-exported for the tests
from tests.layouts import official_layout, official_schema_config  # noqa: F401 - re-exported for the tests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def run_script(main: Callable[[Optional[List[str]]], int], prog: str, argv: List[str],
               capsys: Optional[pytest.CaptureFixture] = None) -> Tuple[int, str]:
    """Run a script's ``main`` as its command line does; returns the exit code and what it wrote to stderr."""
    from utils.cli import run_cli

    code = run_cli(main, argv, prog)
    return code, capsys.readouterr().err if capsys is not None else ""


def assert_user_error(code: int, err: str, prog: str, pattern: str) -> None:
    """A user mistake: exit code 2, exactly one ``<prog>: error: ...`` line matching ``pattern``, no traceback."""
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith(f"{prog}: error:")]
    assert len(lines) == 1 and re.search(pattern, lines[0]), err
    assert "Traceback" not in err
