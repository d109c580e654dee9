"""Optional extras in tests: skipped where not installed, except in a run that promises them.

``scripts/run-tests.sh`` installs every extra and sets ``ISH_TEST_REQUIRE_EXTRAS=1``; there a
missing extra must fail the run, not turn its tests into silent skips (issue 25).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def require(module: str, reason: str | None = None) -> ModuleType:
    """``pytest.importorskip(module)``, or a plain import (an error) under
    ``ISH_TEST_REQUIRE_EXTRAS``."""
    if os.environ.get("ISH_TEST_REQUIRE_EXTRAS"):
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=reason)
