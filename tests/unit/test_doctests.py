"""Every docstring example in eddy runs, imported under its real name (``eddy.…``)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

PACKAGES = ("eddy", "eddy.models", "eddy.streams", "eddy.consumers")


def _modules() -> list[str]:
    # Each subpackage is walked on its own: in a source checkout they live in the
    # repository's top-level folders, not under eddy/ (README, Layout).
    names = set(PACKAGES)
    for package in PACKAGES:
        path = importlib.import_module(package).__path__
        names |= {info.name for info in pkgutil.walk_packages(path, package + ".")}
    return sorted(names)


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
