"""The docs name tests that exist: every guarantee in docs/reliability.md points at the test that holds it, in the
file it names."""
from __future__ import annotations

import os
import re

from helpers import ROOT


def test_every_test_named_in_the_reliability_guarantees_exists() -> None:
    """Each test is named as ``X `test_name``` with a letter the page defines (``R = `test_reliability.py```) or as
    ```test_file.py::test_name```, and is defined in that file; no test is named without its file."""
    text = open(os.path.join(ROOT, "docs", "reliability.md"), encoding="utf-8").read()
    letters = dict(re.findall(r"`?\b([A-Z])`? = `(test_[a-z0-9_]+\.py)`", text))
    named = [(letters.get(letter, f"<no file for {letter}>"), name)
             for letter, name in re.findall(r"\b([A-Z]) `(test_[a-z0-9_]+)`", text)]
    named += re.findall(r"`(test_[a-z0-9_]+\.py)::(test_[a-z0-9_]+)`", text)
    defined = set()
    for file in os.listdir(os.path.join(ROOT, "tests")):
        if file.endswith(".py"):
            source = open(os.path.join(ROOT, "tests", file), encoding="utf-8").read()
            defined |= {(file, name) for name in re.findall(r"^def (test_[a-z0-9_]+)", source, flags=re.M)}
    assert len(named) > 30  # the patterns above find the page's references
    anywhere = set(re.findall(r"\b(test_[a-z0-9_]+)\b(?!\.py)", text))
    assert sorted(anywhere - {name for _, name in named}) == []  # every test named says in which file
    assert sorted(set(named) - defined) == []


def test_the_readme_stays_short_and_its_links_exist() -> None:
    """README.md holds at most 12 KB (the rest lives in docs/), and every relative link in it names a file that is
    there."""
    with open(os.path.join(ROOT, "README.md"), "rb") as f:
        text = f.read()
    assert len(text) <= 12 * 1024
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text.decode("utf-8"))
    missing = [link for link in links if not os.path.exists(os.path.join(ROOT, link))]
    assert links and missing == []
