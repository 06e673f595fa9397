"""Makes this folder's ``memory_store.py`` importable as ``tiering_memory_store``.

Every service's unit tests have a ``memory_store.py`` and the test folders are not packages, so a
bare ``import memory_store`` would get whichever service's module was imported first in the run.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_NAME = "tiering_memory_store"
if _NAME not in sys.modules:
    _spec = importlib.util.spec_from_file_location(_NAME, Path(__file__).with_name("memory_store.py"))
    assert _spec is not None and _spec.loader is not None
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[_NAME] = _module
    _spec.loader.exec_module(_module)
