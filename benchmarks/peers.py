"""Peers that need care to load. The library never imports this module."""

from __future__ import annotations

import functools
import importlib.util
import pathlib
from types import ModuleType


@functools.cache
def reference_amos() -> ModuleType | None:
    """The Amos reference implementation, ``jestimator/amos.py`` (jestimator 0.3.3), loaded by
    file path: the ``jestimator`` package's ``__init__`` fails to import on current JAX, but
    ``amos.py`` runs (it needs flax). ``None`` when jestimator or flax is not installed. Loaded
    once per process (its state classes must stay the same)."""
    spec = importlib.util.find_spec("jestimator")
    if spec is None or not spec.submodule_search_locations:
        return None
    if importlib.util.find_spec("flax") is None:
        return None
    path = pathlib.Path(spec.submodule_search_locations[0]) / "amos.py"
    module_spec = importlib.util.spec_from_file_location("jestimator_reference_amos", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module
