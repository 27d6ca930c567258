"""Shared fixtures (helpers live in ``helpers.py``)."""
from __future__ import annotations

import pytest
import torch
from helpers import load_manifest, manifest_state_dict


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Folder holding ``ediffiqa{L,M,S,T}.pth`` built from the manifest (plain state dicts, official layout)."""
    folder = tmp_path_factory.mktemp("weights")
    for variant in load_manifest():
        torch.save(manifest_state_dict(variant, seed=1), str(folder / f"{variant}.pth"))
    return str(folder)


def pytest_collection_modifyitems(config: pytest.Config, items) -> None:
    """Tests marked ``gpu`` need CUDA: without it they are skipped, saying so."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def no_internet(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never reach the internet: weights fetched by name come from a mirror on a closed local port (a test
    that serves files sets its own), into a cache of the test's own."""
    monkeypatch.setenv("EDIFFIQA_MIRROR", "http://127.0.0.1:9")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))
