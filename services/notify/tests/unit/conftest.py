"""Every service's ``tests/unit`` has a ``memory_store.py``, and pytest imports such a helper by its
bare name (these folders are not packages): in a run of the whole suite the first one imported would
serve every service. While this folder's tests are collected, ``memory_store`` is this folder's."""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
_cached = sys.modules.get("memory_store")
if _cached is not None and str(Path(getattr(_cached, "__file__", "") or "").resolve().parent) != _HERE:
    del sys.modules["memory_store"]  # another service's: the modules that imported it keep their reference
if sys.path[:1] != [_HERE]:
    sys.path.insert(0, _HERE)
