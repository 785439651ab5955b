"""Lazy package exports (PEP 562): a package names its public objects without importing the
modules that define them until first use, so importing one light submodule stays light."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, names: dict[str, str]) -> Callable[[str], object]:
    """A module-level `__getattr__` for `package` that imports `names[attr]` (a module path) on
    first access of `attr` and returns its attribute of that name."""

    def __getattr__(name: str) -> object:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(names[name]), name)

    return __getattr__
