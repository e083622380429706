"""The package's public surface: ``__all__``, ``__version__`` and the ``py.typed`` marker."""

from __future__ import annotations

import configparser
import importlib.metadata
import importlib.resources
import inspect
import pathlib

import pytest

import openclaw_http_compat

ROOT = pathlib.Path(__file__).resolve().parent.parent


def isort_key(name: str) -> tuple[int, str]:
    """The order of ``__all__``: CONSTANTS, then Classes, then everything else (ruff RUF022)."""
    if name.isupper():
        return (0, name)
    if name[0].isupper():
        return (1, name)
    return (2, name)


def public_names() -> set[str]:
    """Names the package module binds that are not private and not submodules."""
    return {
        name for name, value in vars(openclaw_http_compat).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    } | {"__version__"}


def test_all_lists_exactly_the_public_names() -> None:
    """``__all__`` holds every public name once, and nothing else."""
    exported = openclaw_http_compat.__all__
    assert len(set(exported)) == len(exported)
    assert set(exported) == public_names()


def test_all_is_sorted() -> None:
    """``__all__`` is kept sorted: constants, classes, then functions, each alphabetically."""
    exported = list(openclaw_http_compat.__all__)
    assert exported == sorted(exported, key=isort_key)


@pytest.mark.parametrize("name", openclaw_http_compat.__all__)
def test_every_export_resolves(name: str) -> None:
    """Each name in ``__all__`` is importable from the package."""
    assert getattr(openclaw_http_compat, name) is not None


def test_version_matches_the_distribution() -> None:
    """``__version__`` is the installed distribution's version."""
    assert openclaw_http_compat.__version__ == importlib.metadata.version("openclaw-http-compat")


def test_py_typed_ships() -> None:
    """The ``py.typed`` marker is in the package and declared as package data."""
    assert importlib.resources.files("openclaw_http_compat").joinpath("py.typed").is_file()
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg", encoding="utf-8")
    package_data = parser["options.package_data"]["openclaw_http_compat"].split()
    assert "py.typed" in package_data
