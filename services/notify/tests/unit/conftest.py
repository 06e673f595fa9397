"""Every service's ``tests/unit`` has a ``memory_store.py``, and pytest imports such a helper by its
bare name (these folders are not packages): in a run of the whole suite the first one imported would
serve every service. Just before each of this folder's test modules is imported, ``memory_store``
is made to mean this folder's (modules that imported another service's keep their reference).

This is done per module, not once when this file loads: given the unit folders as arguments, pytest
loads all their conftests before it imports any test module, so a fix at load time would be undone
by the next folder's."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)


def _memory_store_is_ours() -> None:
    cached = sys.modules.get("memory_store")
    if cached is not None and str(Path(getattr(cached, "__file__", "") or "").resolve().parent) != _HERE:
        del sys.modules["memory_store"]
    if sys.path[:1] != [_HERE]:
        sys.path.insert(0, _HERE)


_memory_store_is_ours()


def pytest_collectstart(collector: pytest.Collector) -> None:
    if isinstance(collector, pytest.Module) and str(collector.path.parent) == _HERE:
        _memory_store_is_ours()
