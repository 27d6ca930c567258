"""The docs name tests that exist: every guarantee in docs/reliability.md points at the test that holds it."""
from __future__ import annotations

import os
import re

from helpers import ROOT


def test_every_test_named_in_the_reliability_guarantees_exists() -> None:
    text = open(os.path.join(ROOT, "docs", "reliability.md"), encoding="utf-8").read()
    named = set(re.findall(r"\b(test_[a-z0-9_]+)\b(?!\.py)", text))
    defined = set()
    for name in os.listdir(os.path.join(ROOT, "tests")):
        if name.endswith(".py"):
            source = open(os.path.join(ROOT, "tests", name), encoding="utf-8").read()
            defined |= set(re.findall(r"^def (test_[a-z0-9_]+)", source, flags=re.M))
    assert len(named) > 30
    assert sorted(named - defined) == []
