"""Where the files the project ships are found from any working directory.

The official configs and this project's defaults name bundled files relative to the repository
(``./configs/ediffiqaT_config.yaml``, ``./weights/r100.pth``, ``./example_images``); every other relative path keeps its
usual meaning, relative to the current folder.
"""
from __future__ import annotations

import os

__all__ = ["REPO_ROOT", "repo_path"]

#: The repository's root folder (this file is ``<root>/utils/paths.py``).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))


def repo_path(path: str, shipped: bool = False) -> str:
    """``path`` as the project opens it.

    An absolute path, or a relative one that names something in the current folder, is left as it is (a user's copy
    of a bundled file wins). Otherwise a relative path names the repository's file when the repository has one there;
    a path the project ships as a default (``shipped``) names the repository's file even when it is missing, so that
    the message about it says where it belongs. Run from the repository itself, a relative path is left as written
    (it names the same file).
    """
    if not path or os.path.isabs(path) or os.path.exists(path) or os.path.realpath(os.getcwd()) == REPO_ROOT:
        return path
    anchored = os.path.join(REPO_ROOT, os.path.normpath(path))
    return anchored if shipped or os.path.exists(anchored) else path
